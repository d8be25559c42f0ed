"""Job states and the only legal moves between them. Every status change goes through here."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    LAUNCHING = "launching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ATTEMPT_FAILED = "attempt_failed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
IN_FLIGHT = frozenset({Status.DISPATCHED, Status.LAUNCHING, Status.RUNNING})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.DISPATCHED, Status.CANCELLED}),
    # A standing factory claims straight from dispatched; on-demand goes through launching.
    # Back to queued (same attempt) only when a release was never delivered and the
    # coordinator switched to poll mode, where factories lease queued work themselves.
    Status.DISPATCHED: frozenset({Status.QUEUED, Status.LAUNCHING, Status.RUNNING, Status.ATTEMPT_FAILED,
                                  Status.CANCELLED}),
    Status.LAUNCHING: frozenset({Status.RUNNING, Status.ATTEMPT_FAILED, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.ATTEMPT_FAILED, Status.CANCELLED}),
    Status.ATTEMPT_FAILED: frozenset({Status.QUEUED, Status.FAILED, Status.CANCELLED}),
    Status.SUCCEEDED: frozenset(),
    # An operator's retry re-queues a finished failure as a new attempt.
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.CANCELLED: frozenset({Status.QUEUED}),
}


class IllegalTransition(Exception):
    """A requested move the state machine does not allow (HTTP 409)."""

    def __init__(self, job_id: str, current: Status, target: Status) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (terminal)"
        super().__init__(f"job {job_id}: cannot go from {current} to {target}; allowed from {current}: {allowed}")
        self.current = current
        self.target = target


def can_transition(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]
