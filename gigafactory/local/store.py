"""The embedded job store on SQLite.

Every write stamps the row with the next value of a change sequence, so the runtime can tail
changes the way the Cosmos DB change feed is tailed (latest version of each changed document,
in order). Every update is conditional on the ETag that was read.
"""

from __future__ import annotations

import base64
import builtins
import json
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from gigafactory import accounting
from gigafactory.domain.factories import Factory
from gigafactory.domain.job import Job
from gigafactory.domain.timefmt import to_iso
from gigafactory.ports import Capacity, Conflict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    status TEXT NOT NULL,
    product TEXT NOT NULL,
    sort_key REAL NOT NULL,
    due_at TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    seq INTEGER NOT NULL,
    etag TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (pool, status, sort_key DESC);
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs (submitted_at DESC, id DESC);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS capacity (pool TEXT PRIMARY KEY, etag TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS factories (id TEXT PRIMARY KEY, pool TEXT NOT NULL, etag TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shadow (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, side TEXT NOT NULL, pool TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, side)
);
"""


def _etag() -> str:
    return f'"{uuid.uuid4().hex}"'


class SqliteJobStore:
    def __init__(self, path: str | Path) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.ops: Counter[str] = Counter()
        self.ops_by_caller: Counter[str] = Counter()
        # Called after every committed job write: the runtime's change tail sleeps until then.
        self.listeners: list[Callable[[], None]] = []

    def _count(self, kind: str) -> None:
        self.ops[kind] += 1
        self.ops_by_caller[f"{accounting.caller.get()}:{kind}"] += 1

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- jobs --------------------------------------------------------------------------------

    def _write(self, job: Job, *, insert: bool) -> Job:
        etag = _etag()
        doc = job.to_doc()
        doc["_etag"] = etag
        params = (job.pool, job.status.value, job.product, job.sort_key, to_iso(job.due_at),
                  to_iso(job.submitted_at), etag, json.dumps(doc), job.id)
        next_seq = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs)"
        if insert:
            self._db.execute(
                "INSERT INTO jobs (pool, status, product, sort_key, due_at, submitted_at, etag, doc, id, seq)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {next_seq})",
                params,
            )
        else:
            cur = self._db.execute(
                "UPDATE jobs SET pool=?, status=?, product=?, sort_key=?, due_at=?, submitted_at=?, etag=?, doc=?,"
                f" seq={next_seq} WHERE id=? AND etag=?",
                (*params, job.etag),
            )
            if cur.rowcount != 1:
                raise Conflict(f"job {job.id}: the ETag {job.etag} is no longer current")
        stored = job.model_copy()
        stored.etag = etag
        return stored

    def create(self, job: Job) -> tuple[Job, bool]:
        with self._lock:
            self._count("write")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                stored = self._write(job, insert=True)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
            else:
                self._notify()
                return stored, True
        existing = self.get(job.id)
        assert existing is not None
        return existing, False

    def get(self, job_id: str, pool: str | None = None) -> Job | None:
        with self._lock:
            self._count("read")
            row = self._db.execute("SELECT doc FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_doc(json.loads(row[0])) if row else None

    def replace(self, job: Job) -> Job:
        with self._lock:
            self._count("write")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                stored = self._write(job, insert=False)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self._notify()
        return stored

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    def list(
        self,
        *,
        status: str | None = None,
        product: str | None = None,
        pool: str | None = None,
        limit: int = 50,
        continuation: str | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        where, args = [], []
        for column, value in (("status", status), ("product", product), ("pool", pool)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        if continuation:
            submitted, last_id = _decode_continuation(continuation)
            where.append("(submitted_at < ? OR (submitted_at = ? AND id < ?))")
            args += [submitted, submitted, last_id]
        sql = "SELECT doc FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY submitted_at DESC, id DESC LIMIT ?"
        with self._lock:
            self._count("query")
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        jobs = [Job.from_doc(json.loads(r[0])) for r in rows[:limit]]
        token = None
        if len(rows) > limit:
            last = jobs[-1]
            token = _encode_continuation(to_iso(last.submitted_at), last.id)
        return jobs, token

    def queued(self, pool: str, due_before: datetime, limit: int) -> builtins.list[Job]:
        with self._lock:
            self._count("query")
            rows = self._db.execute(
                "SELECT doc FROM jobs WHERE pool=? AND status='queued' AND due_at<=?"
                " ORDER BY sort_key DESC, id LIMIT ?",
                (pool, to_iso(due_before), limit),
            ).fetchall()
        return [Job.from_doc(json.loads(r[0])) for r in rows]

    def in_status(self, statuses: builtins.list[str], limit: int = 500) -> builtins.list[Job]:
        marks = ",".join("?" for _ in statuses)
        with self._lock:
            self._count("query")
            rows = self._db.execute(
                f"SELECT doc FROM jobs WHERE status IN ({marks}) ORDER BY seq LIMIT ?", (*statuses, limit)
            ).fetchall()
        return [Job.from_doc(json.loads(r[0])) for r in rows]

    def counts(self, pool: str) -> dict[str, int]:
        with self._lock:
            self._count("query")
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE pool=? GROUP BY status", (pool,)
            ).fetchall()
        return {status: n for status, n in rows}

    # -- the change feed -----------------------------------------------------------------------

    def changes_since(self, seq: int, limit: int = 100) -> builtins.list[tuple[int, Job]]:
        """The latest version of every job changed after ``seq``, oldest change first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, doc FROM jobs WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [(s, Job.from_doc(json.loads(d))) for s, d in rows]

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        return int(row[0])

    # -- capacity ------------------------------------------------------------------------------

    def get_capacity(self, pool: str) -> Capacity:
        with self._lock:
            self._count("read")
            row = self._db.execute("SELECT etag, doc FROM capacity WHERE pool=?", (pool,)).fetchone()
        if row is None:
            return Capacity(pool=pool)
        return Capacity(pool=pool, inflight=json.loads(row[1])["inflight"], etag=row[0])

    def replace_capacity(self, capacity: Capacity) -> Capacity:
        etag = _etag()
        doc = json.dumps({"id": capacity.pool, "inflight": capacity.inflight})
        with self._lock:
            self._count("write")
            if capacity.etag is None:
                try:
                    self._db.execute("INSERT INTO capacity (pool, etag, doc) VALUES (?, ?, ?)",
                                     (capacity.pool, etag, doc))
                except sqlite3.IntegrityError as exc:
                    raise Conflict(f"capacity {capacity.pool}: created concurrently") from exc
            else:
                cur = self._db.execute("UPDATE capacity SET etag=?, doc=? WHERE pool=? AND etag=?",
                                       (etag, doc, capacity.pool, capacity.etag))
                if cur.rowcount != 1:
                    raise Conflict(f"capacity {capacity.pool}: the ETag {capacity.etag} is no longer current")
        return Capacity(pool=capacity.pool, inflight=dict(capacity.inflight), etag=etag)


    # -- standing factories --------------------------------------------------------------------

    def create_factory(self, factory: Factory) -> Factory:
        etag = _etag()
        doc = {**factory.to_doc(), "_etag": etag}
        with self._lock:
            self._count("write")
            try:
                self._db.execute("INSERT INTO factories (id, pool, etag, doc) VALUES (?, ?, ?, ?)",
                                 (factory.id, factory.pool, etag, json.dumps(doc)))
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"factory {factory.id}: exists") from exc
        return Factory.from_doc(doc)

    def get_factory(self, factory_id: str) -> Factory | None:
        with self._lock:
            self._count("read")
            row = self._db.execute("SELECT doc FROM factories WHERE id=?", (factory_id,)).fetchone()
        return Factory.from_doc(json.loads(row[0])) if row else None

    def replace_factory(self, factory: Factory) -> Factory:
        etag = _etag()
        doc = {**factory.to_doc(), "_etag": etag}
        with self._lock:
            self._count("write")
            cur = self._db.execute("UPDATE factories SET etag=?, doc=?, pool=? WHERE id=? AND etag=?",
                                   (etag, json.dumps(doc), factory.pool, factory.id, factory.etag))
            if cur.rowcount != 1:
                raise Conflict(f"factory {factory.id}: the ETag {factory.etag} is no longer current")
        return Factory.from_doc(doc)

    def list_factories(self, pool: str | None = None) -> builtins.list[Factory]:
        with self._lock:
            self._count("query")
            if pool is None:
                rows = self._db.execute("SELECT doc FROM factories ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT doc FROM factories WHERE pool=? ORDER BY id", (pool,)).fetchall()
        return [Factory.from_doc(json.loads(r[0])) for r in rows]

    # -- shadow-mode comparison ------------------------------------------------------------------

    def record_shadow(self, job_id: str, attempt: int, side: str, pool: str, at: datetime) -> None:
        with self._lock:
            self._count("write")
            self._db.execute("INSERT OR IGNORE INTO shadow (job_id, attempt, side, pool, at) VALUES (?, ?, ?, ?, ?)",
                             (job_id, attempt, side, pool, to_iso(at)))

    def shadow_records(self, limit: int = 10_000) -> builtins.list[dict[str, object]]:
        with self._lock:
            self._count("query")
            rows = self._db.execute("SELECT job_id, attempt, side, pool, at FROM shadow ORDER BY at DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [{"job_id": r[0], "attempt": r[1], "side": r[2], "pool": r[3], "at": r[4]} for r in rows]


def _encode_continuation(submitted_at: str, job_id: str) -> str:
    raw = json.dumps([submitted_at, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continuation(token: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        submitted, job_id = json.loads(raw)
        if not isinstance(submitted, str) or not isinstance(job_id, str):
            raise ValueError
        return submitted, job_id
    except (ValueError, TypeError) as exc:
        raise ValueError("continuation: not a token this API issued") from exc
