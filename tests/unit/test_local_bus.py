"""The embedded broker honours the Service Bus semantics the coordinator relies on.

Time is driven by a fake clock, so lock expiry, scheduled delivery and the duplicate window
are exercised in milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gigafactory.local.bus import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    MAX_MESSAGE_BYTES,
    QUEUE_SUBSCRIPTION,
    EntityNotFound,
    LocalBus,
    LockLost,
    MessageCounts,
    MessageTooLarge,
    serialized_size,
)
from gigafactory.ports import BusMessage

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LOCK = timedelta(seconds=60)


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._guard = threading.Lock()

    def now(self) -> datetime:
        with self._guard:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._guard:
            self._now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bus(tmp_path: Path, clock: FakeClock) -> Iterator[LocalBus]:
    with LocalBus(tmp_path / "bus.db", clock, lock_duration=LOCK) as local:
        local.create_subscription("dispatch", "all")
        yield local


def msg(message_id: str = "job-1:1", **properties: str | int) -> BusMessage:
    return BusMessage(message_id=message_id, body={"job_id": message_id}, application_properties=properties)


def test_publish_copies_to_every_subscription_whose_rule_matches(bus: LocalBus) -> None:
    bus.create_subscription("dispatch", "pool-a", {"pool": "a"})
    bus.create_subscription("dispatch", "pool-a-p2", {"pool": "a", "priority": 2})
    bus.create_subscription("dispatch", "pool-b", {"pool": "b"})

    bus.publish("dispatch", msg("m1", pool="a", priority=2))
    bus.publish("dispatch", msg("m2", pool="a", priority="2"))  # a string is not the int 2
    bus.publish("dispatch", msg("m3"))
    bus.create_subscription("dispatch", "late")  # routing happens at publish time

    def ids(subscription: str) -> list[str]:
        return [m.message_id for m in bus.receive("dispatch", subscription, max_messages=10)]

    assert ids("all") == ["m1", "m2", "m3"]
    assert ids("pool-a") == ["m1", "m2"]
    assert ids("pool-a-p2") == ["m1"]
    assert ids("pool-b") == []
    assert ids("late") == []


def test_create_subscription_is_idempotent(bus: LocalBus) -> None:
    bus.create_subscription("dispatch", "pool-a", {"pool": "a"})
    bus.create_subscription("dispatch", "pool-a", {"pool": "a"})
    bus.publish("dispatch", msg(pool="a"))
    assert len(bus.receive("dispatch", "pool-a", max_messages=10)) == 1


def test_queue_delivers_everything_to_its_default_subscription(bus: LocalBus) -> None:
    bus.create_queue("job-requests")
    bus.create_queue("job-requests")
    assert bus.publish("job-requests", msg(kind="anything"))
    assert [m.message_id for m in bus.receive("job-requests", QUEUE_SUBSCRIPTION)] == ["job-1:1"]
    with pytest.raises(ValueError):
        bus.create_subscription("job-requests", "extra")


def test_unknown_entities_are_refused(bus: LocalBus) -> None:
    with pytest.raises(EntityNotFound):
        bus.publish("no-such-topic", msg())
    with pytest.raises(EntityNotFound):
        bus.receive("dispatch", "no-such-subscription")


def test_duplicate_inside_window_is_dropped_and_after_it_accepted(bus: LocalBus, clock: FakeClock) -> None:
    bus.create_topic("job-events")
    assert bus.publish("dispatch", msg()) is True
    clock.advance(9 * 60)
    assert bus.publish("dispatch", msg()) is False
    assert bus.publish("job-events", msg()) is True  # the window is per topic
    assert bus.pending_count("dispatch", "all").active == 1

    clock.advance(61)  # ten minutes after the first send; the dropped one opened no window
    assert bus.publish("dispatch", msg()) is True
    assert bus.pending_count("dispatch", "all").active == 2


def test_scheduled_message_is_invisible_until_due(bus: LocalBus, clock: FakeClock) -> None:
    due = START + timedelta(minutes=5)
    bus.publish("dispatch", BusMessage("job-1:2", {"job_id": "job-1"}, scheduled_enqueue_time=due))

    assert bus.receive("dispatch", "all") == []
    assert bus.pending_count("dispatch", "all") == MessageCounts(active=0, scheduled=1)
    assert bus.next_visible_at("dispatch", "all") == due

    clock.advance(299)
    assert bus.receive("dispatch", "all") == []
    clock.advance(1)
    assert bus.pending_count("dispatch", "all") == MessageCounts(active=1, scheduled=0)
    [received] = bus.receive("dispatch", "all")
    assert received.message_id == "job-1:2"
    assert received.enqueued_time == due


def test_lock_hides_message_and_expiry_redelivers_it(bus: LocalBus, clock: FakeClock) -> None:
    bus.publish("dispatch", msg())
    [first] = bus.receive("dispatch", "all")
    assert first.delivery_count == 1
    assert first.locked_until == START + LOCK

    assert bus.receive("dispatch", "all") == []
    assert bus.pending_count("dispatch", "all").active == 1  # locked messages count as active
    assert bus.next_visible_at("dispatch", "all") == first.locked_until

    clock.advance(LOCK.total_seconds())
    [second] = bus.receive("dispatch", "all")
    assert (second.message_id, second.delivery_count) == (first.message_id, 2)
    assert second.lock_token != first.lock_token


def test_abandon_makes_message_visible_at_once_keeping_its_count(bus: LocalBus) -> None:
    bus.publish("dispatch", msg())
    [first] = bus.receive("dispatch", "all")
    bus.abandon(first.lock_token)
    [second] = bus.receive("dispatch", "all")
    assert second.message_id == first.message_id
    assert second.delivery_count == 2


def test_complete_removes_message(bus: LocalBus, clock: FakeClock) -> None:
    bus.publish("dispatch", msg())
    [received] = bus.receive("dispatch", "all")
    bus.complete(received.lock_token)
    clock.advance(LOCK.total_seconds() * 2)
    assert bus.receive("dispatch", "all") == []
    assert bus.pending_count("dispatch", "all") == MessageCounts(active=0, scheduled=0)
    assert bus.next_visible_at("dispatch", "all") is None
    with pytest.raises(LockLost):
        bus.complete(received.lock_token)


def test_dead_letter_parks_message_with_reason(bus: LocalBus, clock: FakeClock) -> None:
    bus.publish("dispatch", msg(pool="a"))
    [received] = bus.receive("dispatch", "all")
    bus.dead_letter(received.lock_token, "LaunchFailed", "no such container job")
    clock.advance(LOCK.total_seconds() * 2)

    assert bus.receive("dispatch", "all") == []
    [dead] = bus.dead_letters("dispatch", "all")
    assert (dead.message_id, dead.reason, dead.description) == ("job-1:1", "LaunchFailed", "no such container job")
    assert dead.body == {"job_id": "job-1:1"}
    assert dead.properties == {"pool": "a"}
    assert dead.delivery_count == 1
    assert bus.pending_count("dispatch", "all") == MessageCounts(active=0, scheduled=0, dead_letter=1)


def test_lock_expiring_past_max_delivery_count_dead_letters(bus: LocalBus, clock: FakeClock) -> None:
    bus.create_subscription("dispatch", "fragile", max_delivery_count=3)
    bus.publish("dispatch", msg())
    for attempt in (1, 2, 3):
        [received] = bus.receive("dispatch", "fragile")
        assert received.delivery_count == attempt
        clock.advance(LOCK.total_seconds())

    assert bus.receive("dispatch", "fragile") == []
    [dead] = bus.dead_letters("dispatch", "fragile")
    assert dead.reason == MAX_DELIVERY_COUNT_EXCEEDED == "MaxDeliveryCountExceeded"
    assert dead.delivery_count == 3
    assert bus.dead_letters("dispatch", "all") == []  # other subscriptions keep their copy


def test_abandon_on_last_delivery_dead_letters_at_default_max(bus: LocalBus) -> None:
    bus.publish("dispatch", msg())
    for attempt in range(1, 11):
        [received] = bus.receive("dispatch", "all")
        assert received.delivery_count == attempt
        bus.abandon(received.lock_token)

    assert bus.receive("dispatch", "all") == []
    [dead] = bus.dead_letters("dispatch", "all")
    assert (dead.reason, dead.delivery_count) == ("MaxDeliveryCountExceeded", 10)


def test_settling_after_lock_expiry_raises_lock_lost(bus: LocalBus, clock: FakeClock) -> None:
    bus.publish("dispatch", msg())
    [received] = bus.receive("dispatch", "all")
    clock.advance(50)
    renewed = bus.renew_lock(received.lock_token)
    assert renewed == START + timedelta(seconds=50) + LOCK
    clock.advance(59)
    bus.renew_lock(received.lock_token)  # still held thanks to the renewal
    clock.advance(LOCK.total_seconds())

    for settle in (bus.complete, bus.abandon, bus.renew_lock):
        with pytest.raises(LockLost):
            settle(received.lock_token)
    with pytest.raises(LockLost):
        bus.dead_letter(received.lock_token, "Late")
    with pytest.raises(LockLost):
        bus.complete("never-issued")
    [again] = bus.receive("dispatch", "all")  # nothing was settled by the failed attempts
    assert again.delivery_count == 2


def test_message_over_256_kb_is_refused(bus: LocalBus) -> None:
    overhead = serialized_size(BusMessage("big", {"blob": ""}))
    fits = BusMessage("big", {"blob": "x" * (MAX_MESSAGE_BYTES - overhead)})
    too_big = BusMessage("big", {"blob": "x" * (MAX_MESSAGE_BYTES - overhead + 1)})

    with pytest.raises(MessageTooLarge) as refused:
        bus.publish("dispatch", too_big)
    assert isinstance(refused.value, ValueError)
    assert str(MAX_MESSAGE_BYTES + 1) in str(refused.value)
    assert str(MAX_MESSAGE_BYTES) in str(refused.value)
    assert bus.pending_count("dispatch", "all").active == 0
    assert bus.publish("dispatch", fits) is True  # the refused send did not claim the id


def test_messages_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "bus.db"
    first = LocalBus(path, clock, lock_duration=LOCK)
    first.create_subscription("dispatch", "pool-a", {"pool": "a"})
    first.publish("dispatch", msg("locked", pool="a"))
    first.publish("dispatch", msg("waiting", pool="a"))
    [locked] = first.receive("dispatch", "pool-a")
    assert locked.message_id == "locked"
    first.close()  # the process dies holding a lock

    second = LocalBus(path, clock, lock_duration=LOCK)
    assert second.publish("dispatch", msg("waiting", pool="a")) is False  # dedup state survives
    assert [m.message_id for m in second.receive("dispatch", "pool-a", max_messages=5)] == ["waiting"]
    clock.advance(LOCK.total_seconds())
    [redelivered] = second.receive("dispatch", "pool-a")
    assert (redelivered.message_id, redelivered.delivery_count) == ("locked", 2)
    second.close()


def test_concurrent_publishers_of_one_id_deliver_it_once(bus: LocalBus) -> None:
    start = threading.Barrier(10)
    results: list[bool] = []

    def send() -> None:
        start.wait()
        results.append(bus.publish("dispatch", msg("job-7:1")))

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 9 + [True]
    assert [m.message_id for m in bus.receive("dispatch", "all", max_messages=20)] == ["job-7:1"]


def test_concurrent_receivers_never_share_a_message(bus: LocalBus) -> None:
    for n in range(40):
        bus.publish("dispatch", msg(f"job-{n}:1"))
    got: list[str] = []
    guard = threading.Lock()

    def drain() -> None:
        while batch := bus.receive("dispatch", "all", max_messages=3):
            with guard:
                got.extend(m.message_id for m in batch)

    threads = [threading.Thread(target=drain) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == sorted(f"job-{n}:1" for n in range(40))


def test_waiting_receiver_sleeps_without_querying_and_wakes_on_publish(bus: LocalBus) -> None:
    statements: list[str] = []
    bus._db.set_trace_callback(statements.append)  # observe the broker's own connection
    assert bus.wait_for_message("dispatch", "all", timeout=0) is False
    one_look = len(statements)
    statements.clear()
    began = time.monotonic()
    assert bus.wait_for_message("dispatch", "all", timeout=0.2) is False
    assert time.monotonic() - began >= 0.2
    assert len(statements) <= 2 * one_look  # a look on entry and on timeout, none in between
    bus._db.set_trace_callback(None)

    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(bus.wait_for_message("dispatch", "all", 5)))
    began = time.monotonic()
    waiter.start()
    time.sleep(0.05)
    bus.publish("dispatch", msg())
    waiter.join()
    assert woke == [True]
    assert time.monotonic() - began < 1


def test_wait_since_does_not_miss_a_publish_that_raced_ahead(bus: LocalBus) -> None:
    seen = bus.changes
    assert bus.receive("dispatch", "all") == []
    bus.publish("dispatch", msg())  # lands between the empty receive and the wait
    began = time.monotonic()
    assert bus.wait(5, since=seen) is True
    assert time.monotonic() - began < 0.5
    assert bus.wait(0.05) is False


def test_wait_for_message_wakes_when_a_scheduled_message_falls_due(tmp_path: Path) -> None:
    class SystemClock:
        def now(self) -> datetime:
            return datetime.now(UTC)

    with LocalBus(tmp_path / "bus.db", SystemClock()) as real_time:
        real_time.create_queue("q")
        due = datetime.now(UTC) + timedelta(seconds=0.15)
        real_time.publish("q", BusMessage("s", {}, scheduled_enqueue_time=due))
        began = time.monotonic()
        assert real_time.wait_for_message("q", QUEUE_SUBSCRIPTION, timeout=5) is True
        assert 0.1 <= time.monotonic() - began < 1
        assert len(real_time.receive("q", QUEUE_SUBSCRIPTION)) == 1


def test_release_locks_makes_a_dead_predecessors_messages_deliverable_at_once(tmp_path: Path) -> None:
    from gigafactory.local.clock import FakeClock

    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    first = LocalBus(tmp_path / "bus.db", clock)
    first.create_subscription("dispatch", "launcher")
    first.publish("dispatch", BusMessage("m-1", {"n": 1}))
    (held,) = first.receive("dispatch", "launcher")
    first.close()  # the process died holding the lock

    second = LocalBus(tmp_path / "bus.db", clock)
    assert second.receive("dispatch", "launcher") == []  # still locked for its full duration
    assert second.release_locks() == 1
    (again,) = second.receive("dispatch", "launcher")
    assert again.message_id == "m-1" and again.delivery_count == held.delivery_count + 1
    second.close()
