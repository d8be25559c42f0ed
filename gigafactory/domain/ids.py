"""Identifiers, built in one place: job ids, and the broker message id ``{job_id}:{attempt}``."""

from __future__ import annotations

import hashlib
import uuid


def new_job_id() -> str:
    return "j-" + uuid.uuid4().hex


def job_id_for_key(idempotency_key: str) -> str:
    """The same idempotency key always names the same job, so a repeat cannot create two."""
    return "k-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def dispatch_message_id(job_id: str, attempt: int, resends: int = 0) -> str:
    """``{job_id}:{attempt}``. An attempt's dispatch sent again — its message was consumed with
    no claim to show for it, or its release went back to the queue on a switch to poll mode —
    is ``{job_id}:{attempt}:r{n}``: under the original id, duplicate detection would swallow it."""
    return f"{job_id}:{attempt}" if resends == 0 else f"{job_id}:{attempt}:r{resends}"


def shadow_message_id(job_id: str, attempt: int) -> str:
    """Shadow copies must not collide with the real dispatch id, or duplicate detection would
    drop the real message after a switch from shadow to broker mode."""
    return f"{job_id}:{attempt}:shadow"


def event_id(job_id: str, attempt: int, status: str, seq: int) -> str:
    return f"{job_id}:{attempt}:{status}:{seq}"
