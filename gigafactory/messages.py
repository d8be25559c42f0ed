"""Every broker message is built here, for the embedded bus and Service Bus alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gigafactory.domain import ids
from gigafactory.domain.job import HistoryEntry, Job
from gigafactory.domain.pools import Pool
from gigafactory.domain.timefmt import to_iso
from gigafactory.ports import BusMessage

DISPATCH_TOPIC = "dispatch"
EVENTS_TOPIC = "job-events"
REQUESTS_QUEUE = "job-requests"
LAUNCHER_SUBSCRIPTION = "launcher"
MAX_MESSAGE_BYTES = 256 * 1024
EVENT_SOURCE = "/gigafactory/jobs"


def pool_subscription(pool: str) -> str:
    return f"pool-{pool}"


def dispatch_message(job: Job, pool: Pool, now: datetime) -> BusMessage:
    """Ids only (claim check): the receiver reads the job from the store and fences on it."""
    scheduled = job.due_at if job.due_at > now else None
    return BusMessage(
        message_id=ids.dispatch_message_id(job.id, job.attempt),
        body={"job_id": job.id, "attempt": job.attempt, "pool": job.pool},
        application_properties={
            "pool": pool.name,
            "launch_mode": pool.launch_mode,
            "product": job.product,
            "priority": job.priority,
        },
        scheduled_enqueue_time=scheduled,
    )


def job_event(job: Job, entry: HistoryEntry) -> BusMessage:
    """A CloudEvents 1.0 (structured JSON) record of one transition."""
    event_id = f"{job.id}:{entry.attempt}:{entry.status.value}:{to_iso(entry.at)}"
    data: dict[str, Any] = {
        "job_id": job.id,
        "attempt": entry.attempt,
        "status": entry.status.value,
        "reason": entry.reason,
        "pool": job.pool,
        "product": job.product,
    }
    if entry.status.value in ("succeeded", "attempt_failed", "failed") and job.result is not None:
        data["result"] = job.result.model_dump(mode="json")
    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": EVENT_SOURCE,
        "type": f"gigafactory.job.{entry.status.value}",
        "subject": job.id,
        "time": to_iso(entry.at),
        "datacontenttype": "application/json",
        "data": data,
    }
    return BusMessage(
        message_id=event_id,
        body=envelope,
        application_properties={"type": envelope["type"], "pool": job.pool, "product": job.product},
        content_type="application/cloudevents+json",
    )
