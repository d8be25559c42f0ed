"""The in-process Durable engine runs real orchestrator generators through the SDK's own replay.

Sample orchestrators here are small and self-contained; each test would fail if the engine built
the history the SDK replays wrongly (wrong task ids, missing events, wrong timestamps) or mishandled
the actions the SDK returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import pytest

from gigafactory.local.clock import FakeClock
from gigafactory.local.durable import DurableEngine

pytestmark = pytest.mark.filterwarnings("ignore:Potential duplicate Task completion")

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

Orchestrator = Callable[[df.DurableOrchestrationContext], Any]


# -- sample orchestrators and activities --------------------------------------------------------


def chain(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    value = context.get_input()
    for _ in range(3):
        value = yield context.call_activity("add_one", value)
    context.set_custom_status({"stage": "done"})
    return value


def catches_failure(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    try:
        yield context.call_activity("explode", {"why": "boom"})
    except Exception as exc:
        recovered = yield context.call_activity("add_one", 41)
        return {"caught": str(exc), "recovered": recovered}
    return "not reached"


def lets_failure_escape(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    yield context.call_activity("explode", {"why": "unhandled"})
    return "not reached"


def sleeper(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    yield context.create_timer(context.current_utc_datetime + timedelta(minutes=1))
    return f"woke at {context.current_utc_datetime.isoformat()}"


def approval(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    decision = context.wait_for_external_event("approve")  # first: waiting takes no task id
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    winner = yield context.task_any([decision, timeout])
    if winner == decision:
        timeout.cancel()
        return {"approved_by": decision.result}
    return "timed out"


def approval_forgetting_to_cancel(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    decision = context.wait_for_external_event("approve")
    winner = yield context.task_any([timeout, decision])
    return "approved" if winner == decision else "timed out"


def two_rounds_uncancelled(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    """Loses a timer race without cancelling, then keeps waiting while that timer fires."""
    first = context.wait_for_external_event("first")
    yield context.task_any([context.create_timer(context.current_utc_datetime + timedelta(minutes=5)), first])
    second = yield context.wait_for_external_event("second")
    return [first.result, second]


def waits_after_work(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    yield context.call_activity("add_one", 0)
    data = yield context.wait_for_external_event("go")
    return data


def counter(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    state = context.get_input()
    state["seen"].append(context.instance_id)
    bumped = yield context.call_activity("add_one", state["n"])
    if bumped < 3:
        context.continue_as_new({"n": bumped, "seen": state["seen"]})
        return None
    return {"n": bumped, "executions": len(state["seen"])}


def timer_then_continue(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    round_ = context.get_input()
    if round_ == 0:
        yield context.create_timer(context.current_utc_datetime + timedelta(minutes=1))
        context.continue_as_new(1)
        return None
    data = yield context.wait_for_external_event("go")
    return data


def abandons_work(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    if context.get_input() == 0:
        yield context.wait_for_external_event("go")
        # "skip" is already buffered, so this resolves at once and the activity is left running.
        yield context.task_any([context.call_activity("add_one", 0), context.wait_for_external_event("skip")])
        context.continue_as_new(1)
        return None
    result = yield context.call_activity("add_one", 100)
    return result


def waits_twice(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    yield context.call_activity("add_one", 0)
    first = yield context.wait_for_external_event("tick")
    second = yield context.wait_for_external_event("tick")
    return [first, second]


def retrying(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    options = df.RetryOptions(first_retry_interval_in_milliseconds=30_000, max_number_of_attempts=3)
    both = yield context.task_all(
        [context.call_activity_with_retry("flaky", options, "job-1"), context.call_activity("add_one", 1)]
    )
    after = yield context.call_activity("add_one", 10)
    return [*both, after]


def retry_gives_up(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    options = df.RetryOptions(first_retry_interval_in_milliseconds=1_000, max_number_of_attempts=2)
    try:
        yield context.call_activity_with_retry("explode", options, {"why": "always"})
    except Exception as exc:
        return f"gave up: {'always' in str(exc)}"
    return "not reached"


REPLAY_LOG: list[tuple[str, str, str, bool]] = []


def replay_recorder(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    first_uuid = context.new_uuid()
    first_time = context.current_utc_datetime
    REPLAY_LOG.append(("a", first_uuid, first_time.isoformat(), context.is_replaying))
    yield context.call_activity("add_one", 0)
    second_uuid = context.new_uuid()
    second_time = context.current_utc_datetime
    REPLAY_LOG.append(("b", second_uuid, second_time.isoformat(), context.is_replaying))
    yield context.create_timer(second_time + timedelta(seconds=30))
    return [first_uuid, first_time.isoformat(), second_uuid, second_time.isoformat()]


NONDETERMINISM = {"calls": 0}


def nondeterministic(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    NONDETERMINISM["calls"] += 1
    yield context.call_activity("add_one" if NONDETERMINISM["calls"] == 1 else "explode", 0)
    return "done"


def unsupported(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    yield context.call_sub_orchestrator("chain", 1)
    return "done"


class Crash(BaseException):
    """Stands in for the process dying while an activity runs."""


ACTIVITY_CALLS: dict[str, int] = {}


def add_one(value: int) -> int:
    ACTIVITY_CALLS["add_one"] = ACTIVITY_CALLS.get("add_one", 0) + 1
    return value + 1


def explode(payload: dict[str, str]) -> None:
    raise ValueError(payload["why"])


def flaky(job: str) -> str:
    ACTIVITY_CALLS["flaky"] = ACTIVITY_CALLS.get("flaky", 0) + 1
    if ACTIVITY_CALLS["flaky"] < 3:
        raise RuntimeError(f"transient failure {ACTIVITY_CALLS['flaky']}")
    return f"{job} ok after {ACTIVITY_CALLS['flaky']}"


ENGINE_REF: list[DurableEngine] = []
NESTED_RUNS: list[int] = []


def notify(target: str) -> str:
    # Activities call back into the engine (the app's services do): that must not deadlock.
    engine = ENGINE_REF[0]
    NESTED_RUNS.append(engine.run_until_idle())
    assert engine.raise_event(target, "go", "from an activity")
    return target


def notifier(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    sent = yield context.call_activity("notify", context.get_input())
    return sent


CRASH_ONCE = {"armed": True}


def crashes_once(value: int) -> int:
    if CRASH_ONCE["armed"]:
        CRASH_ONCE["armed"] = False
        raise Crash()
    return value * 2


def crash_orchestrator(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    doubled = yield context.call_activity("crashes_once", context.get_input())
    return doubled


ORCHESTRATORS: Mapping[str, Orchestrator] = {
    "chain": chain,
    "catches_failure": catches_failure,
    "lets_failure_escape": lets_failure_escape,
    "sleeper": sleeper,
    "approval": approval,
    "approval_forgetting_to_cancel": approval_forgetting_to_cancel,
    "two_rounds_uncancelled": two_rounds_uncancelled,
    "waits_after_work": waits_after_work,
    "counter": counter,
    "timer_then_continue": timer_then_continue,
    "waits_twice": waits_twice,
    "abandons_work": abandons_work,
    "retrying": retrying,
    "retry_gives_up": retry_gives_up,
    "replay_recorder": replay_recorder,
    "nondeterministic": nondeterministic,
    "unsupported": unsupported,
    "crash_orchestrator": crash_orchestrator,
    "notifier": notifier,
}
ACTIVITIES: Mapping[str, Callable[[Any], Any]] = {
    "add_one": add_one,
    "explode": explode,
    "flaky": flaky,
    "crashes_once": crashes_once,
    "notify": notify,
}


@pytest.fixture(autouse=True)
def _reset_globals() -> None:
    ACTIVITY_CALLS.clear()
    REPLAY_LOG.clear()
    NONDETERMINISM["calls"] = 0
    CRASH_ONCE["armed"] = True
    ENGINE_REF.clear()
    NESTED_RUNS.clear()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def engine(tmp_path: Path, clock: FakeClock) -> Iterator[DurableEngine]:
    eng = DurableEngine(tmp_path / "durable.db", clock, ORCHESTRATORS, ACTIVITIES)
    yield eng
    eng.close()


def status_of(engine: DurableEngine, instance_id: str) -> str:
    status = engine.get_status(instance_id)
    assert status is not None
    return status.runtime_status


# -- activities ---------------------------------------------------------------------------------


def test_activity_chain_passes_results_along(engine: DurableEngine) -> None:
    assert engine.start_new("chain", "c1", 5)
    assert status_of(engine, "c1") == "Pending"

    processed = engine.run_until_idle()

    status = engine.get_status("c1")
    assert status is not None
    assert (status.runtime_status, status.output, status.input) == ("Completed", 8, 5)
    assert status.custom_status == {"stage": "done"}
    assert processed == 7  # start + 3 x (activity, its result)
    history = engine.get_history("c1")
    scheduled = [e for e in history if e["EventType"] == 4]
    completed = [e for e in history if e["EventType"] == 5]
    assert [e["EventId"] for e in scheduled] == [0, 1, 2]
    assert [e["Name"] for e in scheduled] == ["add_one"] * 3
    assert [(e["TaskScheduledId"], e["Result"]) for e in completed] == [(0, "6"), (1, "7"), (2, "8")]
    assert history[-1]["EventType"] == 1  # ExecutionCompleted


def test_activity_failure_is_raised_in_the_orchestrator_and_can_be_caught(engine: DurableEngine) -> None:
    engine.start_new("catches_failure", "f1")
    engine.run_until_idle()

    status = engine.get_status("f1")
    assert status is not None
    assert status.runtime_status == "Completed"
    assert status.output["recovered"] == 42
    assert "ValueError: boom" in status.output["caught"]
    failed = [e for e in engine.get_history("f1") if e["EventType"] == 6]
    assert failed and failed[0]["TaskScheduledId"] == 0 and "boom" in failed[0]["Reason"]


def test_uncaught_activity_failure_fails_the_instance(engine: DurableEngine) -> None:
    engine.start_new("lets_failure_escape", "f2")
    engine.run_until_idle()

    status = engine.get_status("f2")
    assert status is not None
    assert status.runtime_status == "Failed"
    assert "unhandled" in status.output
    assert engine.raise_event("f2", "anything") is False


def test_retry_reschedules_through_timers_and_keeps_task_ids_in_step(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("retrying", "r1")
    engine.run_until_idle()
    assert status_of(engine, "r1") == "Running"
    assert engine.next_timer_due() == T0 + timedelta(seconds=30)

    clock.advance(30)
    engine.run_until_idle()
    assert ACTIVITY_CALLS["flaky"] == 2
    assert status_of(engine, "r1") == "Running"

    clock.advance(30)
    engine.run_until_idle()
    status = engine.get_status("r1")
    assert status is not None
    assert status.runtime_status == "Completed"
    assert status.output == ["job-1 ok after 3", 2, 11]
    scheduled = {e["EventId"]: e["Name"] for e in engine.get_history("r1") if e["EventType"] == 4}
    # flaky=0, add_one=1, retry timer=2, flaky again=3, timer=4, flaky=5, then the last add_one.
    assert scheduled == {0: "flaky", 1: "add_one", 3: "flaky", 5: "flaky", 6: "add_one"}


def test_retry_gives_up_after_max_attempts(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("retry_gives_up", "r2")
    for _ in range(3):
        engine.run_until_idle()
        clock.advance(1)
    engine.run_until_idle()

    status = engine.get_status("r2")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", "gave up: True")


# -- timers and events -------------------------------------------------------------------------


def test_durable_timer_fires_only_when_the_clock_reaches_it(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("sleeper", "s1")
    engine.run_until_idle()
    assert status_of(engine, "s1") == "Running"
    assert engine.next_timer_due() == T0 + timedelta(minutes=1)

    clock.advance(59)
    assert engine.run_until_idle() == 0
    assert status_of(engine, "s1") == "Running"

    clock.advance(1)
    assert engine.run_until_idle() == 1
    status = engine.get_status("s1")
    assert status is not None
    assert status.runtime_status == "Completed"
    assert status.output == f"woke at {(T0 + timedelta(minutes=1)).isoformat()}"
    assert engine.next_timer_due() is None


def test_event_beats_timer_in_task_any_and_the_timer_is_cancelled(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("approval", "a1")
    engine.run_until_idle()
    assert engine.next_timer_due() == T0 + timedelta(hours=1)

    clock.advance(60)
    assert engine.raise_event("a1", "approve", "alice")
    engine.run_until_idle()

    status = engine.get_status("a1")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", {"approved_by": "alice"})
    assert engine.next_timer_due() is None
    clock.advance(timedelta(hours=2))
    assert engine.run_until_idle() == 0


def test_timer_beats_event_when_it_is_due_first(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("approval", "a2")
    engine.run_until_idle()
    clock.advance(timedelta(hours=1, seconds=1))
    engine.raise_event("a2", "approve", "late")
    engine.run_until_idle()

    status = engine.get_status("a2")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", "timed out")


def test_the_earlier_of_event_and_timer_wins_when_both_are_ready(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("approval", "a4")
    engine.run_until_idle()
    clock.advance(timedelta(minutes=30))
    engine.raise_event("a4", "approve", "carol")  # raised in time, but nothing processes it yet
    clock.advance(timedelta(hours=2))
    engine.run_until_idle()

    status = engine.get_status("a4")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", {"approved_by": "carol"})


def test_uncancelled_timer_keeps_the_instance_running_until_it_fires(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("approval_forgetting_to_cancel", "a3")
    engine.run_until_idle()
    engine.raise_event("a3", "approve")
    engine.run_until_idle()
    status = engine.get_status("a3")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Running", None)

    clock.advance(timedelta(hours=1))
    engine.run_until_idle()
    status = engine.get_status("a3")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", "approved")


def test_a_stale_timer_firing_later_does_not_break_replay(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("two_rounds_uncancelled", "t1")
    engine.run_until_idle()
    engine.raise_event("t1", "first", 1)
    engine.run_until_idle()

    clock.advance(timedelta(minutes=5))
    assert engine.run_until_idle() == 1  # the lost timer fires while the orchestrator waits for "second"
    assert status_of(engine, "t1") == "Running"

    engine.raise_event("t1", "second", 2)
    engine.run_until_idle()
    status = engine.get_status("t1")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", [1, 2])


def test_event_raised_before_the_orchestrator_waits_is_still_delivered(engine: DurableEngine) -> None:
    engine.start_new("waits_after_work", "e1")
    assert engine.raise_event("e1", "go", {"payload": 7})  # queued while still Pending
    engine.run_until_idle()

    status = engine.get_status("e1")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", {"payload": 7})
    kinds = [e["EventType"] for e in engine.get_history("e1")]
    assert kinds.index(15) < kinds.index(5)  # EventRaised reached history before the activity result


def test_sdk_delivers_a_buffered_event_to_every_later_waiter_of_that_name(engine: DurableEngine) -> None:
    # A property of the SDK's replay (so of Azure too): an event buffered before anyone waited is
    # never marked consumed, so a second wait for the same name in the same execution gets it again.
    engine.start_new("waits_twice", "q1")
    engine.raise_event("q1", "tick", "only-one")
    engine.run_until_idle()

    status = engine.get_status("q1")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", ["only-one", "only-one"])


def test_raise_event_to_a_missing_instance_returns_false(engine: DurableEngine) -> None:
    assert engine.raise_event("nobody", "go", 1) is False
    assert engine.get_status("nobody") is None
    assert engine.terminate("nobody", "why") is False


# -- continue-as-new ---------------------------------------------------------------------------


def test_continue_as_new_twice_carries_the_counter(engine: DurableEngine) -> None:
    engine.start_new("counter", "n1", {"n": 0, "seen": []})
    engine.run_until_idle()

    status = engine.get_status("n1")
    assert status is not None
    assert status.runtime_status == "Completed"
    assert status.output == {"n": 3, "executions": 3}
    assert status.input == {"n": 2, "seen": ["n1", "n1"]}
    history = engine.get_history("n1")
    assert [e["EventType"] for e in history[:2]] == [12, 0]  # a fresh history per execution
    assert sum(1 for e in history if e["EventType"] == 4) == 1


def test_event_still_queued_at_continue_as_new_goes_to_the_new_execution(
    engine: DurableEngine, clock: FakeClock
) -> None:
    engine.start_new("timer_then_continue", "n2", 0)
    engine.run_until_idle()
    clock.advance(61)
    engine.raise_event("n2", "go", "carried")  # queued after the timer became due
    engine.run_until_idle()

    status = engine.get_status("n2")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", "carried")


def test_event_delivered_to_the_old_execution_but_never_awaited_is_dropped(
    engine: DurableEngine, clock: FakeClock
) -> None:
    # As in Azure for Python: continue_as_new cannot preserve events the old execution received.
    engine.start_new("timer_then_continue", "n3", 0)
    engine.run_until_idle()
    engine.raise_event("n3", "go", "lost")  # delivered while the old execution waits on its timer
    engine.run_until_idle()
    clock.advance(61)
    engine.run_until_idle()

    assert status_of(engine, "n3") == "Running"
    engine.raise_event("n3", "go", "second")
    engine.run_until_idle()
    status = engine.get_status("n3")
    assert status is not None
    assert status.output == "second"


def test_results_from_a_previous_execution_are_discarded(engine: DurableEngine) -> None:
    engine.start_new("abandons_work", "n4", 0)
    engine.raise_event("n4", "skip")
    engine.raise_event("n4", "go")
    engine.run_until_idle()

    # The old execution's activity still ran (as in Azure) but its result, which arrived after
    # continue-as-new, must not complete the new execution's task that has the same id.

    assert ACTIVITY_CALLS["add_one"] == 2
    status = engine.get_status("n4")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Completed", 101)


# -- instance management -----------------------------------------------------------------------


def test_start_new_is_a_no_op_while_running_and_restarts_when_finished(engine: DurableEngine, clock: FakeClock) -> None:
    assert engine.start_new("sleeper", "s2") is True
    assert engine.start_new("sleeper", "s2") is False  # still Pending
    engine.run_until_idle()
    assert engine.start_new("chain", "s2", 1) is False  # Running: nothing changes
    status = engine.get_status("s2")
    assert status is not None
    assert status.name == "sleeper"

    clock.advance(60)
    engine.run_until_idle()
    assert status_of(engine, "s2") == "Completed"

    assert engine.start_new("chain", "s2", 1) is True
    engine.run_until_idle()
    status = engine.get_status("s2")
    assert status is not None
    assert (status.name, status.runtime_status, status.output) == ("chain", "Completed", 4)


def test_terminate_stops_the_instance_and_drops_its_timers(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("approval", "x1")
    engine.run_until_idle()
    assert engine.terminate("x1", "operator said so")

    status = engine.get_status("x1")
    assert status is not None
    assert (status.runtime_status, status.output) == ("Terminated", "operator said so")
    assert engine.next_timer_due() is None
    assert engine.raise_event("x1", "approve", "too late") is False
    assert engine.terminate("x1", "again") is False
    clock.advance(timedelta(hours=2))
    assert engine.run_until_idle() == 0


def test_activities_can_call_back_into_the_engine(engine: DurableEngine) -> None:
    ENGINE_REF.append(engine)
    engine.start_new("waits_after_work", "w1")
    engine.start_new("notifier", "w2", "w1")
    engine.run_until_idle()

    assert NESTED_RUNS == [0]  # a nested run from inside an activity is refused, not re-entered
    for instance_id, output in (("w1", "from an activity"), ("w2", "w1")):
        status = engine.get_status(instance_id)
        assert status is not None
        assert (status.runtime_status, status.output) == ("Completed", output)


def test_events_raised_from_other_threads_while_a_runner_works(engine: DurableEngine) -> None:
    ids = [f"t{i}" for i in range(15)]
    for instance_id in ids:
        engine.start_new("waits_after_work", instance_id)
    stop = threading.Event()

    def runner() -> None:
        while not stop.is_set():
            engine.run_until_idle()
            time.sleep(0.001)

    thread = threading.Thread(target=runner)
    thread.start()
    try:
        for instance_id in ids:
            assert engine.raise_event(instance_id, "go", instance_id)
    finally:
        stop.set()
        thread.join(timeout=10)
    engine.run_until_idle()

    outputs = {}
    for instance_id in ids:
        status = engine.get_status(instance_id)
        assert status is not None
        outputs[instance_id] = (status.runtime_status, status.output)
    assert outputs == {i: ("Completed", i) for i in ids}


# -- persistence -------------------------------------------------------------------------------


def test_instances_survive_a_restart_mid_wait(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "durable.db"
    first = DurableEngine(db, clock, ORCHESTRATORS, ACTIVITIES)
    first.start_new("sleeper", "p1")
    first.start_new("approval", "p2")
    first.run_until_idle()
    first.raise_event("p2", "approve", "bob")  # queued, not yet delivered
    first.close()

    second = DurableEngine(db, clock, ORCHESTRATORS, ACTIVITIES)
    try:
        assert status_of(second, "p1") == "Running"
        assert second.next_timer_due() == T0 + timedelta(minutes=1)
        clock.advance(60)
        second.run_until_idle()
        assert status_of(second, "p1") == "Completed"
        status = second.get_status("p2")
        assert status is not None
        assert (status.runtime_status, status.output) == ("Completed", {"approved_by": "bob"})
    finally:
        second.close()


def test_activity_interrupted_by_a_crash_runs_again_after_restart(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "durable.db"
    first = DurableEngine(db, clock, ORCHESTRATORS, ACTIVITIES)
    first.start_new("crash_orchestrator", "k1", 21)
    with pytest.raises(Crash):
        first.run_until_idle()
    first.close()

    second = DurableEngine(db, clock, ORCHESTRATORS, ACTIVITIES)
    try:
        second.run_until_idle()
        status = second.get_status("k1")
        assert status is not None
        assert (status.runtime_status, status.output) == ("Completed", 42)
    finally:
        second.close()


# -- replay ------------------------------------------------------------------------------------


def test_replay_is_deterministic_for_uuids_and_time(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("replay_recorder", "d1")
    engine.run_until_idle()  # episode 1 at T0; the activity result comes back in episode 2 at T0 too
    clock.advance(30)
    engine.run_until_idle()

    status = engine.get_status("d1")
    assert status is not None
    assert status.runtime_status == "Completed"
    first_uuid, first_time, second_uuid, second_time = status.output
    firsts = {(u, t) for tag, u, t, _ in REPLAY_LOG if tag == "a"}
    seconds = {(u, t) for tag, u, t, _ in REPLAY_LOG if tag == "b"}
    assert firsts == {(first_uuid, first_time)}
    assert seconds == {(second_uuid, second_time)}
    assert len([r for r in REPLAY_LOG if r[0] == "a"]) == 3  # replayed in every episode
    assert first_uuid != second_uuid
    assert first_time == T0.isoformat()
    # The first pass through "a" is live, later ones are replays.
    assert [r[3] for r in REPLAY_LOG if r[0] == "a"] == [False, True, True]


def test_time_comes_from_history_not_the_wall_clock(engine: DurableEngine, clock: FakeClock) -> None:
    engine.start_new("replay_recorder", "d2")
    clock.advance(timedelta(days=3))  # the first episode runs three (virtual) days after start
    engine.run_until_idle()
    assert {t for tag, _, t, _ in REPLAY_LOG if tag == "a"} == {(T0 + timedelta(days=3)).isoformat()}


def test_non_deterministic_orchestrator_fails_instead_of_diverging(engine: DurableEngine) -> None:
    engine.start_new("nondeterministic", "d3")
    engine.run_until_idle()

    status = engine.get_status("d3")
    assert status is not None
    assert status.runtime_status == "Failed"
    assert "Non-deterministic" in status.output


def test_unsupported_actions_fail_clearly(engine: DurableEngine) -> None:
    engine.start_new("unsupported", "u1")
    engine.run_until_idle()

    status = engine.get_status("u1")
    assert status is not None
    assert status.runtime_status == "Failed"
    assert "CALL_SUB_ORCHESTRATOR" in status.output


def test_blueprint_registered_functions_run_unchanged(tmp_path: Path, clock: FakeClock) -> None:
    bp = df.Blueprint()

    @bp.orchestration_trigger(context_name="context")  # type: ignore[untyped-decorator]
    def bp_orchestrator(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
        doubled = yield context.call_activity("bp_double", context.get_input())
        return doubled

    @bp.activity_trigger(input_name="value")  # type: ignore[untyped-decorator]
    def bp_double(value: int) -> int:
        return value * 2

    eng = DurableEngine(tmp_path / "bp.db", clock, {"bp_orchestrator": bp_orchestrator}, {"bp_double": bp_double})
    try:
        eng.start_new("bp_orchestrator", "b1", 4)
        eng.run_until_idle()
        status = eng.get_status("b1")
        assert status is not None
        assert (status.runtime_status, status.output) == ("Completed", 8)
    finally:
        eng.close()


def test_max_episodes_bounds_one_call(engine: DurableEngine) -> None:
    engine.start_new("chain", "m1", 0)
    assert engine.run_until_idle(max_episodes=2) == 2
    assert status_of(engine, "m1") == "Running"
    engine.run_until_idle()
    assert status_of(engine, "m1") == "Completed"
