"""Standing-factory routes: enrollment, heartbeat, drain, retire, attempt tokens for received
dispatches, the poll-mode lease, and the shadow-mode report."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from gigafactory.api.app import SvcDep, parse_body
from gigafactory.api.auth import require_bearer, require_operator
from gigafactory.domain.factories import HEARTBEAT_SECONDS, CredentialError, Factory
from gigafactory.services import factories, lease, shadow
from gigafactory.services.context import Services

router = APIRouter(prefix="/api", tags=["factories"])
operator = APIRouter(prefix="/api", tags=["factories"], dependencies=[Depends(require_operator)])
MODE_HEADER = "X-Gigafactory-Dispatch-Mode"
DRAIN_HEADER = "X-Gigafactory-Drain"


def factory_headers(svc: Services, factory: Factory) -> dict[str, str]:
    """Every answer to a factory says how to take work and whether to stop taking it."""
    return {MODE_HEADER: svc.dispatch_mode, DRAIN_HEADER: "true" if not factory.takes_work else "false"}


class Enrollment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pool: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=100)
    slots: int = Field(default=1, ge=1, le=64)


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    running: list[str] = Field(default_factory=list, max_length=64)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(min_length=1, max_length=100)
    attempt: int = Field(ge=1)


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    idle_polls: int = Field(default=0, ge=0, le=1000)


def _credential(request: Request) -> str:
    return require_bearer(request, "credential")


def calling_factory(request: Request, svc: Services, factory_id: str | None = None) -> Factory:
    return factories.authenticate(svc, _credential(request), factory_id)


def _factory_or_operator(request: Request, svc: Services, factory_id: str) -> None:
    credential = _credential(request)
    if credential.startswith("gf_"):
        factories.authenticate(svc, credential, factory_id)
    else:
        require_operator(request)


@router.post("/factories", status_code=201)
async def enroll(request: Request, svc: SvcDep) -> dict[str, Any]:
    secret = _credential(request)
    body = await parse_body(request, Enrollment)
    factory, credential = await run_in_threadpool(
        lambda: factories.enroll(svc, secret, pool=body.pool, name=body.name, slots=body.slots))
    return {"id": factory.id, "pool": factory.pool, "credential": credential, "status": factory.status.value,
            "heartbeat_seconds": HEARTBEAT_SECONDS}


@operator.get("/factories")
def list_factories(svc: SvcDep, pool: str | None = None) -> dict[str, Any]:
    return {"items": factories.listing(svc, pool)}


@operator.get("/factories/{factory_id}")
def get_factory(factory_id: str, svc: SvcDep) -> dict[str, Any]:
    return factories.get(svc, factory_id)


@router.post("/factories/{factory_id}/heartbeat")
async def heartbeat(factory_id: str, request: Request, svc: SvcDep, response: Response) -> dict[str, Any]:
    factory = await run_in_threadpool(calling_factory, request, svc, factory_id)
    body = await parse_body(request, Heartbeat)
    response.headers[MODE_HEADER] = svc.dispatch_mode
    return await run_in_threadpool(factories.heartbeat, svc, factory, body.running)


@router.post("/factories/{factory_id}/drain", status_code=202)
def drain(factory_id: str, request: Request, svc: SvcDep) -> dict[str, Any]:
    _factory_or_operator(request, svc, factory_id)
    return {"id": factory_id, "status": factories.drain(svc, factory_id).status.value}


@router.delete("/factories/{factory_id}")
def retire(factory_id: str, request: Request, svc: SvcDep) -> dict[str, Any]:
    _factory_or_operator(request, svc, factory_id)
    return {"id": factory_id, "status": factories.retire(svc, factory_id).status.value}


@router.post("/factories/{factory_id}/attempts")
async def attempt_token(factory_id: str, request: Request, svc: SvcDep) -> dict[str, Any]:
    factory = await run_in_threadpool(calling_factory, request, svc, factory_id)
    body = await parse_body(request, TokenRequest)
    token = await run_in_threadpool(factories.attempt_token, svc, factory, body.job_id, body.attempt)
    return {"job_id": body.job_id, "attempt": body.attempt, "token": token}


@router.post("/pools/{pool}/lease", responses={204: {"description": "nothing to do; wait Retry-After seconds"}})
async def lease_work(pool: str, request: Request, svc: SvcDep) -> Response:
    factory = await run_in_threadpool(calling_factory, request, svc)
    if factory.pool != pool:
        raise CredentialError(f"factory {factory.id} belongs to pool {factory.pool}, not {pool}")
    body = await parse_body(request, LeaseRequest)
    headers = factory_headers(svc, factory)
    taken = await run_in_threadpool(lease.lease, svc, factory) if svc.dispatch_mode in ("poll", "shadow") else None
    if taken is None:
        headers["Retry-After"] = str(lease.idle_backoff(body.idle_polls))
        return Response(status_code=204, headers=headers)
    payload = {"job_id": taken.job_id, "attempt": taken.attempt, "token": taken.token}
    return Response(json.dumps(payload), media_type="application/json", headers=headers)


@operator.get("/migration/shadow", tags=["migration"])
def shadow_report(svc: SvcDep) -> dict[str, Any]:
    return {"dispatch_mode": svc.dispatch_mode, **shadow.report(svc)}
