"""The lifecycle's activities as plain use cases: read, expire, retry-or-fail, cancel, release.

Each re-reads the job and is fenced on (job, attempt, status), so an activity that runs twice
(at-least-once, like every Durable activity) changes nothing the second time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from gigafactory.domain import job as J
from gigafactory.domain import lifecycle, retry
from gigafactory.domain.job import Job
from gigafactory.domain.states import TERMINAL, Status
from gigafactory.logs import job_fields
from gigafactory.services import scheduler
from gigafactory.services.context import Services
from gigafactory.services.mutate import update_job

log = logging.getLogger("gigafactory.lifecycle")
# Timers may fire a little early on some hosts; never expire before the deadline has passed.
GRACE = timedelta(seconds=0)


def read(svc: Services, job_id: str, pool: str | None = None) -> dict[str, Any]:
    return lifecycle.snapshot(svc.store.get(job_id, pool))


def expire(svc: Services, job_id: str, attempt: int) -> dict[str, Any]:
    stop: list[str] = []

    def change(job: Job) -> Job | None:
        if job.attempt != attempt or job.status in TERMINAL or job.status is Status.ATTEMPT_FAILED:
            return None
        deadline = lifecycle.attempt_deadline(job)
        if deadline is None or deadline[0] + GRACE > svc.clock.now():
            return None  # a heartbeat extended the lease meanwhile: re-arm instead
        stop[:] = [job.execution] if job.execution else []
        return J.expire(job, attempt, deadline[1], svc.clock.now())

    job = update_job(svc.store, job_id, change)
    expired = job.status is Status.ATTEMPT_FAILED and job.attempt == attempt and bool(job.result) \
        and job.result is not None and job.result.outcome == "timeout"
    if stop and svc.launcher is not None:
        svc.launcher.stop(stop[0])
    if expired:
        log.warning("attempt expired", extra=job_fields(job_id, attempt, reason=job.result.reason
                                                        if job.result else None))
    return {"expired": expired, "status": job.status.value}


def retry_or_fail(svc: Services, job_id: str, attempt: int) -> dict[str, Any]:
    decision: list[retry.RetryDecision] = []

    def change(job: Job) -> Job | None:
        if job.attempt != attempt or job.status is not Status.ATTEMPT_FAILED:
            return None
        now = svc.clock.now()
        if job.cancel_requested:
            return J.finalize_cancel(job, now)
        reason = (job.result.reason if job.result else None) or "failed"
        d = retry.decide(job.retry, job_id=job.id, attempt=attempt, reason=reason)
        decision[:] = [d]
        if d.retry:
            return J.requeue(job, delay_seconds=d.delay_seconds, now=now, reason=f"retry after {reason}")
        return J.fail(job, d.reason, now)

    job = update_job(svc.store, job_id, change)
    if decision:
        log.info("retry decided", extra=job_fields(job_id, attempt, retry=decision[0].retry,
                                                  delay_seconds=decision[0].delay_seconds,
                                                  reason=decision[0].reason))
    return {"status": job.status.value, "attempt": job.attempt}


def cancel(svc: Services, job_id: str, attempt: int) -> dict[str, Any]:
    stop: list[str] = []

    def change(job: Job) -> Job | None:
        if job.terminal or not job.cancel_requested:
            return None
        stop[:] = [job.execution] if job.execution else []
        return J.finalize_cancel(job, svc.clock.now())

    job = update_job(svc.store, job_id, change)
    if stop and svc.launcher is not None:
        svc.launcher.stop(stop[0])
    log.info("job cancelled", extra=job_fields(job_id, attempt))
    return {"status": job.status.value}


def release(svc: Services, pool: str) -> dict[str, Any]:
    return {"released": [j.id for j in scheduler.release(svc, pool)]}
