"""Standing factories: enrollment, credentials, heartbeat, drain, retire, and turning a
delivered dispatch into an attempt token.

A factory credential proves which factory is calling; it never substitutes for an attempt
token on the attempt endpoints. A factory obtains the token for one attempt of its own pool,
only while that attempt is still unclaimed — so a stolen credential cannot act on an attempt
another factory holds.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from gigafactory.domain import factories as F
from gigafactory.domain import tokens
from gigafactory.domain.factories import CredentialError, Factory, FactoryStatus
from gigafactory.domain.job import StaleAttempt
from gigafactory.domain.states import Status
from gigafactory.logs import job_fields
from gigafactory.ports import Conflict, FactoryStore
from gigafactory.services.context import Services
from gigafactory.services.mutate import MAX_TRIES, NotFound
from gigafactory.services.submit import InvalidRequest

log = logging.getLogger("gigafactory.factories")


class NotTakingWork(StaleAttempt):
    """The factory is draining, offline or retired: the delivery should go to another one."""


def _store(svc: Services) -> FactoryStore:
    if svc.factories is None:
        raise RuntimeError("this coordinator has no factory registry")
    return svc.factories


def enroll(svc: Services, secret: str | None, *, pool: str, name: str, slots: int) -> tuple[Factory, str]:
    if not svc.enrollment_secret or not secret or not hmac.compare_digest(secret.encode(),
                                                                           svc.enrollment_secret.encode()):
        raise CredentialError("enrollment secret: missing or wrong")
    if pool not in svc.pools.names():
        raise InvalidRequest([{"field": "pool", "rule": "known_pool",
                               "message": f"unknown pool '{pool}'; pools: {', '.join(svc.pools.names())}"}])
    if svc.pools.get(pool).launch_mode != "standing":
        raise InvalidRequest([{"field": "pool", "rule": "standing_pool",
                               "message": f"pool '{pool}' is on-demand; only standing pools enroll factories"}])
    factory, credential = F.enroll(pool=pool, name=name, slots=slots, now=svc.clock.now())
    stored = _store(svc).create_factory(factory)
    log.info("factory enrolled", extra={"factory_id": stored.id, "pool": pool, "slots": slots})
    return stored, credential


def authenticate(svc: Services, credential: str | None, factory_id: str | None = None) -> Factory:
    """The calling factory; ``factory_id`` must be the credential's own when given."""
    if not credential:
        raise CredentialError("missing factory credential")
    owner = F.credential_factory_id(credential)
    if factory_id is not None and factory_id != owner:
        raise CredentialError(f"this credential belongs to another factory, not {factory_id}")
    factory = _store(svc).get_factory(owner)
    if factory is None:
        raise CredentialError("factory credential: unknown factory")
    F.verify(factory, credential)
    return factory


def _update(svc: Services, factory_id: str, change: Any, current: Factory | None = None) -> Factory:
    """Read-modify-write under the ETag; ``current`` (just read to authenticate) saves a read."""
    store = _store(svc)
    for _ in range(MAX_TRIES):
        current = current or store.get_factory(factory_id)
        if current is None:
            raise NotFound(f"factory {factory_id}: not found")
        try:
            return store.replace_factory(change(current))
        except Conflict:
            current = None
            continue
    raise Conflict(f"factory {factory_id}: still contended")


def heartbeat(svc: Services, factory: Factory, running: list[str]) -> dict[str, Any]:
    updated = _update(svc, factory.id, lambda f: F.heartbeat(f, running, svc.clock.now()), factory)
    return {"id": updated.id, "status": updated.status.value, "dispatch_mode": svc.dispatch_mode,
            "drain": updated.status is FactoryStatus.DRAINING, "heartbeat_seconds": F.HEARTBEAT_SECONDS}


def drain(svc: Services, factory_id: str) -> Factory:
    updated = _update(svc, factory_id, F.drain)
    log.info("factory draining", extra={"factory_id": factory_id})
    return updated


def retire(svc: Services, factory_id: str) -> Factory:
    updated = _update(svc, factory_id, F.retire)
    log.info("factory retired", extra={"factory_id": factory_id})
    return updated


def listing(svc: Services, pool: str | None = None) -> list[dict[str, Any]]:
    return [{k: v for k, v in f.to_doc().items() if k not in ("credential_sha256", "type")}
            for f in _store(svc).list_factories(pool)]


def get(svc: Services, factory_id: str) -> dict[str, Any]:
    factory = _store(svc).get_factory(factory_id)
    if factory is None:
        raise NotFound(f"factory {factory_id}: not found")
    return {k: v for k, v in factory.to_doc().items() if k not in ("credential_sha256", "type")}


def attempt_token(svc: Services, factory: Factory, job_id: str, attempt: int) -> str:
    """An attempt token for a dispatch this factory received, while the attempt is unclaimed."""
    if not factory.takes_work:
        raise NotTakingWork(f"factory {factory.id} is {factory.status}; it takes no new work")
    job = svc.store.get(job_id, factory.pool)
    if job is None:
        raise NotFound(f"job {job_id}: not found")
    if job.pool != factory.pool:
        raise CredentialError(f"job {job_id} belongs to pool {job.pool}, not {factory.pool}")
    if job.attempt != attempt or job.status is not Status.DISPATCHED or job.cancel_requested:
        raise StaleAttempt(f"job {job_id}: attempt {attempt} is not waiting for a factory ({job.status})")
    expires = int(svc.clock.now().timestamp()) + svc.attempt_token_ttl_seconds
    log.info("attempt token issued", extra=job_fields(job_id, attempt, factory_id=factory.id))
    return tokens.issue(svc.token_secret, job_id, attempt, expires)


def mark_silent_offline(svc: Services) -> list[str]:
    if svc.factories is None:
        return []
    now = svc.clock.now()
    gone = []
    for factory in svc.factories.list_factories():
        if F.is_silent(factory, now):
            try:
                svc.factories.replace_factory(F.mark_offline(factory))
            except Conflict:
                continue
            gone.append(factory.id)
            log.warning("factory offline", extra={"factory_id": factory.id, "pool": factory.pool})
    return gone
