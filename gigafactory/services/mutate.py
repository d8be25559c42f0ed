"""Read-modify-write of one job under optimistic concurrency."""

from __future__ import annotations

from collections.abc import Callable

from gigafactory.domain.job import Job
from gigafactory.ports import Conflict, JobStore

MAX_TRIES = 20


class NotFound(Exception):
    """No job with that id (HTTP 404)."""


def update_job(store: JobStore, job_id: str, change: Callable[[Job], Job | None], pool: str | None = None) -> Job:
    """Apply ``change`` to the current version until the ETag holds.

    ``change`` returns ``None`` when there is nothing to do (idempotent replays), and may raise
    to refuse; it is re-run on a fresh read after every conflict.
    """
    for _ in range(MAX_TRIES):
        job = store.get(job_id, pool)
        if job is None:
            raise NotFound(f"job {job_id}: not found")
        updated = change(job)
        if updated is None:
            return job
        try:
            return store.replace(updated)
        except Conflict:
            continue
    raise Conflict(f"job {job_id}: still contended after {MAX_TRIES} tries")
