"""Standing factories' broker sources: which one is chosen, and how a Service Bus delivery is
read and settled (the receiver stands in for a namespace, which cannot run here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gigafactory.azure.servicebus import PoolSubscription
from gigafactory.factory.sources import service_bus_source


def test_without_service_bus_settings_the_embedded_gateway_is_used() -> None:
    assert service_bus_source("fleet", {}) is None


@dataclass
class Received:
    body: list[bytes]
    application_properties: dict[bytes, bytes] | None = None


@dataclass
class Receiver:
    """Honours the peek-lock contract: only a message it handed out can be completed, once."""

    queue: list[Received]
    locked: list[Received] = field(default_factory=list)
    completed: list[Received] = field(default_factory=list)

    def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Received]:
        batch, self.queue = self.queue[:max_message_count], self.queue[max_message_count:]
        self.locked += batch
        return batch

    def complete_message(self, message: Any) -> None:
        assert message in self.locked, "completing a message that is not locked by this receiver"
        self.locked.remove(message)
        self.completed.append(message)


def test_service_bus_deliveries_are_decoded_and_settled_individually() -> None:
    good = Received([b'{"job_id": "j-1", ', b'"attempt": 2, "pool": "fleet"}'])
    poison = Received([b"not json"])
    receiver = Receiver([good, poison])
    source = PoolSubscription(receiver)
    first, second = source.receive(max_messages=5, wait_seconds=1)
    assert first.body == {"job_id": "j-1", "attempt": 2, "pool": "fleet"}
    assert second.body == {}  # a malformed body is settled without running anything
    source.complete(first)
    assert receiver.completed == [good] and receiver.locked == [poison]
    assert json.loads(b"".join(good.body))["attempt"] == 2
