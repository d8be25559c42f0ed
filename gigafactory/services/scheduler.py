"""Releasing queued work into a pool while it has free capacity.

Capacity is the pool's in-flight set, updated under its ETag: two releasers racing for the
last slot cannot both win. A job is reserved in the set before it is moved to ``dispatched``;
if that move fails (it was cancelled, or someone else released it) the reservation is undone
and the next candidate is tried, so one job that cannot be placed never stalls the others.
"""

from __future__ import annotations

import logging

from gigafactory.domain import fairshare
from gigafactory.domain import job as J
from gigafactory.domain.job import Job
from gigafactory.domain.states import IllegalTransition, Status
from gigafactory.domain.timefmt import to_iso
from gigafactory.logs import job_fields
from gigafactory.ports import Capacity, Conflict
from gigafactory.services.context import Services
from gigafactory.services.mutate import NotFound, update_job

log = logging.getLogger("gigafactory.scheduler")
MAX_ROUNDS = 20


def coordinator_releases(svc: Services, pool_name: str) -> bool:
    """In poll and shadow mode standing factories lease queued work themselves."""
    return not (svc.dispatch_mode in ("poll", "shadow") and svc.pools.get(pool_name).launch_mode == "standing")


def release(svc: Services, pool_name: str) -> list[Job]:
    pool = svc.pools.get(pool_name)
    released: list[Job] = []
    if not coordinator_releases(svc, pool_name):
        return released
    for _ in range(MAX_ROUNDS):
        cap = svc.store.get_capacity(pool.name)
        free = pool.max_parallel - len(cap.inflight)
        if free <= 0:
            break
        now = svc.clock.now()
        candidates = [c for c in svc.store.queued(pool.name, now, limit=free * 4 + 8) if c.id not in cap.inflight]
        products = [str(v.get("product", "")) for v in cap.inflight.values()]
        picks = fairshare.pick(candidates, products, free, pool.max_parallel)
        if not picks:
            break
        reserved = Capacity(pool=cap.pool, etag=cap.etag, inflight={
            **cap.inflight,
            **{j.id: {"attempt": j.attempt, "product": j.product, "at": to_iso(now)} for j in picks},
        })
        try:
            svc.store.replace_capacity(reserved)
        except Conflict:
            continue
        failed: list[str] = []
        for job in picks:
            moved = _dispatch(svc, job)
            if moved is None:
                failed.append(job.id)
            else:
                released.append(moved)
        if failed:
            free_slots(svc, pool.name, failed)
        if len(picks) < free:
            break
    return released


def _dispatch(svc: Services, candidate: Job) -> Job | None:
    def change(job: Job) -> Job:
        if job.status is not Status.QUEUED or job.attempt != candidate.attempt:
            raise IllegalTransition(job.id, job.status, Status.DISPATCHED)
        return J.release(job, svc.clock.now())

    try:
        job = update_job(svc.store, candidate.id, change, candidate.pool)
    except (IllegalTransition, NotFound, Conflict):
        return None
    log.info("job released", extra=job_fields(job.id, job.attempt, pool=job.pool))
    return job


def free_slots(svc: Services, pool: str, job_ids: list[str], *, unless_attempt: dict[str, int] | None = None) -> None:
    """Remove jobs from the in-flight set; removing an absent job is a no-op (replay-safe).

    ``unless_attempt`` keeps a reservation made for that attempt (a release in progress).
    """
    keep = unless_attempt or {}
    for _ in range(MAX_ROUNDS):
        cap = svc.store.get_capacity(pool)
        gone = [j for j in job_ids if j in cap.inflight and cap.inflight[j].get("attempt") != keep.get(j)]
        if not gone:
            return
        remaining = {k: v for k, v in cap.inflight.items() if k not in gone}
        try:
            svc.store.replace_capacity(Capacity(pool=pool, inflight=remaining, etag=cap.etag))
            return
        except Conflict:
            continue
