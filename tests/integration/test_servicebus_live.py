"""Against a real Service Bus namespace or the official emulator; skipped without one.

Set ``SERVICEBUS__fullyQualifiedNamespace`` (keyless: ``DefaultAzureCredential`` needs Azure
Service Bus Data Owner, or Data Sender plus Data Receiver, on the namespace) or
``SERVICEBUS_CONNECTION`` (the emulator's connection string). The entities must exist as
infrastructure creates them: topic ``dispatch`` with duplicate detection enabled and a
``launcher`` subscription filtered on ``launch_mode = 'on-demand'``. Use a namespace no running
coordinator consumes from: messages that are not this test's are abandoned, not completed, but
their delivery count still goes up.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusReceivedMessage

from gigafactory import messages
from gigafactory.azure.servicebus import (
    CLIENT_ID_SETTING,
    CONNECTION_SETTING,
    NAMESPACE_SETTING,
    ServiceBusPublisher,
    receive_dispatch_body,
)
from gigafactory.domain import job as J
from gigafactory.domain.manifest import Manifest
from gigafactory.domain.pools import parse_pools

pytestmark = [
    pytest.mark.azure,
    pytest.mark.skipif(
        not (os.environ.get(NAMESPACE_SETTING) or os.environ.get(CONNECTION_SETTING)),
        reason=f"no Service Bus: set {NAMESPACE_SETTING} (real namespace) or {CONNECTION_SETTING} (emulator)",
    ),
]

RECEIVE_SECONDS = 20.0

POOL = parse_pools(
    json.dumps(
        {
            "pools": [
                {
                    "name": "live",
                    "capabilities": ["linux"],
                    "launch_mode": "on-demand",
                    "max_parallel": 1,
                    "profiles": {"echo": {"argv": ["echo", "{task}"]}},
                    "container": {
                        "job_name": "factory-live",
                        "image": "example.azurecr.io/factory:live",
                        "cpu": 0.5,
                        "memory": "1Gi",
                        "replica_timeout_seconds": 600,
                    },
                }
            ]
        }
    )
).get("live")


def _client() -> ServiceBusClient:
    namespace = os.environ.get(NAMESPACE_SETTING)
    if namespace:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(
            managed_identity_client_id=os.environ.get(CLIENT_ID_SETTING) or os.environ.get("AZURE_CLIENT_ID") or None
        )
        return ServiceBusClient(namespace, credential)
    return ServiceBusClient.from_connection_string(os.environ[CONNECTION_SETTING])


@pytest.fixture
def publisher() -> Iterator[ServiceBusPublisher]:
    with ServiceBusPublisher.from_settings(os.environ) as bus:
        yield bus


def _properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in (message.application_properties or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        decoded[name] = value.decode() if isinstance(value, bytes) else value
    return decoded


def test_a_repeated_dispatch_is_delivered_once(publisher: ServiceBusPublisher) -> None:
    now = datetime.now(UTC)
    manifest = Manifest.model_validate({"product": "live-test", "title": "dedup", "task": "echo"})
    job = J.release(J.new_job(job_id=f"j-live-{uuid.uuid4().hex}", manifest=manifest, pool="live", now=now), now)
    dispatch = messages.dispatch_message(job, POOL, now)

    assert publisher.publish(messages.DISPATCH_TOPIC, dispatch) is True
    assert publisher.publish(messages.DISPATCH_TOPIC, dispatch) is True
    assert publisher.publish_many(messages.DISPATCH_TOPIC, [dispatch]) == 1

    ours: list[ServiceBusReceivedMessage] = []
    with _client() as client, client.get_subscription_receiver(
        messages.DISPATCH_TOPIC, messages.LAUNCHER_SUBSCRIPTION
    ) as receiver:
        deadline = time.monotonic() + RECEIVE_SECONDS
        while time.monotonic() < deadline:
            batch = receiver.receive_messages(max_message_count=50, max_wait_time=5)
            if not batch and ours:
                break  # ours arrived and nothing more is coming: a duplicate would have by now
            for received in batch:
                if received.message_id == dispatch.message_id:
                    ours.append(received)
                    receiver.complete_message(received)
                else:
                    receiver.abandon_message(received)

    assert len(ours) == 1, f"expected one delivery of {dispatch.message_id}, got {len(ours)}"
    delivered = ours[0]
    assert receive_dispatch_body(delivered) == {"job_id": job.id, "attempt": 1, "pool": "live"}
    assert _properties(delivered) == {
        "pool": "live",
        "launch_mode": "on-demand",
        "product": "live-test",
        "priority": "P2",
    }
    assert delivered.content_type == "application/json"
