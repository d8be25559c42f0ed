"""Poll mode (the legacy path with the M0 quick win).

A standing factory asks for work; the coordinator runs one indexed single-partition query
(queued jobs of the factory's pool, best ``sort_key`` first), takes the first it can move to
``dispatched`` under its ETag, and returns it with an attempt token. With nothing to do it
answers with ``Retry-After``: exponential idle backoff with jitter, so an idle fleet's reads
fall from one per factory per second to about one per minute.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from gigafactory.domain import job as J
from gigafactory.domain import tokens
from gigafactory.domain.factories import Factory
from gigafactory.logs import job_fields
from gigafactory.ports import Conflict
from gigafactory.services import shadow
from gigafactory.services.context import Services

log = logging.getLogger("gigafactory.lease")
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
CANDIDATES = 5


@dataclass(frozen=True)
class Lease:
    job_id: str
    attempt: int
    token: str


def idle_backoff(idle_polls: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``idle_polls`` consecutive empty answers (±20 % jitter)."""
    base = min(BACKOFF_BASE_SECONDS * 2 ** max(idle_polls, 0), BACKOFF_MAX_SECONDS)
    jitter = (rng or random.Random()).uniform(0.8, 1.2)
    return float(round(base * jitter, 3))


def lease(svc: Services, factory: Factory) -> Lease | None:
    if not factory.takes_work:
        return None
    now = svc.clock.now()
    for job in svc.store.queued(factory.pool, now, CANDIDATES):
        try:
            taken = svc.store.replace(J.release(job, now).model_copy(update={"factory_id": factory.id}))
        except Conflict:
            continue  # another factory took it: try the next one, no second query
        expires = int(now.timestamp()) + svc.attempt_token_ttl_seconds
        log.info("job leased", extra=job_fields(taken.id, taken.attempt, factory_id=factory.id))
        if svc.dispatch_mode == "shadow":
            shadow.record(svc, taken.id, taken.attempt, "poll", factory.pool)
        return Lease(taken.id, taken.attempt, tokens.issue(svc.token_secret, taken.id, taken.attempt, expires))
    return None
