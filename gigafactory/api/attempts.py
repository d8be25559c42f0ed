"""Factory-side routes: authenticated by the attempt token alone, never the operator token."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError

from gigafactory.api.app import SvcDep, read_json
from gigafactory.api.auth import bearer
from gigafactory.api.errors import ApiError
from gigafactory.services import attempts
from gigafactory.services.submit import InvalidRequest, validation_errors

router = APIRouter(prefix="/api/attempts/{job_id}/{attempt}", tags=["attempts"])


def _token(request: Request) -> str:
    token = bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing attempt token (Authorization: Bearer <attempt token>)",
                       {"WWW-Authenticate": "Bearer"})
    return token


M = TypeVar("M", bound=BaseModel)


async def _body(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate(await read_json(request))
    except ValidationError as exc:
        raise InvalidRequest(validation_errors(exc)) from None


@router.post("/claim")
async def claim(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    token = _token(request)
    return attempts.claim(svc, job_id, attempt, token, await _body(request, attempts.ClaimRequest))


@router.post("/heartbeat")
def heartbeat(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    return attempts.heartbeat(svc, job_id, attempt, _token(request))


@router.post("/complete")
async def complete(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    token = _token(request)
    return attempts.complete(svc, job_id, attempt, token, await _body(request, attempts.CompleteRequest))


@router.get("/manifest")
def manifest(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    return attempts.manifest_of(svc, job_id, attempt, _token(request))
