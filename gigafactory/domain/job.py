"""The stored job and every change that can happen to it.

Each function takes a job and returns a changed copy; none reads a clock or a store. Status
only ever changes in ``_move``, which enforces ``states.TRANSITIONS`` and records history.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gigafactory.domain import scoring
from gigafactory.domain.manifest import Manifest, Retry, Timeouts
from gigafactory.domain.states import IN_FLIGHT, TERMINAL, IllegalTransition, Status, can_transition
from gigafactory.domain.timefmt import UtcDatetime

HISTORY_LIMIT = 50


class StaleAttempt(Exception):
    """A report for an attempt that is no longer the job's current one (HTTP 409)."""


class ManifestRef(BaseModel):
    """Claim check: where a large manifest lives and how to verify it."""

    blob: str
    sha256: str
    size: int


class Lease(BaseModel):
    holder: str
    expires_at: UtcDatetime
    token_sha256: str


class Result(BaseModel):
    outcome: str
    exit_code: int | None = None
    summary: str | None = None
    pr_url: str | None = None
    artifacts: list[str] = Field(default_factory=list)
    log_ref: str | None = None
    reason: str | None = None


class HistoryEntry(BaseModel):
    at: UtcDatetime
    status: Status
    attempt: int
    reason: str | None = None


class Job(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    type: str = "job"
    pool: str
    product: str
    priority: str
    status: Status = Status.QUEUED
    attempt: int = 1
    title: str = ""
    profile: str = "echo"
    # Copied from the manifest so timers and retries never need the (possibly claim-checked) manifest.
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retry: Retry = Field(default_factory=Retry)
    manifest: Manifest | None = None
    manifest_ref: ManifestRef | None = None
    idempotency_key: str | None = None
    sort_key: float
    submitted_at: UtcDatetime
    due_at: UtcDatetime
    dispatched_at: UtcDatetime | None = None
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    deadline: UtcDatetime | None = None
    lease: Lease | None = None
    execution: str | None = None
    factory_id: str | None = None
    cancel_requested: bool = False
    # How often this attempt's dispatch was sent again (see ids.dispatch_message_id), and when last.
    resends: int = 0
    sent_at: UtcDatetime | None = None
    result: Result | None = None
    dead_letter: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    history: list[HistoryEntry] = Field(default_factory=list)
    etag: str | None = Field(default=None, exclude=True)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Job:
        job = cls.model_validate(doc)
        job.etag = doc.get("_etag")
        return job

    def score_at(self, at: datetime) -> scoring.Score:
        return scoring.score(priority=self.priority, submitted_at=self.submitted_at, deadline=self.deadline,
                             attempt=self.attempt, at=at)

    def require_attempt(self, attempt: int) -> None:
        if attempt != self.attempt:
            raise StaleAttempt(f"job {self.id}: attempt {attempt} is stale; the current attempt is {self.attempt}")


def _move(job: Job, target: Status, now: datetime, reason: str | None = None, **changes: Any) -> Job:
    if not can_transition(job.status, target):
        raise IllegalTransition(job.id, job.status, target)
    history = [*job.history, HistoryEntry(at=now, status=target, attempt=changes.get("attempt", job.attempt),
                                          reason=reason)]
    updated = job.model_copy(update={**changes, "status": target, "history": history[-HISTORY_LIMIT:]})
    updated.etag = job.etag
    return updated


def new_job(*, job_id: str, manifest: Manifest, pool: str, now: datetime, store_manifest: bool = True,
            manifest_ref: ManifestRef | None = None) -> Job:
    key = scoring.sort_key(priority=manifest.priority, submitted_at=now, deadline=manifest.deadline, attempt=1)
    return Job(
        id=job_id, pool=pool, product=manifest.product, priority=manifest.priority, title=manifest.title,
        profile=manifest.agent.profile, timeouts=manifest.timeouts, retry=manifest.retry,
        manifest=manifest if store_manifest else None, manifest_ref=manifest_ref,
        idempotency_key=manifest.idempotency_key, sort_key=key, submitted_at=now, due_at=now,
        deadline=manifest.deadline, labels=manifest.labels,
        history=[HistoryEntry(at=now, status=Status.QUEUED, attempt=1, reason="submitted")],
    )


def release(job: Job, now: datetime) -> Job:
    return _move(job, Status.DISPATCHED, now, dispatched_at=now, sent_at=now)


def resend(job: Job, now: datetime) -> Job:
    """Not a status change: the attempt's dispatch goes out again under a new message id."""
    if job.status is not Status.DISPATCHED or job.factory_id is not None or job.lease is not None:
        raise IllegalTransition(job.id, job.status, Status.DISPATCHED)
    updated = job.model_copy(update={"resends": job.resends + 1, "sent_at": now})
    updated.etag = job.etag
    return updated


def return_to_queue(job: Job, now: datetime) -> Job:
    """An undelivered release goes back to the queue as the same attempt (mode switch to poll)."""
    if job.status is not Status.DISPATCHED or job.factory_id is not None or job.lease is not None:
        raise IllegalTransition(job.id, job.status, Status.QUEUED)
    return _move(job, Status.QUEUED, now, "undelivered release returned to the queue", dispatched_at=None,
                 due_at=now, resends=job.resends + 1)


def mark_launching(job: Job, attempt: int, execution: str, now: datetime) -> Job:
    job.require_attempt(attempt)
    return _move(job, Status.LAUNCHING, now, execution=execution or None)


def record_execution(job: Job, attempt: int, execution: str) -> Job:
    """Not a status change: remembers which execution to stop on cancel or expiry."""
    job.require_attempt(attempt)
    updated = job.model_copy(update={"execution": execution})
    updated.etag = job.etag
    return updated


def claim(job: Job, attempt: int, *, holder: str, token_sha256: str, lease_seconds: float, now: datetime) -> Job:
    job.require_attempt(attempt)
    if job.cancel_requested:
        raise IllegalTransition(job.id, job.status, Status.RUNNING)
    lease = Lease(holder=holder, expires_at=now + timedelta(seconds=lease_seconds), token_sha256=token_sha256)
    return _move(job, Status.RUNNING, now, started_at=now, lease=lease)


def heartbeat(job: Job, attempt: int, *, lease_seconds: float, now: datetime) -> Job:
    job.require_attempt(attempt)
    if job.status is not Status.RUNNING or job.lease is None:
        raise StaleAttempt(f"job {job.id}: attempt {attempt} is {job.status}, not running")
    lease = job.lease.model_copy(update={"expires_at": now + timedelta(seconds=lease_seconds)})
    updated = job.model_copy(update={"lease": lease})
    updated.etag = job.etag
    return updated


def complete(job: Job, attempt: int, result: Result, *, retryable: bool, now: datetime) -> Job:
    job.require_attempt(attempt)
    if job.status is not Status.RUNNING:
        raise StaleAttempt(f"job {job.id}: attempt {attempt} is {job.status}, not running")
    if result.outcome == "succeeded":
        return _move(job, Status.SUCCEEDED, now, "completed", result=result, finished_at=now, lease=None)
    reason = result.reason or ("exit_code" if retryable else "non_retryable_exit")
    result = result.model_copy(update={"reason": reason})
    return _move(job, Status.ATTEMPT_FAILED, now, reason, result=result, lease=None)


def expire(job: Job, attempt: int, reason: str, now: datetime) -> Job:
    job.require_attempt(attempt)
    result = Result(outcome="timeout", reason=reason)
    return _move(job, Status.ATTEMPT_FAILED, now, reason, result=result, lease=None)


def requeue(job: Job, *, delay_seconds: float, now: datetime, reason: str) -> Job:
    """Queue the next attempt, due after its backoff."""
    if job.status not in (Status.ATTEMPT_FAILED, Status.FAILED, Status.CANCELLED):
        raise IllegalTransition(job.id, job.status, Status.QUEUED)
    attempt = job.attempt + 1
    key = scoring.sort_key(priority=job.priority, submitted_at=job.submitted_at, deadline=job.deadline,
                           attempt=attempt)
    return _move(job, Status.QUEUED, now, reason, attempt=attempt, sort_key=key,
                 due_at=now + timedelta(seconds=delay_seconds), lease=None, execution=None,
                 factory_id=None, dispatched_at=None, started_at=None, cancel_requested=False, resends=0)


def fail(job: Job, reason: str, now: datetime) -> Job:
    dead = {"reason": reason, "at": now.isoformat(), "attempt": job.attempt}
    return _move(job, Status.FAILED, now, reason, finished_at=now, dead_letter=dead, lease=None)


def request_cancel(job: Job, now: datetime) -> Job:
    """Queued work is cancelled at once; anything in flight is flagged for its lifecycle."""
    if job.status is Status.QUEUED or job.status is Status.ATTEMPT_FAILED:
        return _move(job, Status.CANCELLED, now, "cancel requested", finished_at=now, cancel_requested=True)
    if job.terminal:
        raise IllegalTransition(job.id, job.status, Status.CANCELLED)
    updated = job.model_copy(update={"cancel_requested": True})
    updated.etag = job.etag
    return updated


def finalize_cancel(job: Job, now: datetime) -> Job:
    return _move(job, Status.CANCELLED, now, "cancelled", finished_at=now, lease=None)


def manual_retry(job: Job, now: datetime) -> Job:
    return requeue(job, delay_seconds=0, now=now, reason="retry requested")
