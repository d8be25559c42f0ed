"""The Service Bus adapter at its boundary: the exact SDK messages built from real jobs.

No namespace is needed: ``ServiceBusMessage`` and ``ServiceBusMessageBatch`` are the SDK's own
objects, built offline. The batch measures the AMQP-encoded size itself, so the splitting test
runs the SDK's real size accounting; only the sender (which would open an AMQP link) is a
stand-in, recording what it is asked to send.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.core.credentials import AccessToken
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch

from gigafactory import messages
from gigafactory.azure.servicebus import (
    CONNECTION_SETTING,
    NAMESPACE_SETTING,
    ServiceBusPublisher,
    encode_body,
    receive_dispatch_body,
    to_service_bus_message,
)
from gigafactory.domain import job as J
from gigafactory.domain.manifest import Manifest
from gigafactory.domain.pools import Pool
from gigafactory.local.bus import MessageTooLarge as LocalMessageTooLarge
from gigafactory.messages import MAX_MESSAGE_BYTES, MessageTooLarge, serialized_size
from gigafactory.ports import BusMessage
from gigafactory.services.launch import BadDispatch, parse_dispatch
from tests.integration.gpu_fleet import gpu_fleet_pools

NOW = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
TASK = "Refactor the billing module and open a pull request with the result."

POOLS = gpu_fleet_pools(cpu=2, memory="4Gi")


def _manifest(**overrides: Any) -> Manifest:
    fields: dict[str, Any] = {
        "product": "billing",
        "title": "refactor",
        "task": TASK,
        "priority": "P1",
        "requirements": {"capabilities": ["linux", "gpu"]},
    }
    fields.update(overrides)
    return Manifest.model_validate(fields)


def _dispatched(pool: Pool, job_id: str = "j-0123456789abcdef") -> J.Job:
    job = J.new_job(job_id=job_id, manifest=_manifest(), pool=pool.name, now=NOW - timedelta(seconds=5))
    return J.release(job, NOW)


def _retry_dispatched(pool: Pool, delay_seconds: float) -> J.Job:
    """Attempt 2, released by the scheduler now but due only after its backoff."""
    job = J.expire(_dispatched(pool), 1, "schedule_to_start", NOW)
    job = J.requeue(job, delay_seconds=delay_seconds, now=NOW, reason="schedule_to_start")
    return J.release(job, NOW)


def _body(message: ServiceBusMessage) -> bytes:
    return b"".join(message.body)


# -- dispatch messages -------------------------------------------------------------------------


def test_dispatch_message_is_ids_only_with_routing_properties() -> None:
    pool = POOLS.get("gpu")
    job = _dispatched(pool)

    sb = to_service_bus_message(messages.dispatch_message(job, pool, NOW))

    assert sb.message_id == f"{job.id}:1"
    assert sb.application_properties == {
        "pool": "gpu",
        "launch_mode": "on-demand",
        "product": "billing",
        "priority": "P1",
    }
    assert sb.content_type == "application/json"
    assert sb.scheduled_enqueue_time_utc is None
    assert b"x-opt-scheduled-enqueue-time" not in (sb.raw_amqp_message.annotations or {})
    raw = _body(sb)
    assert json.loads(raw) == {"job_id": job.id, "attempt": 1, "pool": "gpu"}
    assert raw == b'{"job_id":"j-0123456789abcdef","attempt":1,"pool":"gpu"}'  # compact: what was sized
    assert TASK.encode() not in raw  # the manifest stays in the store (claim check)
    assert parse_dispatch(json.loads(raw)) == (job.id, 1, "gpu")


def test_standing_pool_dispatch_routes_by_launch_mode() -> None:
    pool = POOLS.get("fleet")
    job = J.release(
        J.new_job(job_id="j-standing", manifest=_manifest(requirements={"capabilities": ["linux"]}),
                  pool="fleet", now=NOW),
        NOW,
    )

    sb = to_service_bus_message(messages.dispatch_message(job, pool, NOW))

    assert sb.application_properties is not None
    assert sb.application_properties["launch_mode"] == "standing"
    assert sb.application_properties["pool"] == "fleet"


def test_retry_dispatch_is_scheduled_at_its_due_time_with_the_next_attempt_id() -> None:
    pool = POOLS.get("gpu")
    job = _retry_dispatched(pool, delay_seconds=90)
    assert job.attempt == 2 and job.due_at == NOW + timedelta(seconds=90)

    sb = to_service_bus_message(messages.dispatch_message(job, pool, NOW))

    assert sb.message_id == f"{job.id}:2"
    assert sb.scheduled_enqueue_time_utc == NOW + timedelta(seconds=90)
    assert sb.scheduled_enqueue_time_utc is not None and sb.scheduled_enqueue_time_utc.utcoffset() == timedelta(0)
    annotations = sb.raw_amqp_message.annotations or {}
    assert annotations[b"x-opt-scheduled-enqueue-time"] == NOW + timedelta(seconds=90)
    assert json.loads(_body(sb)) == {"job_id": job.id, "attempt": 2, "pool": "gpu"}


def test_due_or_overdue_dispatch_is_not_scheduled() -> None:
    pool = POOLS.get("gpu")
    job = _retry_dispatched(pool, delay_seconds=90)

    due = to_service_bus_message(messages.dispatch_message(job, pool, job.due_at))
    overdue = to_service_bus_message(messages.dispatch_message(job, pool, job.due_at + timedelta(minutes=5)))

    assert due.scheduled_enqueue_time_utc is None
    assert overdue.scheduled_enqueue_time_utc is None


# -- job events --------------------------------------------------------------------------------


def test_job_event_is_a_structured_cloudevent() -> None:
    pool = POOLS.get("gpu")
    job = _dispatched(pool)
    entry = job.history[-1]

    sb = to_service_bus_message(messages.job_event(job, entry))

    assert sb.content_type == "application/cloudevents+json"
    event = json.loads(_body(sb))
    assert event == {
        "specversion": "1.0",
        "id": f"{job.id}:1:dispatched:2026-03-02T09:30:15.123456Z",
        "source": "/gigafactory/jobs",
        "type": "gigafactory.job.dispatched",
        "subject": job.id,
        "time": "2026-03-02T09:30:15.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "job_id": job.id,
            "attempt": 1,
            "status": "dispatched",
            "reason": None,
            "pool": "gpu",
            "product": "billing",
        },
    }
    assert sb.message_id == event["id"]
    assert sb.application_properties == {"type": "gigafactory.job.dispatched", "pool": "gpu", "product": "billing"}
    assert sb.scheduled_enqueue_time_utc is None
    assert TASK.encode() not in _body(sb)


def test_terminal_job_event_carries_the_result_but_not_the_manifest() -> None:
    pool = POOLS.get("gpu")
    job = J.mark_launching(_dispatched(pool), 1, "factory-gpu/exec-1", NOW)
    job = J.claim(job, 1, holder="exec-1", token_sha256="0" * 64, lease_seconds=60, now=NOW)
    result = J.Result(outcome="succeeded", exit_code=0, summary="done", pr_url="https://example.com/pr/7")
    job = J.complete(job, 1, result, retryable=False, now=NOW + timedelta(minutes=3))

    sb = to_service_bus_message(messages.job_event(job, job.history[-1]))

    event = json.loads(_body(sb))
    assert event["type"] == "gigafactory.job.succeeded"
    assert event["data"]["result"]["pr_url"] == "https://example.com/pr/7"
    assert event["data"]["result"]["exit_code"] == 0
    assert sb.message_id == f"{job.id}:1:succeeded:2026-03-02T09:33:15.123456Z"
    assert TASK.encode() not in _body(sb)


# -- size guard --------------------------------------------------------------------------------


def test_a_300_kb_body_is_refused_naming_size_and_limit() -> None:
    big = BusMessage("j-big:1", {"job_id": "j-big", "manifest": "x" * (300 * 1024)})
    size = serialized_size(big)

    with pytest.raises(MessageTooLarge) as refused:
        to_service_bus_message(big)

    text = str(refused.value)
    assert str(size) in text and str(MAX_MESSAGE_BYTES) in text and "256 KB" in text
    assert "claim check" in text
    assert refused.value.size == size and refused.value.limit == MAX_MESSAGE_BYTES
    # One guard for both brokers: the embedded bus raises the very same type.
    assert LocalMessageTooLarge is MessageTooLarge


def test_a_message_exactly_at_the_limit_is_built() -> None:
    overhead = serialized_size(BusMessage("j-edge:1", {"blob": ""}))
    edge = BusMessage("j-edge:1", {"blob": "x" * (MAX_MESSAGE_BYTES - overhead)})
    assert serialized_size(edge) == MAX_MESSAGE_BYTES

    sb = to_service_bus_message(edge)

    assert len(_body(sb)) == len(encode_body(edge.body)) < MAX_MESSAGE_BYTES


# -- sending -----------------------------------------------------------------------------------


class RecordingBatch(ServiceBusMessageBatch):
    """The SDK's batch, with its real size accounting; records which ids it accepted."""

    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.ids: list[str] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.ids.append(message.message_id)


class RecordingSender:
    """Stands in for ``ServiceBusSender`` only: opening its AMQP link needs a namespace."""

    def __init__(self, topic: str, batch_limit: int) -> None:
        self.topic = topic
        self.batch_limit = batch_limit
        self.sent: list[Any] = []
        self.closed = False
        self._busy = False
        self.overlaps = 0

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> RecordingBatch:
        return RecordingBatch(max_size_in_bytes or self.batch_limit)

    def send_messages(self, message: Any) -> None:
        if self._busy:
            self.overlaps += 1
        self._busy = True
        time.sleep(0.002)  # widen the window a concurrent, unguarded send would hit
        self.sent.append(message)
        self._busy = False

    def close(self) -> None:
        self.closed = True


class RecordingClient:
    def __init__(self, batch_limit: int = 64 * 1024) -> None:
        self.batch_limit = batch_limit
        self.senders: list[RecordingSender] = []
        self.closed = False

    def get_topic_sender(self, topic_name: str) -> RecordingSender:
        sender = RecordingSender(topic_name, self.batch_limit)
        self.senders.append(sender)
        return sender

    def close(self) -> None:
        self.closed = True


def _many(pool: Pool, count: int) -> list[BusMessage]:
    jobs = [_dispatched(pool, job_id=f"j-{i:04d}-" + "a" * 40) for i in range(count)]
    return [messages.dispatch_message(job, pool, NOW) for job in jobs]


def test_publish_sends_the_built_message_on_one_cached_sender_per_topic() -> None:
    client = RecordingClient()
    publisher = ServiceBusPublisher(client)  # type: ignore[arg-type]
    pool = POOLS.get("gpu")
    job = _dispatched(pool)
    dispatch = messages.dispatch_message(job, pool, NOW)

    assert publisher.publish(messages.DISPATCH_TOPIC, dispatch) is True
    assert publisher.publish(messages.DISPATCH_TOPIC, dispatch) is True  # the broker drops the repeat
    assert publisher.publish(messages.EVENTS_TOPIC, messages.job_event(job, job.history[-1])) is True

    assert [s.topic for s in client.senders] == ["dispatch", "job-events"]
    dispatch_sender = client.senders[0]
    assert [m.message_id for m in dispatch_sender.sent] == [f"{job.id}:1", f"{job.id}:1"]
    assert all(isinstance(m, ServiceBusMessage) for m in dispatch_sender.sent)

    publisher.close()
    assert all(s.closed for s in client.senders) and client.closed


def test_an_oversized_message_is_refused_before_any_sender_is_opened() -> None:
    client = RecordingClient()
    publisher = ServiceBusPublisher(client)  # type: ignore[arg-type]

    with pytest.raises(MessageTooLarge):
        publisher.publish("dispatch", BusMessage("j-big:1", {"blob": "x" * (300 * 1024)}))

    assert client.senders == []


def test_concurrent_publishes_never_share_the_sender_at_once() -> None:
    client = RecordingClient()
    publisher = ServiceBusPublisher(client)  # type: ignore[arg-type]
    pool = POOLS.get("gpu")
    batch = _many(pool, 40)

    threads = [threading.Thread(target=publisher.publish, args=("dispatch", m)) for m in batch]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(client.senders) == 1
    assert client.senders[0].overlaps == 0
    assert sorted(m.message_id for m in client.senders[0].sent) == sorted(m.message_id for m in batch)


def test_publish_many_splits_when_a_batch_is_full_and_keeps_order() -> None:
    limit = 2048
    client = RecordingClient(batch_limit=limit)
    publisher = ServiceBusPublisher(client)  # type: ignore[arg-type]
    pool = POOLS.get("gpu")
    batch = _many(pool, 30)
    assert sum(len(encode_body(m.body)) for m in batch) > limit  # cannot all fit one batch

    sent_batches = publisher.publish_many("dispatch", batch)

    sent = client.senders[0].sent
    assert sent_batches == len(sent) > 1
    assert all(isinstance(b, RecordingBatch) for b in sent)
    assert all(len(b) > 0 and b.size_in_bytes <= limit for b in sent)
    assert [i for b in sent for i in b.ids] == [m.message_id for m in batch]


def test_publish_many_with_nothing_sends_nothing() -> None:
    client = RecordingClient()
    publisher = ServiceBusPublisher(client)  # type: ignore[arg-type]

    assert publisher.publish_many("dispatch", []) == 0
    assert client.senders == []


def test_publish_many_refuses_a_message_no_batch_can_hold() -> None:
    client = RecordingClient(batch_limit=1024)
    publisher = ServiceBusPublisher(client)  # type: ignore[arg-type]
    pool = POOLS.get("gpu")
    small = _many(pool, 2)
    wide = BusMessage("j-wide:1", {"job_id": "j-wide", "note": "y" * 4000})

    with pytest.raises(MessageTooLarge) as refused:
        publisher.publish_many("dispatch", [*small, wide])

    assert refused.value.message_id == "j-wide:1" and refused.value.limit == 1024
    # The small ones that preceded it were sent; resending them later is a no-op for the broker.
    assert [i for b in client.senders[0].sent for i in b.ids] == [m.message_id for m in small]


# -- receiving ---------------------------------------------------------------------------------


def test_receive_dispatch_body_round_trips_through_the_functions_type() -> None:
    pool = POOLS.get("gpu")
    job = _dispatched(pool)
    sb = to_service_bus_message(messages.dispatch_message(job, pool, NOW))

    received = func.ServiceBusMessage(body=_body(sb), content_type=sb.content_type)

    assert receive_dispatch_body(received) == {"job_id": job.id, "attempt": 1, "pool": "gpu"}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_receive_dispatch_body_refuses_poison_for_dead_lettering(body: bytes) -> None:
    with pytest.raises(BadDispatch):
        receive_dispatch_body(func.ServiceBusMessage(body=body))


# -- settings ----------------------------------------------------------------------------------


class StaticToken:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("static-token", int(time.time()) + 3600)


def test_from_settings_is_keyless_with_a_namespace() -> None:
    publisher = ServiceBusPublisher.from_settings(
        {NAMESPACE_SETTING: "gf-test.servicebus.windows.net"}, credential=StaticToken()
    )
    assert publisher._client.fully_qualified_namespace == "gf-test.servicebus.windows.net"
    publisher.close()


def test_from_settings_builds_a_managed_identity_credential_without_connecting() -> None:
    publisher = ServiceBusPublisher.from_settings(
        {
            NAMESPACE_SETTING: "gf-test.servicebus.windows.net",
            "SERVICEBUS__clientId": "00000000-0000-0000-0000-000000000001",
        }
    )
    assert publisher._client.fully_qualified_namespace == "gf-test.servicebus.windows.net"
    publisher.close()


def test_from_settings_prefers_the_namespace_over_an_emulator_connection_string() -> None:
    # The emulator's documented development connection string, not a secret.
    emulator = (
        "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
    )
    only_emulator = ServiceBusPublisher.from_settings({CONNECTION_SETTING: emulator})
    both = ServiceBusPublisher.from_settings(
        {CONNECTION_SETTING: emulator, NAMESPACE_SETTING: "gf-test.servicebus.windows.net"}, credential=StaticToken()
    )

    assert only_emulator._client.fully_qualified_namespace == "localhost"
    assert both._client.fully_qualified_namespace == "gf-test.servicebus.windows.net"
    only_emulator.close()
    both.close()


def test_from_settings_without_either_setting_names_both() -> None:
    with pytest.raises(ValueError) as missing:
        ServiceBusPublisher.from_settings({})
    assert NAMESPACE_SETTING in str(missing.value) and CONNECTION_SETTING in str(missing.value)
