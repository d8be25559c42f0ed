"""The embedded broker's receive side over HTTP, for standing factories on other hosts.

In Azure a standing factory receives from its pool's Service Bus subscription directly; the
embedded bus lives in the coordinator's process, so it is offered the same way Service Bus
offers it — a long-polling receive with peek-lock, then complete or abandon — authenticated
by the factory's credential and limited to the factory's own pool subscription. While a
receive waits it touches nothing until something is published.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from gigafactory import messages
from gigafactory.api.app import SvcDep, parse_body
from gigafactory.api.factories import calling_factory, factory_headers
from gigafactory.domain.factories import CredentialError, Factory
from gigafactory.local.bus import LocalBus, LocalSubscription, LockLost

MAX_WAIT_SECONDS = 30.0
AUTH_CACHE_SECONDS = 60.0


class Receive(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_messages: int = Field(default=1, ge=1, le=32)
    wait_seconds: float = Field(default=MAX_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)


def gateway_router(bus: LocalBus) -> APIRouter:
    router = APIRouter(prefix="/api/pools/{pool}/messages", tags=["embedded broker"])

    def _receive(pool: str, body: Receive) -> list[dict[str, Any]]:
        source = LocalSubscription(bus, messages.DISPATCH_TOPIC, messages.pool_subscription(pool))
        return [{"lock_token": d.handle, "body": d.body, "properties": d.properties}
                for d in source.receive(body.max_messages, body.wait_seconds)]

    known: dict[str, tuple[Factory, float]] = {}

    async def _check(request: Request, svc: Any, pool: str) -> Factory:
        # An idle factory long-polls twice a minute; re-reading its record each time would be
        # the only store traffic of an idle fleet. A verified credential is trusted for a short
        # while here; granting an attempt token always re-checks it against the store.
        credential = request.headers.get("authorization", "")
        cached = known.get(credential)
        if cached is not None and cached[1] > time.monotonic():
            factory = cached[0]
        else:
            factory = await run_in_threadpool(calling_factory, request, svc)
            known[credential] = (factory, time.monotonic() + AUTH_CACHE_SECONDS)
        if factory.pool != pool:
            raise CredentialError(f"factory {factory.id} belongs to pool {factory.pool}, not {pool}")
        return factory

    @router.post("/receive")
    async def receive(pool: str, request: Request, svc: SvcDep, response: Response) -> dict[str, Any]:
        factory = await _check(request, svc, pool)
        body = await parse_body(request, Receive)
        response.headers.update(factory_headers(svc, factory))
        if not factory.takes_work or svc.dispatch_mode != "broker":
            return {"messages": []}  # draining, or the coordinator wants leases now
        return {"messages": await run_in_threadpool(_receive, pool, body)}

    @router.post("/{lock_token}/complete")
    async def complete(pool: str, lock_token: str, request: Request, svc: SvcDep) -> dict[str, Any]:
        await _check(request, svc, pool)
        return {"settled": await run_in_threadpool(_settle, bus.complete, lock_token)}

    @router.post("/{lock_token}/abandon")
    async def abandon(pool: str, lock_token: str, request: Request, svc: SvcDep) -> dict[str, Any]:
        await _check(request, svc, pool)
        return {"settled": await run_in_threadpool(_settle, bus.abandon, lock_token)}

    return router


def _settle(action: Any, lock_token: str) -> bool:
    try:
        action(lock_token)
    except LockLost:
        return False
    return True
