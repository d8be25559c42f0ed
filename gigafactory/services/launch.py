"""The launch handler: what the Service Bus trigger on the launcher subscription calls.

The attempt is reserved (``launching``) under its ETag *before* a factory is started, so two
deliveries of one message cannot both start a factory. A start that fails raises, so the
broker redelivers (and finally dead-letters); the job stays ``launching`` with no execution,
which a redelivery may start again and which the lifecycle's schedule-to-start timer expires
if nothing ever does — never stuck.
"""

from __future__ import annotations

import logging
from typing import Any

from gigafactory.domain import job as J
from gigafactory.domain import tokens
from gigafactory.domain.job import Job
from gigafactory.domain.states import Status
from gigafactory.logs import job_fields
from gigafactory.ports import Conflict
from gigafactory.services.context import Services
from gigafactory.services.mutate import MAX_TRIES, update_job

log = logging.getLogger("gigafactory.launch")


class BadDispatch(ValueError):
    """A message that can never be processed (dead-letter it with this reason)."""


def parse_dispatch(body: Any) -> tuple[str, int, str]:
    if not isinstance(body, dict):
        raise BadDispatch("dispatch body must be a JSON object")
    job_id, attempt, pool = body.get("job_id"), body.get("attempt"), body.get("pool")
    if not isinstance(job_id, str) or not isinstance(attempt, int) or not isinstance(pool, str):
        raise BadDispatch("dispatch body needs job_id (string), attempt (integer), pool (string)")
    return job_id, attempt, pool


def factory_env(svc: Services, job: Job, execution_hint: str = "") -> dict[str, str]:
    expires = int(svc.clock.now().timestamp()) + svc.attempt_token_ttl_seconds
    return {
        "GIGAFACTORY_URL": svc.coordinator_url,
        "GIGAFACTORY_JOB_ID": job.id,
        "GIGAFACTORY_ATTEMPT": str(job.attempt),
        "GIGAFACTORY_POOL": job.pool,
        "GIGAFACTORY_ATTEMPT_TOKEN": tokens.issue(svc.token_secret, job.id, job.attempt, expires),
    }


def handle_dispatch(svc: Services, body: Any) -> str:
    """Returns what happened; raises when the broker should redeliver."""
    job_id, attempt, pool = parse_dispatch(body)
    fields = job_fields(job_id, attempt, pool=pool)
    for _ in range(MAX_TRIES):
        job = svc.store.get(job_id, pool)
        if job is None:
            raise BadDispatch(f"job {job_id}: not found")
        if job.attempt != attempt or job.cancel_requested:
            log.info("dispatch stale; settled", extra=fields)
            return "stale"
        if job.status is Status.DISPATCHED:
            try:
                job = svc.store.replace(J.mark_launching(job, attempt, "", svc.clock.now()))
            except Conflict:
                continue  # changed under us: decide again on what it is now
        elif not (job.status is Status.LAUNCHING and not job.execution):
            log.info("dispatch already handled; settled", extra=fields)
            return "duplicate"
        return _launch(svc, job, attempt, fields)
    raise Conflict(f"job {job_id}: still contended after {MAX_TRIES} tries")


def _launch(svc: Services, job: Job, attempt: int, fields: dict[str, Any]) -> str:
    if svc.launcher is None:
        raise RuntimeError("no launcher configured for on-demand pools")
    execution = svc.launcher.start(job, factory_env(svc, job))

    def record(current: Job) -> Job | None:
        if current.attempt != attempt or current.execution:
            return None
        return J.record_execution(current, attempt, execution)

    update_job(svc.store, job.id, record, job.pool)
    log.info("factory launched", extra={**fields, "execution": execution})
    return "launched"
