"""Routes. Each handler translates HTTP to one service call and back; no logic lives here."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from gigafactory import __version__, accounting
from gigafactory.api import errors
from gigafactory.api.auth import require_operator
from gigafactory.api.errors import ApiError
from gigafactory.api.views import job_view, summary_view
from gigafactory.domain.manifest import Manifest
from gigafactory.domain.states import Status
from gigafactory.services import jobs, submit
from gigafactory.services.context import Services

MAX_BODY_BYTES = 1024 * 1024


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"body is {declared} bytes; the limit is {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, "payload_too_large", f"body exceeds the limit of {limit} bytes")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"body is not valid JSON: {exc}") from None


M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """A JSON body validated into ``model``; errors name the field and rule (422)."""
    try:
        return model.model_validate(await read_json(request))
    except ValidationError as exc:
        raise submit.InvalidRequest(submit.validation_errors(exc)) from None


def svc_of(request: Request) -> Services:
    provider: Callable[[], Services] = request.app.state.services
    return provider()


SvcDep = Annotated[Services, Depends(svc_of)]

operator = APIRouter(prefix="/api", dependencies=[Depends(require_operator)])
public = APIRouter(prefix="/api")


@public.get("/health", tags=["system"])
def health(request: Request) -> dict[str, Any]:
    mode = request.app.state.dispatch_mode
    return {"status": "ok", "dispatch_mode": mode() if callable(mode) else mode, "version": __version__}


@operator.post(
    "/jobs", status_code=202, tags=["jobs"],
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Manifest"}}}}},
    responses={200: {"description": "an idempotent repeat: the job the key already names"},
               400: {"description": "not JSON"}, 413: {"description": "body over 1 MiB"},
               422: {"description": "invalid manifest; names the field and rule"}},
)
async def submit_job(request: Request, svc: SvcDep) -> JSONResponse:
    data = await read_json(request)
    # The store (and the claim-check upload) block: keep them off the event loop.
    job, created = await run_in_threadpool(submit.submit, svc, data, request.headers.get("idempotency-key"))
    now = svc.clock.now()
    payload = {"id": job.id, "status": job.status.value, "attempt": job.attempt, "pool": job.pool,
               "score": job.score_at(now).as_dict(), "status_url": f"/api/jobs/{job.id}"}
    headers = {"Location": f"/api/jobs/{job.id}"}
    return JSONResponse(payload, status_code=202 if created else 200, headers=headers)


@operator.get("/jobs", tags=["jobs"])
def list_jobs(
    svc: SvcDep,
    status: Status | None = None,
    product: Annotated[str | None, Query(max_length=64)] = None,
    pool: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    continuation: Annotated[str | None, Query(max_length=4096)] = None,
) -> dict[str, Any]:
    try:
        items, token = svc.store.list(status=status.value if status else None, product=product, pool=pool,
                                      limit=limit, continuation=continuation)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    now = svc.clock.now()
    return {"items": [summary_view(j, now) for j in items], "continuation": token}


@operator.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: str, svc: SvcDep) -> dict[str, Any]:
    return job_view(jobs.get_job(svc, job_id), svc.clock.now())


@operator.post("/jobs/{job_id}/cancel", status_code=202, tags=["jobs"])
def cancel_job(job_id: str, svc: SvcDep) -> dict[str, Any]:
    job = jobs.cancel(svc, job_id)
    return {"id": job.id, "status": job.status.value, "cancel_requested": job.cancel_requested,
            "status_url": f"/api/jobs/{job.id}"}


@operator.post("/jobs/{job_id}/retry", status_code=202, tags=["jobs"])
def retry_job(job_id: str, svc: SvcDep) -> dict[str, Any]:
    job = jobs.retry(svc, job_id)
    return {"id": job.id, "status": job.status.value, "attempt": job.attempt, "status_url": f"/api/jobs/{job.id}"}


@operator.get("/pools", tags=["pools"])
def list_pools(svc: SvcDep) -> dict[str, Any]:
    return {"items": jobs.pools_overview(svc)}


def caller_for(path: str) -> str:
    """The name store operations of a request are counted under."""
    if path.endswith("/lease"):
        return "lease"
    for marker, name in (("/messages/", "broker"), ("/api/attempts/", "attempts"), ("/api/factories", "factories")):
        if marker in path:
            return name
    return "api"


def create_app(
    services: Callable[[], Services],
    *,
    api_token: str | None,
    dispatch_mode: str | Callable[[], str] = "broker",
    extra_routers: list[APIRouter] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Gigafactory",
        version=__version__,
        description="Fleet coordination for autonomous coding agents.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.services = services
    app.state.api_token = api_token
    app.state.dispatch_mode = dispatch_mode
    errors.install(app)

    @app.middleware("http")
    async def _account(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        with accounting.accounted(caller_for(request.url.path)):
            return await call_next(request)

    app.include_router(public)
    app.include_router(operator)
    for router in extra_routers or []:
        app.include_router(router)

    schema_fn = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = schema_fn()
            defs = Manifest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["Manifest"] = defs
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
