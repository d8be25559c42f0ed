"""Factory-side routes: authenticated by the attempt token alone, never the operator token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from gigafactory.api.app import SvcDep, parse_body
from gigafactory.api.auth import require_bearer
from gigafactory.services import attempts

router = APIRouter(prefix="/api/attempts/{job_id}/{attempt}", tags=["attempts"])


def _token(request: Request) -> str:
    return require_bearer(request, "attempt token")


@router.post("/claim")
async def claim(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    token = _token(request)
    body = await parse_body(request, attempts.ClaimRequest)
    return await run_in_threadpool(attempts.claim, svc, job_id, attempt, token, body)


@router.post("/heartbeat")
def heartbeat(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    return attempts.heartbeat(svc, job_id, attempt, _token(request))


@router.post("/complete")
async def complete(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    token = _token(request)
    body = await parse_body(request, attempts.CompleteRequest)
    return await run_in_threadpool(attempts.complete, svc, job_id, attempt, token, body)


@router.get("/manifest")
def manifest(job_id: str, attempt: int, request: Request, svc: SvcDep) -> dict[str, Any]:
    return attempts.manifest_of(svc, job_id, attempt, _token(request))
