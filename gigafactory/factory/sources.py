"""Where a standing factory receives dispatch messages in broker mode.

Both sources speak Service Bus semantics — peek-lock receive with a bounded wait, then
complete — and the factory completes a message as soon as its claim is recorded, so no lock is
held while an agent runs for hours. ``GatewaySource`` is the embedded runtime's broker over
HTTP; ``ServiceBusSource`` is the pool's subscription on a Service Bus namespace, keyless.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx


@dataclass(frozen=True)
class Delivery:
    body: dict[str, Any]
    handle: Any  # what the source needs to settle it


class DispatchSource(Protocol):
    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]: ...

    def complete(self, delivery: Delivery) -> None: ...

    def abandon(self, delivery: Delivery) -> None: ...


class Refused(Exception):
    """The coordinator refused this factory's credential."""


class GatewaySource:
    def __init__(self, http: httpx.Client, pool: str, auth: Callable[[], dict[str, str]],
                 on_answer: Callable[[httpx.Response], None]) -> None:
        self._http = http
        self._pool = pool
        self._auth = auth
        self._on_answer = on_answer

    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        answer = self._http.post(f"/api/pools/{self._pool}/messages/receive", headers=self._auth(),
                                 json={"max_messages": max_messages, "wait_seconds": wait_seconds})
        if answer.status_code in (401, 403):
            raise Refused(answer.text)
        answer.raise_for_status()
        self._on_answer(answer)
        return [Delivery(m["body"], m["lock_token"]) for m in answer.json()["messages"]]

    def complete(self, delivery: Delivery) -> None:
        self._settle(delivery, "complete")

    def abandon(self, delivery: Delivery) -> None:
        self._settle(delivery, "abandon")

    def _settle(self, delivery: Delivery, verb: str) -> None:
        # On failure the lock expires and the broker redelivers; the coordinator fences the repeat.
        with contextlib.suppress(httpx.TransportError):
            self._http.post(f"/api/pools/{self._pool}/messages/{delivery.handle}/{verb}", headers=self._auth(),
                            timeout=15)


class ServiceBusSource:
    """The pool's subscription (``dispatch/pool-<name>``), received with the factory's identity."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self._lock = threading.Lock()  # receivers are not thread-safe; attempts settle from threads

    @classmethod
    def from_env(cls, pool: str, env: Mapping[str, str] | None = None) -> ServiceBusSource | None:
        """``None`` when no Service Bus is configured (the embedded gateway is used instead)."""
        settings = os.environ if env is None else env
        namespace = settings.get("SERVICEBUS__fullyQualifiedNamespace")
        connection = settings.get("SERVICEBUS_CONNECTION")
        if not namespace and not connection:
            return None
        from azure.servicebus import ServiceBusClient, ServiceBusReceiveMode

        from gigafactory import messages

        if namespace:
            from azure.identity import DefaultAzureCredential

            client = ServiceBusClient(namespace, DefaultAzureCredential(
                managed_identity_client_id=settings.get("SERVICEBUS__clientId") or settings.get("AZURE_CLIENT_ID")))
        else:
            client = ServiceBusClient.from_connection_string(str(connection))
        receiver = client.get_subscription_receiver(messages.DISPATCH_TOPIC, messages.pool_subscription(pool),
                                                    receive_mode=ServiceBusReceiveMode.PEEK_LOCK)
        return cls(receiver)

    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        with self._lock:
            received = self._receiver.receive_messages(max_message_count=max_messages, max_wait_time=wait_seconds)
        out = []
        for msg in received:
            try:
                body = json.loads(b"".join(msg.body))
            except ValueError:
                body = {}
            out.append(Delivery(body if isinstance(body, dict) else {}, msg))
        return out

    def complete(self, delivery: Delivery) -> None:
        with self._lock:
            self._receiver.complete_message(delivery.handle)

    def abandon(self, delivery: Delivery) -> None:
        with self._lock:
            self._receiver.abandon_message(delivery.handle)
