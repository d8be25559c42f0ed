"""Operator use cases on existing jobs: read, list, cancel, retry, pool overview."""

from __future__ import annotations

import logging
from typing import Any

from gigafactory.domain import job as J
from gigafactory.domain.job import Job
from gigafactory.domain.states import IN_FLIGHT, Status
from gigafactory.logs import job_fields
from gigafactory.services.context import Services
from gigafactory.services.mutate import NotFound, update_job

log = logging.getLogger("gigafactory.jobs")


def get_job(svc: Services, job_id: str) -> Job:
    job = svc.store.get(job_id)
    if job is None:
        raise NotFound(f"job {job_id}: not found")
    return job


def cancel(svc: Services, job_id: str) -> Job:
    """Queued work is cancelled at once; in-flight work is flagged and its lifecycle stops it."""
    job = update_job(svc.store, job_id, lambda j: None if j.cancel_requested and not j.terminal
                     else J.request_cancel(j, svc.clock.now()))
    log.info("cancel requested", extra=job_fields(job.id, job.attempt, status=job.status.value))
    return job


def retry(svc: Services, job_id: str) -> Job:
    job = update_job(svc.store, job_id, lambda j: J.manual_retry(j, svc.clock.now()))
    log.info("retry requested", extra=job_fields(job.id, job.attempt))
    return job


def pools_overview(svc: Services) -> list[dict[str, Any]]:
    out = []
    for pool in svc.pools.pools:
        counts = svc.store.counts(pool.name)
        out.append({
            "name": pool.name,
            "capabilities": pool.capabilities,
            "launch_mode": pool.launch_mode,
            "max_parallel": pool.max_parallel,
            "profiles": sorted(pool.profiles),
            "queued": counts.get(Status.QUEUED.value, 0),
            "in_flight": sum(counts.get(s.value, 0) for s in IN_FLIGHT),
        })
    return out
