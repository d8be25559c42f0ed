"""The embedded message broker on SQLite.

It reproduces the Azure Service Bus semantics the coordinator depends on, so that code proven
on the embedded runtime behaves the same against a real namespace: topics with filtered
subscriptions, duplicate detection on ``MessageId``, scheduled delivery, peek-lock with
redelivery on lock expiry, ``maxDeliveryCount`` and dead-lettering, and the Standard-tier
size limit. Behaviour Service Bus does not offer is deliberately absent, so nothing here can
be relied on that the cloud would not honour.

A receiver must never poll an empty broker ("idle means idle"): ``wait_for_message`` sleeps on
a condition that publishers signal, and wakes by itself only when a scheduled message falls
due or a lock runs out. The condition is per process; another process sharing the file sees
the messages but is not woken by them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gigafactory.messages import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from gigafactory.messages import MessageTooLarge as MessageTooLarge
from gigafactory.messages import check_size
from gigafactory.messages import serialized_size as serialized_size
from gigafactory.ports import BusMessage, Clock, Delivery

MAX_LOCK_DURATION = timedelta(minutes=5)
"""Service Bus refuses longer locks; allowing them here would hide a design that needs them."""

QUEUE_SUBSCRIPTION = "$default"
"""The implicit subscription of a queue, which is modelled as a topic with one subscription."""

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('topic', 'queue'))
);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    rule TEXT NOT NULL,
    max_delivery_count INTEGER,
    PRIMARY KEY (topic, name)
);
CREATE TABLE IF NOT EXISTS duplicates (
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seen_us INTEGER NOT NULL,
    PRIMARY KEY (topic, message_id)
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    subscription TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    properties TEXT NOT NULL,
    content_type TEXT NOT NULL,
    enqueued_us INTEGER NOT NULL,
    visible_us INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT UNIQUE,
    locked_until_us INTEGER,
    lock_us INTEGER,
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dead')),
    dead_reason TEXT,
    dead_description TEXT,
    dead_us INTEGER
);
CREATE INDEX IF NOT EXISTS messages_ready
    ON messages (topic, subscription, state, visible_us);
"""


class LockLost(Exception):
    """The lock expired or never existed (Service Bus: ``MessageLockLostError``).

    The message may already be with another receiver, so whatever the caller did must be
    safe to happen twice; that is why every handler fences on ``(job_id, attempt, status)``.
    """


class EntityNotFound(LookupError):
    """A topic, queue or subscription that was never created (``MessagingEntityNotFound``)."""


@dataclass(frozen=True)
class ReceivedMessage:
    """A peek-locked message. Settle it with its ``lock_token`` before ``locked_until``."""

    lock_token: str
    message_id: str
    body: dict[str, Any]
    application_properties: Mapping[str, str | int]
    delivery_count: int
    enqueued_time: datetime
    locked_until: datetime
    sequence_number: int
    content_type: str = "application/json"


@dataclass(frozen=True)
class DeadLetter:
    """A message parked in a subscription's dead-letter queue, with why it was parked."""

    message_id: str
    body: dict[str, Any]
    properties: Mapping[str, str | int]
    reason: str
    description: str
    delivery_count: int
    enqueued_time: datetime | None = None
    dead_lettered_time: datetime | None = None


@dataclass(frozen=True)
class MessageCounts:
    """The counts Service Bus reports per subscription: locked messages are still active."""

    active: int
    scheduled: int
    dead_letter: int = 0


def _to_us(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"{value!r} must be timezone-aware")
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _check_lock_duration(value: timedelta) -> timedelta:
    if not timedelta(0) < value <= MAX_LOCK_DURATION:
        raise ValueError(f"lock duration {value} must be positive and at most {MAX_LOCK_DURATION}")
    return value


def _rule_json(rule: Mapping[str, str | int] | None) -> str:
    return json.dumps(dict(rule or {}), sort_keys=True)


def _matches(rule: Mapping[str, Any], properties: Mapping[str, Any]) -> bool:
    """The equality subset of a SQL filter: ``a = 'x' AND b = 2``.

    Types matter as they do in a Service Bus SQL filter: the string ``'2'`` is not ``2``.
    """
    for key, wanted in rule.items():
        if key not in properties:
            return False
        actual = properties[key]
        if type(actual) is not type(wanted) or actual != wanted:
            return False
    return True


class LocalBus:
    """A topic/subscription broker in one SQLite file, safe to share between threads.

    One connection, guarded by one lock; every read-modify-write runs in a ``BEGIN IMMEDIATE``
    transaction, so several processes on the same file (a restart while the old process is
    still dying, say) cannot hand the same message to two receivers.
    """

    def __init__(
        self,
        db_path: str | Path,
        clock: Clock,
        duplicate_window: timedelta = timedelta(minutes=10),
        lock_duration: timedelta = timedelta(seconds=60),
        max_delivery_count: int = 10,
    ) -> None:
        if duplicate_window <= timedelta(0):
            raise ValueError("duplicate_window must be positive")
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        self._clock = clock
        self._duplicate_window_us = duplicate_window // timedelta(microseconds=1)
        self._lock_duration = _check_lock_duration(lock_duration)
        self._max_delivery_count = max_delivery_count
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._changes = 0
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LocalBus:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- provisioning ------------------------------------------------------------------------

    def create_topic(self, name: str) -> None:
        """Idempotent, like a Bicep deployment: provisioning runs at every start."""
        with self._lock, self._transaction():
            self._ensure_entity(name, "topic")

    def create_queue(self, name: str, max_delivery_count: int | None = None) -> None:
        """A queue is a topic whose only subscription, ``$default``, takes every message."""
        with self._lock, self._transaction():
            self._ensure_entity(name, "queue")
            self._ensure_subscription(name, QUEUE_SUBSCRIPTION, None, max_delivery_count)

    def create_subscription(
        self,
        topic: str,
        name: str,
        rule: Mapping[str, str | int] | None = None,
        *,
        max_delivery_count: int | None = None,
    ) -> None:
        """Create the topic if needed, then the subscription, or bring an existing one to the
        given rule and settings (declarative, as infrastructure code is).

        A changed rule applies to later messages only: Service Bus routes at publish time.
        """
        with self._lock, self._transaction():
            self._ensure_entity(topic, "topic")
            self._ensure_subscription(topic, name, rule, max_delivery_count)

    def _ensure_entity(self, name: str, kind: str) -> None:
        row = self._db.execute("SELECT kind FROM entities WHERE name = ?", (name,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO entities (name, kind) VALUES (?, ?)", (name, kind))
        elif row[0] != kind:
            raise ValueError(f"{name!r} exists already as a {row[0]}, not a {kind}")

    def _ensure_subscription(
        self,
        topic: str,
        name: str,
        rule: Mapping[str, str | int] | None,
        max_delivery_count: int | None,
    ) -> None:
        if max_delivery_count is not None and max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        self._db.execute(
            "INSERT INTO subscriptions (topic, name, rule, max_delivery_count) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (topic, name) DO UPDATE"
            " SET rule = excluded.rule, max_delivery_count = excluded.max_delivery_count",
            (topic, name, _rule_json(rule), max_delivery_count),
        )

    # -- sending -----------------------------------------------------------------------------

    def publish(self, topic: str, message: BusMessage) -> bool:
        """Send one message; ``False`` when it was a duplicate and was dropped.

        A duplicate is accepted without error, as Service Bus accepts it, because the sender
        cannot tell a lost acknowledgement from a lost message and must be free to resend.
        """
        check_size(message)
        body = json.dumps(message.body)
        properties = json.dumps(dict(message.application_properties))
        scheduled = message.scheduled_enqueue_time
        scheduled_us = _to_us(scheduled) if scheduled is not None else None
        with self._lock:
            now_us = _to_us(self._clock.now())
            with self._transaction():
                if self._entity_kind(topic) is None:
                    raise EntityNotFound(f"topic or queue {topic!r} does not exist")
                if self._is_duplicate(topic, message.message_id, now_us):
                    return False
                visible_us = max(now_us, scheduled_us) if scheduled_us is not None else now_us
                copies = 0
                subscriptions = self._db.execute(
                    "SELECT name, rule FROM subscriptions WHERE topic = ?", (topic,)
                ).fetchall()
                for name, rule in subscriptions:
                    if not _matches(json.loads(rule), message.application_properties):
                        continue
                    self._db.execute(
                        "INSERT INTO messages (topic, subscription, message_id, body, properties,"
                        " content_type, enqueued_us, visible_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            topic,
                            name,
                            message.message_id,
                            body,
                            properties,
                            message.content_type,
                            visible_us,
                            visible_us,
                        ),
                    )
                    copies += 1
            if copies:
                self._signal()
            return True

    def _is_duplicate(self, topic: str, message_id: str, now_us: int) -> bool:
        """Record ``message_id`` unless it was accepted within the window.

        Only accepted messages open a window; a dropped duplicate does not extend it, which is
        how Service Bus keeps its duplicate-detection history.
        """
        horizon = now_us - self._duplicate_window_us
        self._db.execute("DELETE FROM duplicates WHERE topic = ? AND seen_us <= ?", (topic, horizon))
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO duplicates (topic, message_id, seen_us) VALUES (?, ?, ?)",
            (topic, message_id, now_us),
        ).rowcount
        return inserted == 0

    # -- receiving ---------------------------------------------------------------------------

    def receive(
        self,
        topic: str,
        subscription: str,
        max_messages: int = 1,
        lock_duration: timedelta | None = None,
    ) -> list[ReceivedMessage]:
        """Peek-lock up to ``max_messages`` visible messages, oldest first; never blocks.

        A message whose next delivery would exceed the subscription's ``max_delivery_count``
        goes to the dead-letter queue instead of to the caller, as on Service Bus.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        duration = _check_lock_duration(self._lock_duration if lock_duration is None else lock_duration)
        duration_us = duration // timedelta(microseconds=1)
        with self._lock:
            now_us = _to_us(self._clock.now())
            with self._transaction():
                limit = self._subscription_limit(topic, subscription)
                self._dead_letter_exhausted(topic, subscription, limit, now_us)
                rows = self._db.execute(
                    "SELECT seq, message_id, body, properties, content_type, enqueued_us,"
                    " delivery_count FROM messages"
                    " WHERE topic = ? AND subscription = ? AND state = 'active'"
                    " AND visible_us <= ? AND (locked_until_us IS NULL OR locked_until_us <= ?)"
                    " ORDER BY enqueued_us, seq LIMIT ?",
                    (topic, subscription, now_us, now_us, max_messages),
                ).fetchall()
                received: list[ReceivedMessage] = []
                for seq, message_id, body, properties, content_type, enqueued_us, count in rows:
                    token = str(uuid.uuid4())
                    locked_until_us = now_us + duration_us
                    self._db.execute(
                        "UPDATE messages SET delivery_count = ?, lock_token = ?,"
                        " locked_until_us = ?, lock_us = ? WHERE seq = ?",
                        (count + 1, token, locked_until_us, duration_us, seq),
                    )
                    received.append(
                        ReceivedMessage(
                            lock_token=token,
                            message_id=message_id,
                            body=json.loads(body),
                            application_properties=json.loads(properties),
                            delivery_count=count + 1,
                            enqueued_time=_from_us(enqueued_us),
                            locked_until=_from_us(locked_until_us),
                            sequence_number=seq,
                            content_type=content_type,
                        )
                    )
            return received

    def _subscription_limit(self, topic: str, subscription: str) -> int:
        row = self._db.execute(
            "SELECT max_delivery_count FROM subscriptions WHERE topic = ? AND name = ?",
            (topic, subscription),
        ).fetchone()
        if row is None:
            raise EntityNotFound(f"subscription {topic!r}/{subscription!r} does not exist")
        return int(row[0]) if row[0] is not None else self._max_delivery_count

    def _dead_letter_exhausted(self, topic: str, subscription: str, limit: int, now_us: int) -> None:
        """Park every unlocked message that has used up its deliveries.

        Done lazily, when the subscription is next read, because a lock that runs out is an
        event in time, not a write anyone performs.
        """
        self._db.execute(
            "UPDATE messages SET state = 'dead', dead_reason = ?, dead_description = ?,"
            " dead_us = ?, lock_token = NULL, locked_until_us = NULL"
            " WHERE topic = ? AND subscription = ? AND state = 'active'"
            " AND (locked_until_us IS NULL OR locked_until_us <= ?) AND delivery_count >= ?",
            (
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {limit} delivery attempts.",
                now_us,
                topic,
                subscription,
                now_us,
                limit,
            ),
        )

    # -- settling ----------------------------------------------------------------------------

    def complete(self, lock_token: str) -> None:
        """The message is done with and leaves the subscription for good."""
        with self._lock, self._transaction():
            seq, _, _, _ = self._locked(lock_token)
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def abandon(self, lock_token: str) -> None:
        """Hand the message back at once, its delivery still counted.

        On its last allowed delivery it goes to the dead-letter queue instead, as on Service
        Bus, so a poison message stops circulating without waiting for another receive.
        """
        with self._lock:
            with self._transaction():
                seq, topic, subscription, count = self._locked(lock_token)
                limit = self._subscription_limit(topic, subscription)
                if count >= limit:
                    self._park(
                        seq,
                        MAX_DELIVERY_COUNT_EXCEEDED,
                        f"Message could not be consumed after {limit} delivery attempts.",
                    )
                    return
                self._db.execute(
                    "UPDATE messages SET lock_token = NULL, locked_until_us = NULL WHERE seq = ?",
                    (seq,),
                )
            self._signal()

    def interrupt(self) -> None:
        """Wake every waiting receiver now (shutdown): they re-check why they wait."""
        with self._lock:
            self._signal()

    def release_locks(self) -> int:
        """Expire every lock now: for a process that owns the file alone and restarts, every
        lock belongs to its dead predecessor, so waiting out the lock duration gains nothing.
        Deliveries stay counted, exactly as when the locks would have expired."""
        with self._lock:
            with self._transaction():
                cur = self._db.execute(
                    "UPDATE messages SET lock_token = NULL, locked_until_us = NULL WHERE lock_token IS NOT NULL"
                )
            self._signal()
        return int(cur.rowcount)

    def dead_letter(self, lock_token: str, reason: str, description: str = "") -> None:
        """Park a message the receiver knows it can never process, with the reason why, so an
        operator can inspect it instead of it being redelivered until the count runs out."""
        with self._lock, self._transaction():
            seq, _, _, _ = self._locked(lock_token)
            self._park(seq, reason, description)

    def renew_lock(self, lock_token: str) -> datetime:
        """Extend the lock by its original duration from now; returns the new expiry."""
        with self._lock, self._transaction():
            seq, _, _, _ = self._locked(lock_token)
            lock_us = self._db.execute("SELECT lock_us FROM messages WHERE seq = ?", (seq,)).fetchone()[0]
            locked_until_us = _to_us(self._clock.now()) + int(lock_us)
            self._db.execute("UPDATE messages SET locked_until_us = ? WHERE seq = ?", (locked_until_us, seq))
            return _from_us(locked_until_us)

    def _locked(self, lock_token: str) -> tuple[int, str, str, int]:
        row = self._db.execute(
            "SELECT seq, topic, subscription, delivery_count, locked_until_us FROM messages"
            " WHERE lock_token = ? AND state = 'active'",
            (lock_token,),
        ).fetchone()
        if row is None or row[4] is None or row[4] <= _to_us(self._clock.now()):
            raise LockLost(f"the lock {lock_token!r} has expired or is unknown")
        return int(row[0]), str(row[1]), str(row[2]), int(row[3])

    def _park(self, seq: int, reason: str, description: str) -> None:
        self._db.execute(
            "UPDATE messages SET state = 'dead', dead_reason = ?, dead_description = ?,"
            " dead_us = ?, lock_token = NULL, locked_until_us = NULL WHERE seq = ?",
            (reason, description, _to_us(self._clock.now()), seq),
        )

    # -- inspecting --------------------------------------------------------------------------

    def dead_letters(self, topic: str, subscription: str) -> list[DeadLetter]:
        """The subscription's dead-letter queue, oldest parked first."""
        with self._lock:
            now_us = _to_us(self._clock.now())
            with self._transaction():
                limit = self._subscription_limit(topic, subscription)
                self._dead_letter_exhausted(topic, subscription, limit, now_us)
                rows = self._db.execute(
                    "SELECT message_id, body, properties, dead_reason, dead_description,"
                    " delivery_count, enqueued_us, dead_us FROM messages"
                    " WHERE topic = ? AND subscription = ? AND state = 'dead'"
                    " ORDER BY dead_us, seq",
                    (topic, subscription),
                ).fetchall()
        return [
            DeadLetter(
                message_id=message_id,
                body=json.loads(body),
                properties=json.loads(properties),
                reason=reason or "",
                description=description or "",
                delivery_count=count,
                enqueued_time=_from_us(enqueued_us),
                dead_lettered_time=_from_us(dead_us) if dead_us is not None else None,
            )
            for message_id, body, properties, reason, description, count, enqueued_us, dead_us in rows
        ]

    def pending_count(self, topic: str, subscription: str) -> MessageCounts:
        """Active (locked ones included), scheduled and dead-lettered, as Service Bus counts."""
        with self._lock:
            now_us = _to_us(self._clock.now())
            with self._transaction():
                limit = self._subscription_limit(topic, subscription)
                self._dead_letter_exhausted(topic, subscription, limit, now_us)
                active, scheduled, dead = self._db.execute(
                    "SELECT"
                    " COALESCE(SUM(state = 'active' AND visible_us <= ?), 0),"
                    " COALESCE(SUM(state = 'active' AND visible_us > ?), 0),"
                    " COALESCE(SUM(state = 'dead'), 0)"
                    " FROM messages WHERE topic = ? AND subscription = ?",
                    (now_us, now_us, topic, subscription),
                ).fetchone()
        return MessageCounts(active=int(active), scheduled=int(scheduled), dead_letter=int(dead))

    # -- waiting -----------------------------------------------------------------------------

    @property
    def changes(self) -> int:
        """A counter bumped whenever a message may have become receivable in this process.

        Read it before ``receive`` and pass it to ``wait(since=...)``, so a publish landing
        between the two is not slept through.
        """
        with self._lock:
            return self._changes

    def wait(self, timeout: float, since: int | None = None) -> bool:
        """Sleep until something is published or abandoned, or ``timeout`` seconds pass.

        For a loop serving several subscriptions; it does not wake for scheduled messages or
        lock expiries, so bound ``timeout`` by ``next_visible_at``. Returns whether woken.
        """
        with self._changed:
            start = self._changes if since is None else since
            return self._changed.wait_for(lambda: self._changes != start, timeout=timeout)

    def next_visible_at(self, topic: str, subscription: str) -> datetime | None:
        """When the next message becomes receivable: a time not after now when one already is,
        ``None`` when nothing is pending (then only a publish can change that)."""
        with self._lock:
            value = self._next_visible_us(topic, subscription)
        return _from_us(value) if value is not None else None

    def _next_visible_us(self, topic: str, subscription: str) -> int | None:
        limit = self._subscription_limit(topic, subscription)
        # A locked message on its last delivery will be dead-lettered, never redelivered.
        row = self._db.execute(
            "SELECT MIN(CASE WHEN locked_until_us IS NOT NULL AND locked_until_us > visible_us"
            " THEN locked_until_us ELSE visible_us END) FROM messages"
            " WHERE topic = ? AND subscription = ? AND state = 'active'"
            " AND delivery_count < ?",
            (topic, subscription, limit),
        ).fetchone()
        return int(row[0]) if row[0] is not None else None

    def wait_for_message(self, topic: str, subscription: str, timeout: float) -> bool:
        """Block until a message is receivable on the subscription or ``timeout`` seconds pass.

        Sleeps without touching the database until a publish or abandon signals, a scheduled
        message falls due, or a lock runs out. Returns whether a message is receivable.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now_us = _to_us(self._clock.now())
                due_us = self._next_visible_us(topic, subscription)
                if due_us is not None and due_us <= now_us:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if due_us is not None:
                    remaining = min(remaining, (due_us - now_us) / 1_000_000)
                self._changed.wait(remaining)

    # -- plumbing ----------------------------------------------------------------------------

    def _entity_kind(self, name: str) -> str | None:
        row = self._db.execute("SELECT kind FROM entities WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row is not None else None

    def _signal(self) -> None:
        """Wake waiters; the caller holds ``self._lock`` (the condition's lock)."""
        self._changes += 1
        self._changed.notify_all()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` takes the write lock up front, so a read-then-update (receive,
        duplicate check) cannot interleave with another process doing the same."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


class LocalSubscription:
    """One subscription of the embedded bus as a ``DispatchSource``."""

    def __init__(self, bus: LocalBus, topic: str, subscription: str) -> None:
        self._bus = bus
        self._topic = topic
        self._subscription = subscription

    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        received = self._bus.receive(self._topic, self._subscription, max_messages=max_messages)
        if not received and wait_seconds > 0:
            self._bus.wait_for_message(self._topic, self._subscription, timeout=wait_seconds)
            received = self._bus.receive(self._topic, self._subscription, max_messages=max_messages)
        return [Delivery(m.body if isinstance(m.body, dict) else {}, m.lock_token, dict(m.application_properties))
                for m in received]

    def complete(self, delivery: Delivery) -> None:
        self._bus.complete(delivery.handle)

    def abandon(self, delivery: Delivery) -> None:
        self._bus.abandon(delivery.handle)
