"""Every broker message is built here, for the embedded bus and Service Bus alike."""

from __future__ import annotations

import json
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
"""Service Bus Standard tier's limit for one message, headers and properties included."""
EVENT_SOURCE = "/gigafactory/jobs"


class MessageTooLarge(ValueError):
    """Raised before anything is sent, as Service Bus refuses the send outright: the fix is
    a claim check (put the content in blob storage, send its name), never a retry."""

    def __init__(self, message_id: str, size: int, limit: int = MAX_MESSAGE_BYTES) -> None:
        super().__init__(
            f"message {message_id!r} is {size} bytes serialized, over the {limit}-byte "
            f"({limit // 1024} KB) Service Bus Standard limit; send ids only and keep large "
            "content in blob storage (claim check)"
        )
        self.message_id = message_id
        self.size = size
        self.limit = limit


def serialized_size(message: BusMessage) -> int:
    """The bytes the message occupies on the wire, as checked against ``MAX_MESSAGE_BYTES``.

    Body, id, content type and application properties all count (as they do on Service Bus),
    so a message that passes here passes there, give or take broker-added headers.
    """
    return len(
        json.dumps(
            {
                "message_id": message.message_id,
                "content_type": message.content_type,
                "application_properties": dict(message.application_properties),
                "body": message.body,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
    )


def check_size(message: BusMessage, limit: int = MAX_MESSAGE_BYTES) -> int:
    """One guard for every broker, so the embedded bus refuses exactly what Service Bus would
    and an oversized message fails at the sender, where the claim-check fix belongs."""
    size = serialized_size(message)
    if size > limit:
        raise MessageTooLarge(message.message_id, size, limit)
    return size


def pool_subscription(pool: str) -> str:
    return f"pool-{pool}"


def dispatch_message(job: Job, pool: Pool, now: datetime, *, shadow: bool = False) -> BusMessage:
    """Ids only (claim check): the receiver reads the job from the store and fences on it.

    A shadow copy (shadow mode) carries its own id and a ``shadow`` property, so it can never
    be mistaken for, or deduplicate away, the real dispatch."""
    scheduled = job.due_at if job.due_at > now else None
    properties: dict[str, str | int] = {
        "pool": pool.name,
        "launch_mode": pool.launch_mode,
        "product": job.product,
        "priority": job.priority,
    }
    if shadow:
        properties["shadow"] = "true"
    return BusMessage(
        message_id=ids.shadow_message_id(job.id, job.attempt) if shadow
        else ids.dispatch_message_id(job.id, job.attempt, job.resends),
        body={"job_id": job.id, "attempt": job.attempt, "pool": job.pool},
        application_properties=properties,
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
    event_type = f"gigafactory.job.{entry.status.value}"
    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": EVENT_SOURCE,
        "type": event_type,
        "subject": job.id,
        "time": to_iso(entry.at),
        "datacontenttype": "application/json",
        "data": data,
    }
    return BusMessage(
        message_id=event_id,
        body=envelope,
        application_properties={"type": event_type, "pool": job.pool, "product": job.product},
        content_type="application/cloudevents+json",
    )
