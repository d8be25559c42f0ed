"""Every failure becomes a JSON answer naming what was wrong; never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gigafactory.domain.factories import CredentialError
from gigafactory.domain.job import StaleAttempt
from gigafactory.domain.states import IllegalTransition
from gigafactory.domain.tokens import TokenError
from gigafactory.services.factories import NotTakingWork
from gigafactory.services.mutate import NotFound
from gigafactory.services.submit import InvalidRequest

log = logging.getLogger("gigafactory.api")


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers


def body(error: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": error, "message": message, **extra}


# Domain and service errors whose message already says everything: (HTTP status, error code).
SIMPLE: dict[type[Exception], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    IllegalTransition: (409, "illegal_transition"),
    StaleAttempt: (409, "stale_attempt"),
    NotTakingWork: (409, "not_taking_work"),
    CredentialError: (403, "forbidden"),
    TokenError: (403, "forbidden"),
}


def _simple(status: int, error: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(body(error, str(exc)), status)

    return handle


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.error, exc.message), exc.status, headers=exc.headers)

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse(body("invalid_request", str(exc), errors=exc.errors), 422)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "rule": e["type"], "message": e["msg"]}
                  for e in exc.errors()]
        return JSONResponse(body("invalid_request", "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                                 errors=errors), 422)

    for exc_type, (status, error) in SIMPLE.items():
        app.add_exception_handler(exc_type, _simple(status, error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(body("http_error", str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse(body("internal", "internal error; the coordinator logged it"), 500)
