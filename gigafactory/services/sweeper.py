"""The sweeper: the safety net under an at-least-once change feed.

A change-feed batch whose function failed may be skipped for good, so on a timer the sweeper
re-publishes dispatches that may have been lost (duplicate detection drops the ones that were
not), restarts lifecycles that should be running, reconciles each pool's in-flight set with
the jobs' real states, and offers free capacity to due queued work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from gigafactory.domain import job as J
from gigafactory.domain.job import Job
from gigafactory.domain.states import IN_FLIGHT, Status
from gigafactory.domain.timefmt import from_iso, to_iso
from gigafactory.ports import Capacity, Conflict
from gigafactory.services import factories, relay, scheduler
from gigafactory.services.context import Services
from gigafactory.services.mutate import update_job

log = logging.getLogger("gigafactory.sweeper")
# A reservation younger than this may belong to a release still in progress.
RESERVATION_GRACE = timedelta(seconds=60)
# A dispatch older than this without a launch or claim may have lost its message.
REPUBLISH_AFTER = timedelta(seconds=60)
MAX_RESENDS = 5


@dataclass
class SweepReport:
    republished: list[str] = field(default_factory=list)
    slots_freed: list[str] = field(default_factory=list)
    slots_held: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    factories_offline: list[str] = field(default_factory=list)


def sweep(svc: Services) -> SweepReport:
    report = SweepReport()
    report.factories_offline = factories.mark_silent_offline(svc)
    now = svc.clock.now()
    active = svc.store.in_status([s.value for s in IN_FLIGHT])
    by_pool: dict[str, dict[str, int]] = {p: {} for p in svc.pools.names()}
    for job in active:
        by_pool.setdefault(job.pool, {})[job.id] = job.attempt
        sent = job.sent_at or job.dispatched_at
        if job.status is Status.DISPATCHED and job.factory_id is None and sent and now - sent > REPUBLISH_AFTER:
            resent = _resend(svc, job)
            relay.handle_changes(svc, [resent])
            report.republished.append(job.id)
        elif svc.lifecycle is not None:
            svc.lifecycle.start(job.id, relay.lifecycle_payload(job))
    for pool, live in by_pool.items():
        if pool not in svc.pools.names():
            continue
        _reconcile(svc, pool, live, report)
        report.released += [j.id for j in scheduler.release(svc, pool)]
    if report.republished or report.slots_freed or report.slots_held or report.released or \
            report.factories_offline:
        log.info("sweep", extra={"republished": len(report.republished), "slots_freed": len(report.slots_freed),
                                 "slots_held": len(report.slots_held), "released": len(report.released)})
    return report


def _resend(svc: Services, job: Job) -> Job:
    """A dispatch still unclaimed after a minute: its message may never have reached the
    broker, or may have been consumed with nothing to show for it. Resending under the same id
    would be dropped by duplicate detection, so it goes out under the next one; whichever copy
    arrives second finds the attempt claimed and is settled without effect."""
    def change(current: Job) -> Job | None:
        if current.status is not Status.DISPATCHED or current.attempt != job.attempt or current.factory_id:
            return None
        if current.resends >= MAX_RESENDS:
            return None  # the schedule-to-start timeout takes over
        return J.resend(current, svc.clock.now())

    return update_job(svc.store, job.id, change, job.pool)


def _reconcile(svc: Services, pool: str, live: dict[str, int], report: SweepReport) -> None:
    now = svc.clock.now()
    for _ in range(scheduler.MAX_ROUNDS):
        cap = svc.store.get_capacity(pool)
        inflight = dict(cap.inflight)
        freed = [job_id for job_id, entry in inflight.items()
                 if live.get(job_id) != entry.get("attempt")
                 and now - from_iso(str(entry.get("at"))) > RESERVATION_GRACE]
        held = [job_id for job_id in live if job_id not in inflight]
        if not freed and not held:
            return
        for job_id in freed:
            inflight.pop(job_id)
        for job_id in held:
            job = svc.store.get(job_id, pool)
            if job is not None:
                inflight[job_id] = {"attempt": live[job_id], "product": job.product, "at": to_iso(now)}
        try:
            svc.store.replace_capacity(Capacity(pool=pool, inflight=inflight, etag=cap.etag))
        except Conflict:
            continue
        report.slots_freed += freed
        report.slots_held += held
        return
