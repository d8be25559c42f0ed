"""What the lifecycle orchestration should do next, given a snapshot of the job.

Pure and replay-safe: the orchestrator feeds it a snapshot read by an activity and the
orchestration clock, and gets back one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from gigafactory.domain.job import Job
from gigafactory.domain.states import TERMINAL, Status
from gigafactory.domain.timefmt import from_iso, to_iso

StepKind = Literal["done", "cancel", "retry", "next_attempt", "wait", "release"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    until: datetime | None = None
    reason: str | None = None


def attempt_deadline(job: Job) -> tuple[datetime, str] | None:
    """The instant the current attempt times out, with the reason it would give."""
    manifest_timeouts = job.timeouts
    if job.status in (Status.DISPATCHED, Status.LAUNCHING) and job.dispatched_at is not None:
        start = max(job.dispatched_at, job.due_at)
        return start + timedelta(seconds=manifest_timeouts.schedule_to_start_seconds), "schedule_to_start_timeout"
    if job.status is Status.RUNNING and job.started_at is not None:
        close = job.started_at + timedelta(seconds=manifest_timeouts.start_to_close_seconds)
        if job.lease is not None and job.lease.expires_at < close:
            return job.lease.expires_at, "heartbeat_timeout"
        return close, "start_to_close_timeout"
    return None


def snapshot(job: Job | None) -> dict[str, Any]:
    """The JSON the snapshot activity returns: only what ``plan`` reads."""
    if job is None:
        return {"exists": False}
    deadline = attempt_deadline(job)
    return {
        "exists": True,
        "status": job.status.value,
        "attempt": job.attempt,
        "pool": job.pool,
        "cancel_requested": job.cancel_requested,
        "due_at": to_iso(job.due_at),
        "deadline": to_iso(deadline[0]) if deadline else None,
        "deadline_reason": deadline[1] if deadline else None,
    }


def plan(snap: dict[str, Any], attempt: int, now: datetime) -> Step:
    if not snap.get("exists"):
        return Step("done", reason="job missing")
    status = Status(snap["status"])
    if status in TERMINAL:
        return Step("done", reason=status.value)
    if snap["attempt"] > attempt:
        return Step("next_attempt")
    if snap["cancel_requested"]:
        return Step("cancel")
    if status is Status.ATTEMPT_FAILED:
        return Step("retry")
    if status is Status.QUEUED:
        due = from_iso(snap["due_at"])
        if due > now:
            return Step("release", until=due)
        return Step("wait")
    deadline = snap.get("deadline")
    return Step("wait", until=from_iso(deadline) if deadline else None, reason=snap.get("deadline_reason"))
