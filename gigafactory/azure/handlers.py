"""What each Azure trigger does, translated from ``azure.functions`` types to one service call.

The decorated functions in ``triggers`` only call these; these hold no business rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import azure.functions as func

from gigafactory import lifecycle
from gigafactory.azure import settings
from gigafactory.azure.durable_client import AsyncDurableClient, DurableClientLifecycle
from gigafactory.azure.telemetry import job_span
from gigafactory.domain.job import Job
from gigafactory.logs import job_fields
from gigafactory.ports import DispatchSource
from gigafactory.services import launch, relay, shadow, submit, sweeper
from gigafactory.services.context import Services

log = logging.getLogger("gigafactory.azure")


def _with_lifecycle(client: AsyncDurableClient) -> Services:
    svc = settings.services()
    bridge = DurableClientLifecycle(client, asyncio.get_running_loop(), lifecycle.ORCHESTRATOR, lifecycle.EVENT)
    return dataclasses.replace(svc, lifecycle=bridge)


def parse_documents(documents: func.DocumentList) -> list[Job]:
    jobs = []
    for doc in documents:
        data = dict(doc)
        if data.get("type") != "job":
            continue
        try:
            jobs.append(Job.from_doc(data))
        except ValueError:
            log.error("unreadable job document skipped", extra={"job_id": data.get("id")})
    return jobs


async def relay_changes(documents: func.DocumentList, client: AsyncDurableClient) -> None:
    svc = _with_lifecycle(client)
    jobs = parse_documents(documents)
    await asyncio.to_thread(relay.handle_changes, svc, jobs)


def launch_dispatch(message: func.ServiceBusMessage) -> str:
    """Raises on failure: the host abandons the message, Service Bus redelivers it and, after
    ``maxDeliveryCount``, dead-letters it. The lifecycle's schedule-to-start timer then fails or
    retries the attempt, so the job is never stuck."""
    try:
        body = json.loads(message.get_body())
    except ValueError as exc:
        raise launch.BadDispatch(f"dispatch body is not JSON: {exc}") from None
    job_id = body.get("job_id") if isinstance(body, dict) else None
    attempt = body.get("attempt") if isinstance(body, dict) else None
    with job_span("launch_dispatch", job_id, attempt if isinstance(attempt, int) else None):
        return launch.handle_dispatch(settings.services(), body)


def _message_id(message: func.ServiceBusMessage) -> str | None:
    value = getattr(message, "message_id", None)
    return str(value) if value else None


def submit_from_queue(message: func.ServiceBusMessage) -> str:
    """A request that fails validation raises, so the broker dead-letters it after its
    deliveries; the reason is logged with the message id each time. Without an idempotency key
    the message id serves as one, so a redelivery never creates a second job."""
    message_id = _message_id(message)
    try:
        data: Any = json.loads(message.get_body())
        key = None
        if isinstance(data, dict) and not data.get("idempotency_key") and message_id:
            key = f"sb:{message_id}"
        job, created = submit.submit(settings.services(), data, key)
    except (ValueError, submit.InvalidRequest) as exc:
        log.error("job request rejected", extra={"message_id": message_id, "reason": str(exc)})
        raise
    log.info("job request accepted", extra=job_fields(job.id, job.attempt, message_id=message_id, created=created))
    return job.id


def submit_from_event_grid(event: func.EventGridEvent) -> str | None:
    """Event Grid redelivers on failure, so an invalid event is logged with its reason and id
    and acknowledged (it can never succeed); the event id is the default idempotency key."""
    data = event.get_json()
    key = None
    if isinstance(data, dict) and not data.get("idempotency_key"):
        key = f"eg:{event.id}"
    try:
        job, created = submit.submit(settings.services(), data, key)
    except submit.InvalidRequest as exc:
        log.error("job request event rejected", extra={"event_id": event.id, "event_type": event.event_type,
                                                         "reason": str(exc), "errors": exc.errors})
        return None
    log.info("job request event accepted", extra=job_fields(job.id, job.attempt, event_id=event.id,
                                                            created=created))
    return job.id


def open_pool_subscription(pool: str) -> DispatchSource:
    """The pool's Service Bus subscription, with the app's identity (tests substitute theirs)."""
    from gigafactory.azure.servicebus import PoolSubscription

    return PoolSubscription.from_settings(pool, os.environ)


def shadow_compare(timer: func.TimerRequest,
                   open_subscription: Callable[[str], DispatchSource] = open_pool_subscription) -> int:
    """Shadow mode's broker side in Azure: drain each standing pool's subscription and record
    which pool the broker delivered each shadow copy to. Does nothing in other modes."""
    svc = settings.services()
    if svc.dispatch_mode != "shadow":
        return 0
    seen = 0
    for pool in svc.pools.pools:
        if pool.launch_mode != "standing":
            continue
        source = open_subscription(pool.name)
        try:
            seen += shadow.consume(svc, pool.name, source, wait_seconds=5.0)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    return seen


async def sweep(timer: func.TimerRequest, client: AsyncDurableClient) -> sweeper.SweepReport:
    if timer.past_due:
        log.warning("sweep is running late")
    svc = _with_lifecycle(client)
    return await asyncio.to_thread(sweeper.sweep, svc)
