"""The job state machine: every (from, to) pair of statuses, through the functions that move a
job, plus the fencing on attempts, cancellation, re-queueing and dead-lettering."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from gigafactory.domain import job as J
from gigafactory.domain import scoring
from gigafactory.domain.job import HISTORY_LIMIT, Job, Lease, Result, StaleAttempt
from gigafactory.domain.manifest import Manifest
from gigafactory.domain.states import IN_FLIGHT, TERMINAL, TRANSITIONS, IllegalTransition, Status, can_transition

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
ALL = list(Status)
PAIRS = list(itertools.product(ALL, ALL))
LEGAL = [(a, b) for a, b in PAIRS if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a, b in PAIRS if b not in TRANSITIONS[a]]


def fresh(**manifest: object) -> Job:
    m = Manifest.model_validate({"product": "demo", "title": "t", "task": "x", **manifest})
    job = J.new_job(job_id="j-1", manifest=m, pool="local", now=T0)
    job.etag = '"etag-1"'
    return job


def at_status(status: Status, attempt: int = 1) -> Job:
    """A job placed in ``status`` directly (test setup, not a transition)."""
    job = fresh()
    update: dict[str, object] = {"status": status, "attempt": attempt}
    if status in IN_FLIGHT:
        update["dispatched_at"] = T0
    if status is Status.RUNNING:
        update["started_at"] = T0
        update["lease"] = Lease(holder="f-1", expires_at=T0 + timedelta(minutes=1), token_sha256="ab" * 32)
    placed = job.model_copy(update=update)
    placed.etag = job.etag
    return placed


def _complete_ok(job: Job) -> Job:
    return J.complete(job, job.attempt, Result(outcome="succeeded", exit_code=0), retryable=False, now=NOW)


# The function that performs a move to each target status.
PERFORM: dict[Status, Callable[[Job], Job]] = {
    Status.QUEUED: lambda j: J.requeue(j, delay_seconds=10, now=NOW, reason="retry"),
    Status.DISPATCHED: lambda j: J.release(j, NOW),
    Status.LAUNCHING: lambda j: J.mark_launching(j, j.attempt, "exec-1", NOW),
    Status.RUNNING: lambda j: J.claim(j, j.attempt, holder="f-1", token_sha256="cd" * 32, lease_seconds=60, now=NOW),
    Status.SUCCEEDED: _complete_ok,
    Status.ATTEMPT_FAILED: lambda j: J.expire(j, j.attempt, "heartbeat_timeout", NOW),
    Status.FAILED: lambda j: J.fail(j, "attempts exhausted", NOW),
    Status.CANCELLED: lambda j: J.finalize_cancel(j, NOW),
}


def _pair_id(pair: tuple[Status, Status]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


# -- the table itself -------------------------------------------------------------------------------


def test_every_status_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(Status)


def test_shape_of_the_machine() -> None:
    assert set(TERMINAL) == {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
    assert set(IN_FLIGHT) == {Status.DISPATCHED, Status.LAUNCHING, Status.RUNNING}
    assert TRANSITIONS[Status.SUCCEEDED] == frozenset()
    for s in set(Status) - TERMINAL:
        assert Status.CANCELLED in TRANSITIONS[s], f"{s} must be cancellable"
    for s in IN_FLIGHT:
        assert Status.ATTEMPT_FAILED in TRANSITIONS[s], f"{s} must be able to time out"
    # Only an operator retry leaves a failed or cancelled job.
    assert TRANSITIONS[Status.FAILED] == TRANSITIONS[Status.CANCELLED] == frozenset({Status.QUEUED})
    assert TRANSITIONS[Status.ATTEMPT_FAILED] == {Status.QUEUED, Status.FAILED, Status.CANCELLED}
    assert TRANSITIONS[Status.QUEUED] == {Status.DISPATCHED, Status.CANCELLED}
    for s in ALL:
        assert s not in TRANSITIONS[s], f"{s} -> {s} must not be legal"


def test_counts() -> None:
    assert len(PAIRS) == 64
    assert len(LEGAL) == 18
    assert len(ILLEGAL) == 46


# -- every pair ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", LEGAL, ids=[_pair_id(p) for p in LEGAL])
def test_legal_transition_succeeds(pair: tuple[Status, Status]) -> None:
    source, target = pair
    job = at_status(source, attempt=2)
    undelivered = (source, target) == (Status.DISPATCHED, Status.QUEUED)
    moved = J.return_to_queue(job, NOW) if undelivered else PERFORM[target](job)
    assert moved.status is target
    assert can_transition(source, target)
    last = moved.history[-1]
    assert last.status is target and last.at == NOW
    assert len(moved.history) == len(job.history) + 1
    assert moved.etag == job.etag, "the ETag read must travel with the change"
    assert job.status is source, "the input job is never mutated"
    expected_attempt = 3 if target is Status.QUEUED and not undelivered else 2
    assert moved.attempt == last.attempt == expected_attempt


@pytest.mark.parametrize("pair", ILLEGAL, ids=[_pair_id(p) for p in ILLEGAL])
def test_illegal_transition_refused_by_the_performing_function(pair: tuple[Status, Status]) -> None:
    source, target = pair
    job = at_status(source)
    if target is Status.SUCCEEDED and source is not Status.RUNNING:
        # A completion report for an attempt that is not running is fenced before the move.
        with pytest.raises(StaleAttempt, match=source.value):
            PERFORM[target](job)
        return
    with pytest.raises(IllegalTransition) as info:
        PERFORM[target](job)
    assert info.value.current is source and info.value.target is target
    assert f"from {source.value} to {target.value}" in str(info.value)
    assert job.id in str(info.value)


@pytest.mark.parametrize("pair", ILLEGAL, ids=[_pair_id(p) for p in ILLEGAL])
def test_illegal_transition_refused_at_the_single_choke_point(pair: tuple[Status, Status]) -> None:
    source, target = pair
    with pytest.raises(IllegalTransition) as info:
        J._move(at_status(source), target, NOW)
    msg = str(info.value)
    assert f"from {source.value} to {target.value}" in msg
    allowed = sorted(s.value for s in TRANSITIONS[source])
    assert ("none (terminal)" in msg) if not allowed else all(s in msg for s in allowed)


def test_complete_with_a_failure_moves_to_attempt_failed() -> None:
    job = at_status(Status.RUNNING)
    moved = J.complete(job, 1, Result(outcome="failed", exit_code=3), retryable=True, now=NOW)
    assert moved.status is Status.ATTEMPT_FAILED
    assert moved.result is not None and moved.result.reason == "exit_code"
    assert moved.lease is None and moved.history[-1].reason == "exit_code"
    moved = J.complete(job, 1, Result(outcome="failed", exit_code=2), retryable=False, now=NOW)
    assert moved.result is not None and moved.result.reason == "non_retryable_exit"


def test_complete_success_records_result_and_clears_lease() -> None:
    moved = _complete_ok(at_status(Status.RUNNING))
    assert moved.finished_at == NOW and moved.lease is None
    assert moved.result is not None and moved.result.exit_code == 0


def test_claim_sets_lease_and_start() -> None:
    moved = PERFORM[Status.RUNNING](at_status(Status.LAUNCHING))
    assert moved.started_at == NOW
    assert moved.lease is not None
    assert moved.lease.expires_at == NOW + timedelta(seconds=60)
    assert moved.lease.holder == "f-1" and moved.lease.token_sha256 == "cd" * 32


def test_expire_records_a_timeout_result() -> None:
    moved = J.expire(at_status(Status.RUNNING), 1, "start_to_close_timeout", NOW)
    assert moved.result is not None and moved.result.outcome == "timeout"
    assert moved.result.reason == "start_to_close_timeout"
    assert moved.lease is None


def test_release_stamps_dispatch_time() -> None:
    assert J.release(fresh(), NOW).dispatched_at == NOW


# -- history ---------------------------------------------------------------------------------------------


def test_new_job_starts_with_one_history_entry() -> None:
    job = fresh()
    assert [(h.status, h.attempt, h.reason) for h in job.history] == [(Status.QUEUED, 1, "submitted")]


def test_history_is_bounded_and_keeps_the_newest() -> None:
    job = fresh(retry={"max_attempts": 20})
    for _ in range(30):
        job = J.release(job, NOW)
        job = J.expire(job, job.attempt, "schedule_to_start_timeout", NOW)
        job = J.requeue(job, delay_seconds=0, now=NOW, reason="retry")
        assert len(job.history) <= HISTORY_LIMIT
    assert len(job.history) == HISTORY_LIMIT
    assert job.history[-1].status is Status.QUEUED and job.history[-1].attempt == 31
    assert all(h.reason != "submitted" for h in job.history), "the oldest entries are the ones dropped"
    attempts = [h.attempt for h in job.history]
    assert attempts == sorted(attempts)


# -- attempt fencing ----------------------------------------------------------------------------------------

STALE_CALLS: dict[str, Callable[[Job, int], Job]] = {
    "claim": lambda j, a: J.claim(j, a, holder="f", token_sha256="x", lease_seconds=60, now=NOW),
    "heartbeat": lambda j, a: J.heartbeat(j, a, lease_seconds=60, now=NOW),
    "complete": lambda j, a: J.complete(j, a, Result(outcome="succeeded", exit_code=0), retryable=False, now=NOW),
    "expire": lambda j, a: J.expire(j, a, "heartbeat_timeout", NOW),
    "mark_launching": lambda j, a: J.mark_launching(j, a, "exec", NOW),
    "record_execution": lambda j, a: J.record_execution(j, a, "exec"),
}
FITTING_STATUS = {"claim": Status.LAUNCHING, "heartbeat": Status.RUNNING, "complete": Status.RUNNING,
                  "expire": Status.RUNNING, "mark_launching": Status.DISPATCHED, "record_execution": Status.LAUNCHING}


@pytest.mark.parametrize("call", sorted(STALE_CALLS))
@pytest.mark.parametrize("given", [1, 3])
def test_wrong_attempt_is_stale(call: str, given: int) -> None:
    job = at_status(FITTING_STATUS[call], attempt=2)
    with pytest.raises(StaleAttempt) as info:
        STALE_CALLS[call](job, given)
    assert f"attempt {given} is stale" in str(info.value) and "current attempt is 2" in str(info.value)
    STALE_CALLS[call](job, 2)  # the current attempt is accepted


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.RUNNING])
def test_heartbeat_when_not_running_is_stale(status: Status) -> None:
    with pytest.raises(StaleAttempt, match="not running"):
        J.heartbeat(at_status(status), 1, lease_seconds=60, now=NOW)


def test_heartbeat_extends_the_lease_without_changing_status() -> None:
    job = at_status(Status.RUNNING)
    beat = J.heartbeat(job, 1, lease_seconds=90, now=NOW)
    assert beat.status is Status.RUNNING
    assert beat.lease is not None and beat.lease.expires_at == NOW + timedelta(seconds=90)
    assert beat.lease.holder == "f-1" and beat.lease.token_sha256 == "ab" * 32
    assert beat.history == job.history
    assert beat.etag == job.etag


def test_record_execution_is_not_a_status_change() -> None:
    job = at_status(Status.LAUNCHING)
    out = J.record_execution(job, 1, "exec-9")
    assert out.status is Status.LAUNCHING and out.execution == "exec-9" and out.history == job.history
    assert out.etag == job.etag


# -- cancellation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.QUEUED, Status.ATTEMPT_FAILED])
def test_cancel_of_waiting_work_is_immediate(status: Status) -> None:
    out = J.request_cancel(at_status(status), NOW)
    assert out.status is Status.CANCELLED
    assert out.finished_at == NOW and out.cancel_requested is True
    assert out.history[-1].status is Status.CANCELLED


@pytest.mark.parametrize("status", sorted(IN_FLIGHT))
def test_cancel_of_in_flight_work_only_flags_it(status: Status) -> None:
    job = at_status(status)
    out = J.request_cancel(job, NOW)
    assert out.status is status
    assert out.cancel_requested is True
    assert out.finished_at is None
    assert out.history == job.history
    assert out.etag == job.etag
    assert job.cancel_requested is False


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_cancel_of_finished_work_is_illegal(status: Status) -> None:
    with pytest.raises(IllegalTransition, match=f"from {status.value} to cancelled"):
        J.request_cancel(at_status(status), NOW)


def test_a_flagged_job_cannot_be_claimed() -> None:
    flagged = J.request_cancel(at_status(Status.LAUNCHING), NOW)
    with pytest.raises(IllegalTransition):
        J.claim(flagged, 1, holder="f", token_sha256="x", lease_seconds=60, now=NOW)


def test_finalize_cancel_clears_the_lease() -> None:
    out = J.finalize_cancel(J.request_cancel(at_status(Status.RUNNING), NOW), NOW)
    assert out.status is Status.CANCELLED and out.lease is None and out.finished_at == NOW


# -- requeue, retry and failure -------------------------------------------------------------------------------


def test_requeue_starts_the_next_attempt_after_its_delay() -> None:
    job = J.expire(J.claim(J.release(fresh(), T0), 1, holder="f", token_sha256="x", lease_seconds=60, now=T0),
                   1, "heartbeat_timeout", NOW)
    job = job.model_copy(update={"cancel_requested": True, "execution": "exec-1", "factory_id": "f-1"})
    out = J.requeue(job, delay_seconds=45.5, now=NOW, reason="heartbeat_timeout")
    assert out.status is Status.QUEUED
    assert out.attempt == 2
    assert out.due_at == NOW + timedelta(seconds=45.5)
    assert out.sort_key == scoring.sort_key(priority="P2", submitted_at=T0, deadline=None, attempt=2)
    assert out.sort_key == pytest.approx(job.sort_key - scoring.RETRY_PENALTY)
    assert out.submitted_at == T0, "aging counts from the first submission"
    assert (out.lease, out.execution, out.factory_id, out.dispatched_at, out.started_at) == (None,) * 5
    assert out.cancel_requested is False
    assert out.history[-1].attempt == 2 and out.history[-1].reason == "heartbeat_timeout"


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
def test_manual_retry_of_a_finished_failure(status: Status) -> None:
    out = J.manual_retry(at_status(status, attempt=3), NOW)
    assert out.status is Status.QUEUED and out.attempt == 4 and out.due_at == NOW
    assert out.history[-1].reason == "retry requested"


@pytest.mark.parametrize("status", [Status.QUEUED, Status.DISPATCHED, Status.LAUNCHING, Status.RUNNING,
                                    Status.SUCCEEDED])
def test_manual_retry_of_anything_else_is_illegal(status: Status) -> None:
    with pytest.raises(IllegalTransition, match=f"from {status.value} to queued"):
        J.manual_retry(at_status(status), NOW)


def test_fail_dead_letters_with_the_reason() -> None:
    out = J.fail(at_status(Status.ATTEMPT_FAILED, attempt=3), "exit_code: attempts exhausted (3 of 3)", NOW)
    assert out.status is Status.FAILED and out.finished_at == NOW and out.lease is None
    assert out.dead_letter == {"reason": "exit_code: attempts exhausted (3 of 3)", "at": NOW.isoformat(),
                               "attempt": 3}
    assert out.history[-1].reason == "exit_code: attempts exhausted (3 of 3)"


# -- the stored form ------------------------------------------------------------------------------------------


def test_new_job_fields() -> None:
    m = Manifest.model_validate({"product": "demo", "title": "t", "task": "x", "priority": "P1",
                                 "deadline": "2026-03-02T00:00:00Z", "labels": {"team": "core"},
                                 "idempotency_key": "key-1"})
    job = J.new_job(job_id="k-1", manifest=m, pool="local", now=T0)
    assert (job.status, job.attempt, job.pool, job.product, job.priority) == (Status.QUEUED, 1, "local", "demo", "P1")
    assert job.submitted_at == job.due_at == T0
    assert job.deadline == m.deadline and job.labels == {"team": "core"} and job.idempotency_key == "key-1"
    assert job.sort_key == scoring.sort_key(priority="P1", submitted_at=T0, deadline=m.deadline, attempt=1)
    assert job.score_at(NOW).total == pytest.approx(
        scoring.score(priority="P1", submitted_at=T0, deadline=m.deadline, attempt=1, at=NOW).total)


def test_document_round_trip_keeps_the_etag_out_of_the_body() -> None:
    job = at_status(Status.RUNNING)
    doc = job.to_doc()
    assert "etag" not in doc
    doc["_etag"] = '"etag-2"'
    back = Job.from_doc(doc)
    assert back.etag == '"etag-2"'
    assert back.model_dump() == job.model_dump()
    assert doc["submitted_at"].endswith("Z")
