"""Shadow mode: poll stays authoritative while dispatches are also published; for every job
attempt we record which pool each path delivered it to, and report agreement.

Divergences carry a reason: ``pool_mismatch`` (the two paths chose different pools),
``broker_missing`` (poll delivered it and the broker had not after the grace period),
``poll_missing`` (the broker delivered it and poll had not after the grace period).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from gigafactory.domain.states import Status
from gigafactory.domain.timefmt import from_iso
from gigafactory.ports import DispatchSource
from gigafactory.services import relay
from gigafactory.services.context import Services

GRACE = timedelta(seconds=60)


def record(svc: Services, job_id: str, attempt: int, side: str, pool: str) -> None:
    if svc.shadow_log is not None:
        svc.shadow_log.record_shadow(job_id, attempt, side, pool, svc.clock.now())


def record_delivery(svc: Services, pool: str, properties: Mapping[str, Any], body: Any) -> bool:
    """What a pool subscription delivered in shadow mode: only shadow copies are the broker
    path's answer; anything else there is a leftover of an earlier broker period, which the
    sweeper resends under a new id if its job still needs it."""
    if str(properties.get("shadow")) != "true" or not isinstance(body, dict):
        return False
    job_id, attempt = body.get("job_id"), body.get("attempt")
    if not isinstance(job_id, str) or not isinstance(attempt, int):
        return False
    record(svc, job_id, attempt, "broker", pool)
    return True


def consume(svc: Services, pool: str, source: DispatchSource, max_messages: int = 100,
            wait_seconds: float = 0.0) -> int:
    """Drain what the pool's subscription holds, recording the broker path's deliveries."""
    seen = 0
    while True:
        batch = source.receive(max_messages, wait_seconds)
        if not batch:
            return seen
        for delivery in batch:
            if not record_delivery(svc, pool, delivery.properties, delivery.body):
                _leftover(svc, pool, delivery.body)
            source.complete(delivery)
        seen += len(batch)


def _leftover(svc: Services, pool: str, body: Any) -> None:
    """A real dispatch from an earlier broker period, consumed here: its job goes back to the
    queue now (the relay does that in shadow mode) rather than waiting for the sweeper."""
    job_id = body.get("job_id") if isinstance(body, dict) else None
    if not isinstance(job_id, str):
        return
    job = svc.store.get(job_id, pool)
    if job is not None and job.status is Status.DISPATCHED:
        relay.handle_changes(svc, [job])


def report(svc: Services) -> dict[str, Any]:
    if svc.shadow_log is None:
        return {"compared": 0, "agreed": 0, "agreement_rate": None, "pending": 0, "divergences": []}
    now = svc.clock.now()
    pairs: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for rec in svc.shadow_log.shadow_records():
        pairs.setdefault((str(rec["job_id"]), int(str(rec["attempt"]))), {})[str(rec["side"])] = rec
    agreed, divergences, pending = 0, [], 0
    for (job_id, attempt), sides in sorted(pairs.items()):
        poll, broker = sides.get("poll"), sides.get("broker")
        if poll and broker:
            if poll["pool"] == broker["pool"]:
                agreed += 1
            else:
                divergences.append({"job_id": job_id, "attempt": attempt, "reason": "pool_mismatch",
                                    "poll_pool": poll["pool"], "broker_pool": broker["pool"]})
            continue
        only = poll or broker
        assert only is not None
        if now - from_iso(str(only["at"])) < GRACE:
            pending += 1
            continue
        divergences.append({"job_id": job_id, "attempt": attempt,
                            "reason": "broker_missing" if poll else "poll_missing", "pool": only["pool"]})
    compared = agreed + len(divergences)
    return {"compared": compared, "agreed": agreed,
            "agreement_rate": round(agreed / compared, 4) if compared else None,
            "pending": pending, "divergences": divergences}
