"""Where a standing factory receives dispatch messages in broker mode.

Both sources speak Service Bus semantics — peek-lock receive with a bounded wait, then
complete — and the factory completes a message as soon as its claim is recorded, so no lock is
held while an agent runs for hours. ``GatewaySource`` is the embedded runtime's broker over
HTTP; ``ServiceBusSource`` is the pool's subscription on a Service Bus namespace, keyless.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping

import httpx

from gigafactory.ports import Delivery, DispatchSource


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
        return [Delivery(m["body"], m["lock_token"], m.get("properties") or {}) for m in answer.json()["messages"]]

    def complete(self, delivery: Delivery) -> None:
        self._settle(delivery, "complete")

    def abandon(self, delivery: Delivery) -> None:
        self._settle(delivery, "abandon")

    def _settle(self, delivery: Delivery, verb: str) -> None:
        # On failure the lock expires and the broker redelivers; the coordinator fences the repeat.
        with contextlib.suppress(httpx.TransportError):
            self._http.post(f"/api/pools/{self._pool}/messages/{delivery.handle}/{verb}", headers=self._auth(),
                            timeout=15)


def service_bus_source(pool: str, env: Mapping[str, str] | None = None) -> DispatchSource | None:
    """The pool's Service Bus subscription when a namespace is configured, else ``None``."""
    settings = os.environ if env is None else env
    if not settings.get("SERVICEBUS__fullyQualifiedNamespace") and not settings.get("SERVICEBUS_CONNECTION"):
        return None
    from gigafactory.azure.servicebus import PoolSubscription

    return PoolSubscription.from_settings(pool, settings)
