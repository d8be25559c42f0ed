"""The explainable job score.

score(t) = priority + age(t) + deadline_urgency(t) - retry_penalty

* priority: P0 3000, P1 2000, P2 1000, P3 0 points;
* age: AGE_POINTS_PER_MINUTE per minute since submission;
* deadline urgency: URGENCY_POINTS_PER_MINUTE per minute closer to the deadline than
  DEFAULT_HORIZON; a job without a deadline, or with one further away than DEFAULT_HORIZON, is
  given one DEFAULT_HORIZON after submission, so its urgency starts at 0 (never below) and grows
  at the same rate as everybody's;
* retry penalty: RETRY_PENALTY points per earlier attempt.

Every time-dependent term is linear in t with the same slope for every job, so
``score(t) = sort_key + SLOPE * t``: ordering by the stored ``sort_key`` equals ordering by
the score at any later instant, and the store can keep an index on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

PRIORITY_POINTS = {"P0": 3000.0, "P1": 2000.0, "P2": 1000.0, "P3": 0.0}
AGE_POINTS_PER_MINUTE = 1.0
URGENCY_POINTS_PER_MINUTE = 1.0
RETRY_PENALTY = 100.0
DEFAULT_HORIZON = timedelta(hours=24)
SLOPE = (AGE_POINTS_PER_MINUTE + URGENCY_POINTS_PER_MINUTE) / 60.0  # points per second


@dataclass(frozen=True)
class Score:
    priority: float
    age: float
    deadline_urgency: float
    retry_penalty: float
    total: float
    sort_key: float

    def as_dict(self) -> dict[str, float]:
        return {
            "priority": self.priority,
            "age": self.age,
            "deadline_urgency": self.deadline_urgency,
            "retry_penalty": self.retry_penalty,
            "total": self.total,
            "sort_key": self.sort_key,
        }


def effective_deadline(submitted_at: datetime, deadline: datetime | None) -> datetime:
    horizon = submitted_at + DEFAULT_HORIZON
    # A far deadline is no less urgent than none: it must never cost a job points.
    return horizon if deadline is None else min(deadline, horizon)


def score(
    *,
    priority: str,
    submitted_at: datetime,
    deadline: datetime | None,
    attempt: int,
    at: datetime,
) -> Score:
    """The score of a job at instant ``at`` with its terms, for the API's breakdown."""
    p = PRIORITY_POINTS[priority]
    age = AGE_POINTS_PER_MINUTE * (at - submitted_at).total_seconds() / 60.0
    until_deadline = (effective_deadline(submitted_at, deadline) - at).total_seconds()
    urgency = URGENCY_POINTS_PER_MINUTE * (DEFAULT_HORIZON.total_seconds() - until_deadline) / 60.0
    penalty = RETRY_PENALTY * max(attempt - 1, 0)
    total = p + age + urgency - penalty
    return Score(p, age, urgency, penalty, total, sort_key(priority=priority, submitted_at=submitted_at,
                                                            deadline=deadline, attempt=attempt))


def sort_key(*, priority: str, submitted_at: datetime, deadline: datetime | None, attempt: int) -> float:
    """The score at t = epoch: the time-invariant part of the score."""
    sub = submitted_at.timestamp()
    dl = effective_deadline(submitted_at, deadline).timestamp()
    return (
        PRIORITY_POINTS[priority]
        - AGE_POINTS_PER_MINUTE * sub / 60.0
        + URGENCY_POINTS_PER_MINUTE * (DEFAULT_HORIZON.total_seconds() - dl) / 60.0
        - RETRY_PENALTY * max(attempt - 1, 0)
    )
