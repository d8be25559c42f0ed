"""The outbox relay: what the Cosmos DB change-feed trigger (and the embedded change tail)
calls with a batch of changed job documents.

The change feed gives the latest version of each changed document, at least once, so every
reaction here is decided from the document's state (never from "what changed"), and every
effect is idempotent: publishing is deduplicated by message id, starting a lifecycle that
runs is a no-op, slot bookkeeping is a set. Replaying any batch changes nothing further.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from gigafactory import messages
from gigafactory.domain import job as J
from gigafactory.domain.job import Job
from gigafactory.domain.states import IllegalTransition, Status
from gigafactory.logs import job_fields
from gigafactory.services import scheduler
from gigafactory.services.context import Services
from gigafactory.services.mutate import update_job

log = logging.getLogger("gigafactory.relay")
EVENTS_PER_CHANGE = 3


def latest(jobs: Iterable[Job]) -> list[Job]:
    """One version per job: the last one in the batch."""
    by_id: dict[str, Job] = {}
    for job in jobs:
        by_id.pop(job.id, None)
        by_id[job.id] = job
    return list(by_id.values())


def lifecycle_payload(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "pool": job.pool, "attempt": job.attempt, "status": job.status.value}


def handle_changes(svc: Services, docs: Iterable[Job]) -> None:
    pools_to_release: set[str] = set()
    for job in latest(docs):
        if job.type != "job":
            continue
        _publish_events(svc, job)
        pools_to_release |= _react(svc, job)
    for pool in sorted(pools_to_release):
        scheduler.release(svc, pool)


def _react(svc: Services, job: Job) -> set[str]:
    """Returns the pools whose queue should be offered free capacity."""
    now = svc.clock.now()
    if job.status is Status.QUEUED:
        if job.attempt > 1 or len(job.history) > 1:  # a requeued job may still hold its old slot
            scheduler.free_slots(svc, job.pool, [job.id], unless_attempt={job.id: job.attempt})
        if job.attempt > 1 or job.cancel_requested:
            _signal(svc, job)
        if not _releases_here(svc, job):
            if svc.dispatch_mode == "shadow" and job.due_at <= now:
                _publish_dispatch(svc, job, shadow=True)
            return set()
        return {job.pool} if job.due_at <= now else set()
    if job.status is Status.DISPATCHED:
        if job.factory_id is None and not _releases_here(svc, job):
            _return_to_queue(svc, job)
            return set()
        # The scheduler reserved its slot before releasing it; the sweeper repairs any gap.
        if job.factory_id is None and _releases_here(svc, job):  # a leased job is with its factory
            _publish_dispatch(svc, job)
        if svc.lifecycle is not None and not svc.lifecycle.start(job.id, lifecycle_payload(job)):
            svc.lifecycle.signal(job.id, lifecycle_payload(job))
        return set()
    if job.in_flight:
        _signal(svc, job)
        return set()
    # attempt_failed or terminal: the attempt no longer holds a slot.
    scheduler.free_slots(svc, job.pool, [job.id])
    _signal(svc, job)
    return {job.pool}


def _return_to_queue(svc: Services, job: Job) -> None:
    """Released in broker mode but never delivered before a switch to poll mode: queued again,
    so a factory can lease it. A broker delivery still in flight is fenced: its claim needs
    ``dispatched``."""

    def change(current: Job) -> Job | None:
        if current.status is not Status.DISPATCHED or current.attempt != job.attempt or current.factory_id:
            return None
        return J.return_to_queue(current, svc.clock.now())

    try:
        update_job(svc.store, job.id, change, job.pool)
    except IllegalTransition:
        return
    scheduler.free_slots(svc, job.pool, [job.id])


def _releases_here(svc: Services, job: Job) -> bool:
    return scheduler.coordinator_releases(svc, job.pool)


def _signal(svc: Services, job: Job) -> None:
    if svc.lifecycle is None:
        return
    payload = lifecycle_payload(job)
    if not svc.lifecycle.signal(job.id, payload) and not job.terminal:
        # Lost or never started (a skipped batch): start it; it reads the job and catches up.
        svc.lifecycle.start(job.id, payload)


def _publish_dispatch(svc: Services, job: Job, *, shadow: bool = False) -> None:
    if svc.bus is None:
        return
    pool = svc.pools.get(job.pool)
    svc.bus.publish(messages.DISPATCH_TOPIC, messages.dispatch_message(job, pool, svc.clock.now(), shadow=shadow))
    log.info("dispatch published", extra=job_fields(job.id, job.attempt, pool=job.pool, shadow=shadow))


def _publish_events(svc: Services, job: Job) -> None:
    if svc.bus is None:
        return
    for entry in job.history[-EVENTS_PER_CHANGE:]:
        svc.bus.publish(messages.EVENTS_TOPIC, messages.job_event(job, entry))
