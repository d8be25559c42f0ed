"""An in-process Durable Functions engine for the embedded runtime.

The embedded runtime must run the *same* orchestrator generators the Azure app registers, with the
same replay semantics, or a lifecycle bug would only show up in the cloud. So this engine does not
interpret orchestrator code itself: for every episode it builds the orchestration-trigger payload
the Durable extension would send (a history of events in the extension's JSON shape), hands it to
the ``azure-functions-durable`` SDK's own replay (``df.Orchestrator(fn).handle``), and then plays
the extension's part on the answer: it schedules the new actions, records their outcomes as
history events, and decides the instance's status.

Behaviour deliberately mirrors the extension (Azure Storage backend) where that matters to
orchestrator authors:

* Task ids follow the SDK's sequence numbering (activities, timers and continue-as-new take an id;
  waiting for an external event does not), and ``CallActivityWithRetry`` retries through a timer
  per failure exactly as the SDK's replay expects (including the extra timer after the last try).
* External events go to a per-instance queue; events raised before anyone waits end up in history
  and the SDK buffers them. Events still queued when an execution continues-as-new are delivered
  to the new execution; events already delivered to the old execution and never awaited are
  dropped, as the extension does for out-of-process languages (it cannot preserve them).
* A cancelled timer never fires. An orchestrator that returns while one of its timers is neither
  fired nor cancelled stays ``Running`` until that timer fires, as the Durable Task Framework does.
* Replay is checked for determinism: if the replayed actions differ from the ones recorded, the
  instance fails instead of silently diverging.
* Activities run at least once: one interrupted by a crash runs again after restart. An activity
  already scheduled still runs when its orchestration ends; its result is then discarded.

Processing is one queued message per episode, oldest first, so a given interleaving of events,
activity results and timers always replays the same way, and the SDK's retry-id bookkeeping stays
in step with ours. State lives in SQLite so a new engine on the same file resumes every instance.
Only one engine should process a given file at a time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import azure.durable_functions as df
from azure.durable_functions.models.actions.ActionType import ActionType
from azure.durable_functions.models.DurableOrchestrationContext import DurableOrchestrationContext
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType

from gigafactory.local.clock import Clock

try:  # Serialise payloads exactly as the SDK does, so custom objects round-trip the same way.
    from azure.durable_functions.models.utils.df_serialization import df_dumps as _sdk_dumps
    from azure.durable_functions.models.utils.df_serialization import df_loads as _sdk_loads
except ImportError:  # pragma: no cover - older SDKs
    _sdk_dumps = json.dumps
    _sdk_loads = json.loads

__all__ = ["Clock", "DurableEngine", "InstanceStatus"]

PENDING: Final = "Pending"
RUNNING: Final = "Running"
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
TERMINATED: Final = "Terminated"
_ACTIVE: Final = (PENDING, RUNNING)

# The replay protocol the extension negotiates with current SDKs: one flat action list per
# execution, compound tasks (task_any/task_all) as nested actions.
_UPPER_SCHEMA_VERSION: Final = 1
_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_OUT_OF_PROC_MARKER: Final = "\n\n$OutOfProcData$:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS durable_instances (
    instance_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    runtime_status TEXT NOT NULL,
    input TEXT,
    output TEXT,
    custom_status TEXT,
    created_at TEXT NOT NULL,
    last_updated_at TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    next_event_id INTEGER NOT NULL,
    action_log TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS durable_history (
    instance_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE TABLE IF NOT EXISTS durable_messages (
    msg_id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution_id TEXT,
    kind TEXT NOT NULL,
    ready_at TEXT NOT NULL,
    timer_id INTEGER,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS durable_messages_ready ON durable_messages (ready_at, msg_id);
CREATE INDEX IF NOT EXISTS durable_messages_instance ON durable_messages (instance_id);
CREATE TABLE IF NOT EXISTS durable_activities (
    work_id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    input TEXT,
    retry TEXT
);
"""

# Message kinds in the per-instance queue. ``start`` always goes first so that events queued for a
# brand-new execution (after start_new or continue-as-new) find it started.
_START: Final = "start"
_EVENT: Final = "event"
_RESULT: Final = "result"
_TIMER: Final = "timer"


@dataclass(frozen=True)
class InstanceStatus:
    """What a Durable client's ``get_status`` would tell about an instance."""

    instance_id: str
    name: str
    runtime_status: str
    input: Any
    output: Any
    custom_status: Any
    created_at: datetime
    last_updated_at: datetime


def _ts(dt: datetime) -> str:
    # Fixed-width UTC strings: the extension's format, and they sort chronologically in SQL.
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime(_TS_FORMAT)


def _parse_ts(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _event(event_type: HistoryEventType, timestamp: str, event_id: int = -1, **fields: Any) -> dict[str, Any]:
    return {"EventType": int(event_type), "EventId": event_id, "IsPlayed": False, "Timestamp": timestamp, **fields}


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _flatten(actions: Any) -> list[dict[str, Any]]:
    """Atomic actions in the order the SDK numbered them (compound actions expanded depth-first)."""
    flat: list[dict[str, Any]] = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for child in item:
                walk(child)
        elif isinstance(item, dict):
            if "compoundActions" in item:
                walk(item["compoundActions"])
            else:
                flat.append(item)

    walk(actions)
    return flat


def _signature(action: Mapping[str, Any]) -> list[Any]:
    kind = action.get("actionType")
    if kind in (ActionType.CALL_ACTIVITY, ActionType.CALL_ACTIVITY_WITH_RETRY):
        return [kind, action.get("functionName")]
    if kind == ActionType.CREATE_TIMER:
        return [kind, action.get("fireAt")]
    if kind == ActionType.WAIT_FOR_EXTERNAL_EVENT:
        return [kind, action.get("externalEventName")]
    return [kind]


def _action_label(kind: Any) -> str:
    try:
        return str(ActionType(kind).name)
    except ValueError:
        return repr(kind)


def _unwrap_orchestrator(obj: Callable[..., Any]) -> tuple[Callable[..., Any], type | None]:
    """Accept a plain generator function or what ``df.Blueprint.orchestration_trigger`` returned."""
    fn: Any = getattr(getattr(obj, "_function", None), "_func", None) or obj
    input_type = getattr(fn, "_df_input_type", None)
    return getattr(fn, "orchestrator_function", fn), input_type


def _unwrap_activity(obj: Callable[..., Any]) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(getattr(obj, "_function", None), "_func", None) or obj
    return fn


@dataclass
class _Snapshot:
    """An instance as read at the start of an episode, plus the message the episode consumes."""

    msg_id: int
    kind: str
    payload: dict[str, Any]
    timer_id: int | None
    instance_id: str
    name: str
    execution_id: str
    input: str | None
    custom_status: str | None
    next_event_id: int
    action_log: list[list[Any]]
    history: list[dict[str, Any]]


@dataclass
class _Decision:
    """Everything an episode wants written, applied in one transaction."""

    events: list[dict[str, Any]]
    next_event_id: int
    action_log: list[list[Any]]
    status: str
    custom_status: str | None
    output: str | None = None
    activities: list[tuple[int, str, str | None, dict[str, Any] | None]] = field(default_factory=list)
    timers: list[tuple[int, str, dict[str, Any] | None]] = field(default_factory=list)
    cancelled_timers: set[int] = field(default_factory=set)
    continue_as_new: bool = False
    new_input: str | None = None
    wants_completion: bool = False


class DurableEngine:
    """Runs Durable orchestrations in-process on SQLite, driven by ``run_until_idle``.

    Safe to call from several threads: one lock guards the database connection, a second one makes
    sure only one thread at a time runs orchestrator and activity code.
    """

    def __init__(
        self,
        db_path: str | Path,
        clock: Clock,
        orchestrators: Mapping[str, Callable[..., Any]],
        activities: Mapping[str, Callable[[Any], Any]],
    ) -> None:
        self._clock = clock
        self._orchestrators = {name: _unwrap_orchestrator(fn) for name, fn in orchestrators.items()}
        self._activities = {name: _unwrap_activity(fn) for name, fn in activities.items()}
        self._lock = threading.RLock()
        self._run_lock = threading.Lock()
        self._runner: int | None = None
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self) -> str:
        return _ts(self._clock.now())

    @staticmethod
    def _append_history(db: sqlite3.Connection, instance_id: str, events: list[dict[str, Any]]) -> None:
        (last,) = db.execute(
            "SELECT COALESCE(MAX(seq), -1) FROM durable_history WHERE instance_id=?", (instance_id,)
        ).fetchone()
        db.executemany(
            "INSERT INTO durable_history (instance_id, seq, event) VALUES (?, ?, ?)",
            [(instance_id, last + 1 + i, json.dumps(e)) for i, e in enumerate(events)],
        )

    @staticmethod
    def _enqueue(
        db: sqlite3.Connection,
        instance_id: str,
        execution_id: str | None,
        kind: str,
        ready_at: str,
        payload: dict[str, Any],
        timer_id: int | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO durable_messages (instance_id, execution_id, kind, ready_at, timer_id, payload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (instance_id, execution_id, kind, ready_at, timer_id, json.dumps(payload)),
        )

    # -- client side ---------------------------------------------------------------------------

    def start_new(self, name: str, instance_id: str, input: Any = None) -> bool:
        """Start ``name`` as ``instance_id``; False if that instance is already pending or running.

        Unlike the Azure client (which fails on a running fixed id), this answers False so callers
        can use a fixed instance id as an idempotency key. A finished instance starts over fresh.
        """
        if name not in self._orchestrators:
            raise KeyError(f"orchestrator {name!r} is not registered")
        serialized = None if input is None else _sdk_dumps(input)
        now = self._now()
        with self._tx() as db:
            row = db.execute(
                "SELECT runtime_status FROM durable_instances WHERE instance_id=?", (instance_id,)
            ).fetchone()
            if row is not None and row[0] in _ACTIVE:
                return False
            db.execute("DELETE FROM durable_history WHERE instance_id=?", (instance_id,))
            db.execute("DELETE FROM durable_messages WHERE instance_id=?", (instance_id,))
            execution_id = uuid.uuid4().hex
            db.execute(
                "INSERT OR REPLACE INTO durable_instances (instance_id, name, runtime_status, input, output,"
                " custom_status, created_at, last_updated_at, execution_id, next_event_id, action_log)"
                " VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, 0, '[]')",
                (instance_id, name, PENDING, serialized, now, now, execution_id),
            )
            self._enqueue(db, instance_id, execution_id, _START, now, {})
        return True

    def raise_event(self, instance_id: str, event_name: str, data: Any = None) -> bool:
        """Queue an external event; False (never an error) if the instance is missing or finished."""
        now = self._now()
        event = _event(HistoryEventType.EVENT_RAISED, now, Name=event_name, Input=_sdk_dumps(data))
        with self._tx() as db:
            row = db.execute(
                "SELECT runtime_status FROM durable_instances WHERE instance_id=?", (instance_id,)
            ).fetchone()
            if row is None or row[0] not in _ACTIVE:
                return False
            # No execution id: the event belongs to whichever execution is current when delivered.
            self._enqueue(db, instance_id, None, _EVENT, now, {"event": event})
        return True

    def get_status(self, instance_id: str) -> InstanceStatus | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, runtime_status, input, output, custom_status, created_at, last_updated_at"
                " FROM durable_instances WHERE instance_id=?",
                (instance_id,),
            ).fetchone()
        if row is None:
            return None
        name, status, input_, output, custom, created, updated = row
        return InstanceStatus(
            instance_id=instance_id,
            name=name,
            runtime_status=status,
            input=_json_or_none(input_),
            output=_json_or_none(output),
            custom_status=_json_or_none(custom),
            created_at=_parse_ts(created),
            last_updated_at=_parse_ts(updated),
        )

    def get_history(self, instance_id: str) -> list[dict[str, Any]]:
        """The current execution's history in the extension's JSON shape, for diagnostics."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM durable_history WHERE instance_id=? ORDER BY seq", (instance_id,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def terminate(self, instance_id: str, reason: str) -> bool:
        """Stop a pending or running instance now; its pending timers and queued events are dropped."""
        now = self._now()
        with self._tx() as db:
            row = db.execute(
                "SELECT runtime_status FROM durable_instances WHERE instance_id=?", (instance_id,)
            ).fetchone()
            if row is None or row[0] not in _ACTIVE:
                return False
            db.execute("DELETE FROM durable_messages WHERE instance_id=?", (instance_id,))
            self._append_history(db, instance_id, [_event(HistoryEventType.EXECUTION_TERMINATED, now, Input=reason)])
            db.execute(
                "UPDATE durable_instances SET runtime_status=?, output=?, last_updated_at=? WHERE instance_id=?",
                (TERMINATED, json.dumps(reason), now, instance_id),
            )
        return True

    def next_timer_due(self) -> datetime | None:
        """When the earliest pending durable timer fires, so a runtime loop knows how long to sleep."""
        with self._lock:
            (earliest,) = self._db.execute(
                "SELECT MIN(ready_at) FROM durable_messages WHERE kind=?", (_TIMER,)
            ).fetchone()
        return None if earliest is None else _parse_ts(earliest)

    def close(self) -> None:
        if self._runner == threading.get_ident():
            raise RuntimeError("close() called from inside an activity")
        with self._run_lock, self._lock:
            self._db.close()

    # -- worker side ---------------------------------------------------------------------------

    def run_until_idle(self, max_episodes: int = 10_000) -> int:
        """Process ready work in the caller's thread until none is left; returns items processed.

        Ready work is: activities waiting to run, and queued messages (starts, external events,
        activity results, timers whose fire time is not after the clock's now). A call made from
        inside an activity returns 0 at once rather than re-entering the loop.
        """
        if self._runner == threading.get_ident():
            return 0
        with self._run_lock:
            self._runner = threading.get_ident()
            try:
                processed = 0
                while processed < max_episodes:
                    if self._run_one_activity():
                        processed += 1
                        continue
                    outcome = self._run_one_episode()
                    if outcome is None:
                        break
                    if outcome:
                        processed += 1
                return processed
            finally:
                self._runner = None

    def _run_one_activity(self) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT work_id, instance_id, execution_id, task_id, name, input, retry"
                " FROM durable_activities ORDER BY work_id LIMIT 1"
            ).fetchone()
        if row is None:
            return False
        work_id, instance_id, execution_id, task_id, name, input_, retry = row
        fn = self._activities.get(name)
        try:
            if fn is None:
                raise LookupError(f"activity {name!r} is not registered")
            result = _sdk_dumps(fn(None if input_ is None else _sdk_loads(input_)))
        except Exception as exc:
            event = _event(
                HistoryEventType.TASK_FAILED,
                self._now(),
                TaskScheduledId=task_id,
                Reason=f"Activity function '{name}' failed: {type(exc).__name__}: {exc}",
                Details=traceback.format_exc(),
            )
        else:
            event = _event(HistoryEventType.TASK_COMPLETED, self._now(), TaskScheduledId=task_id, Result=result)
        with self._tx() as db:
            # Result and removal of the work item commit together: a crash before this line means
            # the activity runs again (at least once); after it, exactly one result is queued.
            if db.execute("DELETE FROM durable_activities WHERE work_id=?", (work_id,)).rowcount:
                payload = {"event": event, "retry": None if retry is None else json.loads(retry)}
                self._enqueue(db, instance_id, execution_id, _RESULT, event["Timestamp"], payload)
        return True

    def _claim(self, now: str) -> _Snapshot | bool | None:
        """The next message and its instance; False if it was stale and dropped; None if idle."""
        with self._tx() as db:
            msg = db.execute(
                "SELECT msg_id, instance_id, execution_id, kind, timer_id, payload FROM durable_messages"
                " WHERE ready_at <= ? ORDER BY kind != ?, ready_at, msg_id LIMIT 1",
                (now, _START),
            ).fetchone()
            if msg is None:
                return None
            msg_id, instance_id, msg_execution, kind, timer_id, payload = msg
            inst = db.execute(
                "SELECT name, runtime_status, execution_id, input, custom_status, next_event_id, action_log"
                " FROM durable_instances WHERE instance_id=?",
                (instance_id,),
            ).fetchone()
            stale = inst is None or inst[1] not in _ACTIVE or (msg_execution is not None and msg_execution != inst[2])
            if stale:
                db.execute("DELETE FROM durable_messages WHERE msg_id=?", (msg_id,))
                return False
            history = [
                json.loads(r[0])
                for r in db.execute(
                    "SELECT event FROM durable_history WHERE instance_id=? ORDER BY seq", (instance_id,)
                )
            ]
        name, _, execution_id, input_, custom, next_event_id, action_log = inst
        return _Snapshot(
            msg_id=msg_id,
            kind=kind,
            payload=json.loads(payload),
            timer_id=timer_id,
            instance_id=instance_id,
            name=name,
            execution_id=execution_id,
            input=input_,
            custom_status=custom,
            next_event_id=next_event_id,
            action_log=json.loads(action_log),
            history=history,
        )

    def _run_one_episode(self) -> bool | None:
        now_dt = self._clock.now()
        now = _ts(now_dt)
        snap = self._claim(now)
        if not isinstance(snap, _Snapshot):
            return snap
        decision = self._decide(snap, now_dt)
        self._commit(snap, decision, now)
        return True

    # -- one episode ---------------------------------------------------------------------------

    def _new_events(self, snap: _Snapshot, now_dt: datetime, now: str) -> tuple[list[dict[str, Any]], _Decision]:
        """The events this message delivers, plus bookkeeping the SDK's replay expects to follow them."""
        decision = _Decision(
            events=[],
            next_event_id=snap.next_event_id,
            action_log=list(snap.action_log),
            status=RUNNING,
            custom_status=snap.custom_status,
        )
        new: list[dict[str, Any]] = []
        if snap.kind == _START:
            new.append(
                _event(
                    HistoryEventType.EXECUTION_STARTED,
                    now,
                    Name=snap.name,
                    Version="",
                    Input=snap.input,
                    OrchestrationInstance={"InstanceId": snap.instance_id, "ExecutionId": snap.execution_id},
                    ParentInstance=None,
                )
            )
        elif snap.kind in (_EVENT, _RESULT):
            event = snap.payload["event"]
            new.append(event)
            retry = snap.payload.get("retry")
            if retry is not None and event["EventType"] == HistoryEventType.TASK_FAILED:
                # The SDK answers every failed try with a retry timer numbered right here, even after
                # the last try (the Durable Task Framework waits once more before giving up).
                timer_id = decision.next_event_id
                decision.next_event_id += 1
                fire_at = _ts(now_dt + timedelta(milliseconds=retry["interval_ms"]))
                decision.events.append(_event(HistoryEventType.TIMER_CREATED, now, timer_id, FireAt=fire_at))
                decision.timers.append((timer_id, fire_at, retry))
        elif snap.kind == _TIMER:
            fire_at = snap.payload["fire_at"]
            new.append(_event(HistoryEventType.TIMER_FIRED, now, TimerId=snap.timer_id, FireAt=fire_at))
            retry = snap.payload.get("retry")
            if retry is not None and retry["attempt"] < retry["max"]:
                task_id = decision.next_event_id
                decision.next_event_id += 1
                decision.events.append(
                    _event(HistoryEventType.TASK_SCHEDULED, now, task_id, Name=retry["name"], Input=retry["input"])
                )
                decision.activities.append(
                    (task_id, retry["name"], retry["input"], {**retry, "attempt": retry["attempt"] + 1})
                )
        return new, decision

    def _decide(self, snap: _Snapshot, now_dt: datetime) -> _Decision:
        now = _ts(now_dt)
        new, decision = self._new_events(snap, now_dt, now)
        started = _event(HistoryEventType.ORCHESTRATOR_STARTED, now)
        played = [{**e, "IsPlayed": True} for e in snap.history]
        state, error = self._invoke(snap, [*played, started, *new], replaying=bool(played))
        decision.events = [started, *new, *decision.events]
        if state.get("customStatus") is not None:
            decision.custom_status = json.dumps(state["customStatus"])

        flat = _flatten(state.get("actions") or [])
        if error is None:
            error = self._schedule(snap, flat, decision, now)
        if error is None:
            for index, action in enumerate(flat):
                timer_id = decision.action_log[index][1]
                cancelled = action.get("actionType") == ActionType.CREATE_TIMER and action.get("isCanceled")
                if cancelled and timer_id is not None:
                    decision.cancelled_timers.add(timer_id)
            decision.timers = [t for t in decision.timers if t[0] not in decision.cancelled_timers]

        if error is not None:
            decision.status = FAILED
            decision.output = json.dumps(f"Orchestrator function '{snap.name}' failed: {error}")
        elif state.get("isDone"):
            if decision.continue_as_new:
                decision.status = RUNNING
            else:
                decision.wants_completion = True
                decision.output = json.dumps(state.get("output"))
        decision.events.append(_event(HistoryEventType.ORCHESTRATOR_COMPLETED, now))
        return decision

    def _invoke(
        self, snap: _Snapshot, history: list[dict[str, Any]], *, replaying: bool
    ) -> tuple[dict[str, Any], str | None]:
        """Run one replay through the SDK; returns its state and the orchestrator's error, if any."""
        entry = self._orchestrators.get(snap.name)
        if entry is None:
            return {}, f"orchestrator {snap.name!r} is not registered"
        fn, input_type = entry
        body = {
            "history": history,
            "instanceId": snap.instance_id,
            "isReplaying": replaying,
            "parentInstanceId": None,
            "input": snap.input,
            "upperSchemaVersion": _UPPER_SCHEMA_VERSION,
        }
        try:
            context = DurableOrchestrationContext.from_json(json.dumps(body))
            if input_type is not None:
                context._input_expected_type = input_type
            raw = df.Orchestrator(fn).handle(context)
        except Exception as exc:
            # The SDK reports an orchestrator exception by raising, with its state appended after
            # a marker (the out-of-process error protocol the extension parses).
            text = str(exc)
            if _OUT_OF_PROC_MARKER in text:
                message, _, data = text.partition(_OUT_OF_PROC_MARKER)
                try:
                    state: dict[str, Any] = json.loads(data)
                except ValueError:
                    state = {}
                return state, state.get("error") or message
            return {}, f"{type(exc).__name__}: {exc}"
        parsed: dict[str, Any] = json.loads(raw)
        return parsed, None

    def _schedule(self, snap: _Snapshot, flat: list[dict[str, Any]], decision: _Decision, now: str) -> str | None:
        """Check replayed actions against the record, then schedule the new ones; returns an error."""
        log = decision.action_log
        for index, (recorded, _) in enumerate(log):
            if index >= len(flat) or _signature(flat[index]) != recorded:
                replayed = _signature(flat[index]) if index < len(flat) else None
                return (
                    f"Non-deterministic workflow detected: action #{index} was {recorded} when first run"
                    f" and {replayed} on replay"
                )
        for action in flat[len(log) :]:
            kind = action.get("actionType")
            event_id: int | None = None
            if kind in (ActionType.CALL_ACTIVITY, ActionType.CALL_ACTIVITY_WITH_RETRY):
                event_id = decision.next_event_id
                decision.next_event_id += 1
                name = action["functionName"]
                input_ = action.get("input")
                decision.events.append(_event(HistoryEventType.TASK_SCHEDULED, now, event_id, Name=name, Input=input_))
                retry = None
                if kind == ActionType.CALL_ACTIVITY_WITH_RETRY:
                    options = action.get("retryOptions") or {}
                    retry = {
                        "name": name,
                        "input": input_,
                        "attempt": 1,
                        "max": int(options.get("maxNumberOfAttempts", 1)),
                        "interval_ms": int(options.get("firstRetryIntervalInMilliseconds", 1000)),
                    }
                decision.activities.append((event_id, name, input_, retry))
            elif kind == ActionType.CREATE_TIMER:
                event_id = decision.next_event_id
                decision.next_event_id += 1
                fire_at = _ts(_parse_ts(action["fireAt"]))
                decision.events.append(_event(HistoryEventType.TIMER_CREATED, now, event_id, FireAt=fire_at))
                decision.timers.append((event_id, fire_at, None))
            elif kind == ActionType.CONTINUE_AS_NEW:
                event_id = decision.next_event_id
                decision.next_event_id += 1
                decision.continue_as_new = True
                decision.new_input = action.get("input")
            elif kind != ActionType.WAIT_FOR_EXTERNAL_EVENT:
                return f"action type {_action_label(kind)} is not supported by the embedded Durable engine"
            log.append([_signature(action), event_id])
        return None

    def _commit(self, snap: _Snapshot, decision: _Decision, now: str) -> None:
        iid = snap.instance_id
        with self._tx() as db:
            db.execute("DELETE FROM durable_messages WHERE msg_id=?", (snap.msg_id,))
            row = db.execute(
                "SELECT runtime_status, execution_id FROM durable_instances WHERE instance_id=?", (iid,)
            ).fetchone()
            if row is None or row[0] not in _ACTIVE or row[1] != snap.execution_id:
                return  # terminated (or restarted) while this episode ran: its outcome no longer applies
            db.executemany(
                "DELETE FROM durable_messages WHERE instance_id=? AND execution_id=? AND kind=? AND timer_id=?",
                [(iid, snap.execution_id, _TIMER, t) for t in decision.cancelled_timers],
            )
            for task_id, name, input_, retry in decision.activities:
                db.execute(
                    "INSERT INTO durable_activities (instance_id, execution_id, task_id, name, input, retry)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (iid, snap.execution_id, task_id, name, input_, None if retry is None else json.dumps(retry)),
                )
            for timer_id, fire_at, retry in decision.timers:
                payload = {"fire_at": fire_at, "retry": retry}
                self._enqueue(db, iid, snap.execution_id, _TIMER, fire_at, payload, timer_id)

            status = decision.status
            if decision.wants_completion:
                # Like the Durable Task Framework: a timer neither fired nor cancelled keeps the
                # instance Running; when it fires, the replay returns again and completes then.
                (outstanding,) = db.execute(
                    "SELECT COUNT(*) FROM durable_messages WHERE instance_id=? AND execution_id=? AND kind=?",
                    (iid, snap.execution_id, _TIMER),
                ).fetchone()
                status = RUNNING if outstanding else COMPLETED
            output = decision.output if status != RUNNING else None

            if decision.continue_as_new:
                # A new execution: fresh history and numbering; timers of the old one are void,
                # results of its activities will be discarded; queued events stay for the new one.
                new_execution = uuid.uuid4().hex
                db.execute("DELETE FROM durable_history WHERE instance_id=?", (iid,))
                db.execute("DELETE FROM durable_messages WHERE instance_id=? AND execution_id IS NOT NULL", (iid,))
                self._enqueue(db, iid, new_execution, _START, now, {})
                db.execute(
                    "UPDATE durable_instances SET runtime_status=?, input=?, custom_status=?, last_updated_at=?,"
                    " execution_id=?, next_event_id=0, action_log='[]' WHERE instance_id=?",
                    (RUNNING, decision.new_input, decision.custom_status, now, new_execution, iid),
                )
                return

            events = decision.events
            if status in (COMPLETED, FAILED):
                db.execute("DELETE FROM durable_messages WHERE instance_id=?", (iid,))
                events = [
                    *events,
                    _event(
                        HistoryEventType.EXECUTION_COMPLETED,
                        now,
                        OrchestrationStatus=status,
                        Result=None if output is None else output,
                    ),
                ]
            self._append_history(db, iid, events)
            db.execute(
                "UPDATE durable_instances SET runtime_status=?, output=?, custom_status=?, last_updated_at=?,"
                " next_event_id=?, action_log=? WHERE instance_id=?",
                (
                    status,
                    output,
                    decision.custom_status,
                    now,
                    decision.next_event_id,
                    json.dumps(decision.action_log),
                    iid,
                ),
            )
