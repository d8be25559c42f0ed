"""The dispatch bus and job-events publisher on Azure Service Bus (``DispatchBus`` port).

Every message comes from ``gigafactory.messages`` as a ``BusMessage``; this module only maps it
onto the SDK's ``ServiceBusMessage`` and sends it. The mapping is where the broker's guarantees
come from, so it is kept exact and small:

* ``message_id`` is ``{job_id}:{attempt}`` for dispatches: the topic's duplicate detection (which
  infrastructure enables when it creates the topic) drops a second send of the same attempt, so
  a replayed change-feed batch or a sweeper re-publish never starts a second factory;
* application properties carry what subscription SQL filters route on (pool, launch mode), so
  the body can stay ids only;
* ``scheduled_enqueue_time_utc`` lets the broker hold a retry until its backoff has elapsed,
  instead of a timer or a poll in the coordinator;
* the size guard runs before the SDK is touched: Standard tier refuses messages over 256 KB,
  and the answer to that is a claim check, never a retry.

Keyless in Azure: ``SERVICEBUS__fullyQualifiedNamespace`` with ``DefaultAzureCredential`` (the
same settings the Functions trigger binding reads, so one identity and one role assignment serve
both). ``SERVICEBUS_CONNECTION`` holds a connection string for the official emulator only; when
both are set the keyless namespace wins, so a stray emulator string can never reach Azure.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import azure.functions as func
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSender,
)
from azure.servicebus.exceptions import MessageSizeExceededError

from gigafactory import messages
from gigafactory.azure import identity
from gigafactory.messages import MessageTooLarge, check_size
from gigafactory.ports import BusMessage, Delivery
from gigafactory.services.launch import BadDispatch

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger("gigafactory.servicebus")

NAMESPACE_SETTING = "SERVICEBUS__fullyQualifiedNamespace"
CLIENT_ID_SETTING = "SERVICEBUS__clientId"
CONNECTION_SETTING = "SERVICEBUS_CONNECTION"


def encode_body(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the same bytes ``serialized_size`` counted, so the guard is honest."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def to_service_bus_message(message: BusMessage) -> ServiceBusMessage:
    """The SDK message for one ``BusMessage``; raises ``MessageTooLarge`` before building it."""
    check_size(message)
    return ServiceBusMessage(
        encode_body(message.body),
        message_id=message.message_id,
        application_properties=dict(message.application_properties),  # type: ignore[arg-type]
        content_type=message.content_type,
        scheduled_enqueue_time_utc=message.scheduled_enqueue_time,
    )


def receive_dispatch_body(message: func.ServiceBusMessage | ServiceBusReceivedMessage) -> dict[str, Any]:
    """The JSON object a received message carries, from either the Functions trigger's
    ``azure.functions.ServiceBusMessage`` or the SDK's ``ServiceBusReceivedMessage`` (whose
    body is an iterable of AMQP data sections).

    An undecodable body raises ``BadDispatch``: no redelivery can fix it, so the caller
    dead-letters it with this reason rather than letting it circulate until the count runs out.
    """
    if isinstance(message, ServiceBusReceivedMessage):
        body = message.body
        raw = body if isinstance(body, bytes | str) else b"".join(body)
    else:
        raw = message.get_body()
    try:
        decoded = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise BadDispatch(f"message body is not JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise BadDispatch("message body must be a JSON object")
    return decoded


class ServiceBusPublisher:
    """``DispatchBus`` over one ``ServiceBusClient``, with one long-lived sender per topic.

    Opening an AMQP link costs a round trip or two and an authorization; a sender per call would
    pay that for every dispatch. Senders are not thread-safe, and the Functions host may run
    several invocations on threads of one worker, so each topic's sender is used under its own
    lock.
    """

    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client
        self._senders: dict[str, ServiceBusSender] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def from_settings(
        cls, env: Mapping[str, str], *, credential: TokenCredential | None = None
    ) -> ServiceBusPublisher:
        namespace = env.get(NAMESPACE_SETTING)
        if namespace:
            return cls(ServiceBusClient(namespace, credential or identity.credential(env, CLIENT_ID_SETTING)))
        connection = env.get(CONNECTION_SETTING)
        if connection:
            return cls(ServiceBusClient.from_connection_string(connection))
        raise identity.not_configured("Service Bus", NAMESPACE_SETTING, CONNECTION_SETTING, "the official emulator")

    def _sender(self, topic: str) -> tuple[ServiceBusSender, threading.Lock]:
        with self._guard:
            sender = self._senders.get(topic)
            if sender is None:
                sender = self._client.get_topic_sender(topic_name=topic)
                self._senders[topic] = sender
                self._locks[topic] = threading.Lock()
            return sender, self._locks[topic]

    def publish(self, topic: str, message: BusMessage) -> bool:
        """Always ``True``: Service Bus accepts a duplicate ``MessageId`` and drops it without
        telling the sender, so "sent" is all that can be known here."""
        outgoing = to_service_bus_message(message)
        sender, lock = self._sender(topic)
        with lock:
            sender.send_messages(outgoing)
        return True

    def publish_many(self, topic: str, messages: Iterable[BusMessage]) -> int:
        """Send in as few batches as fit (one round trip each); returns the number of batches.

        Every message is size-checked up front, so an oversized one fails the call before any
        of the others is sent. A failure part-way leaves earlier batches sent; resending them is
        harmless because duplicate detection drops repeated ``MessageId``\\ s.
        """
        outgoing = [to_service_bus_message(message) for message in messages]
        if not outgoing:
            return 0
        sender, lock = self._sender(topic)
        with lock:
            return send_in_batches(sender, outgoing)

    def close(self) -> None:
        with self._guard:
            senders, self._senders = list(self._senders.values()), {}
            self._locks = {}
        for sender in senders:
            try:
                sender.close()
            except Exception:  # a broken link must not keep the client open
                log.warning("closing a Service Bus sender failed", exc_info=True)
        self._client.close()

    def __enter__(self) -> ServiceBusPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_in_batches(sender: ServiceBusSender, messages: list[ServiceBusMessage]) -> int:
    """Fill a batch until the link's size limit refuses the next message, send it, start anew.

    The batch measures the AMQP-encoded size, which only the SDK knows exactly; asking it beats
    estimating. A message that does not fit even an empty batch cannot be sent at all.
    """
    sent = 0
    batch = sender.create_message_batch()
    for message in messages:
        if _fits(batch, message):
            continue
        if len(batch) == 0:
            raise _too_large(message, batch)
        sender.send_messages(batch)
        sent += 1
        batch = sender.create_message_batch()
        if not _fits(batch, message):
            raise _too_large(message, batch)
    if len(batch):
        sender.send_messages(batch)
        sent += 1
    return sent


def _fits(batch: ServiceBusMessageBatch, message: ServiceBusMessage) -> bool:
    try:
        batch.add_message(message)
    except MessageSizeExceededError:
        return False
    return True


def _too_large(message: ServiceBusMessage, batch: ServiceBusMessageBatch) -> MessageTooLarge:
    body = message.raw_amqp_message.body
    size = len(body if isinstance(body, bytes) else b"".join(body))
    return MessageTooLarge(str(message.message_id), size, batch.max_size_in_bytes)


class PoolSubscription:
    """A pool's subscription (``dispatch/pool-<name>``), peek-lock, keyless: what a standing
    factory receives from in Azure, and what shadow mode compares."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self._lock = threading.Lock()  # receivers are not thread-safe; attempts settle from threads

    @classmethod
    def from_settings(cls, pool: str, settings: Mapping[str, str]) -> PoolSubscription:
        namespace = settings.get(NAMESPACE_SETTING)
        connection = settings.get(CONNECTION_SETTING)
        if namespace:
            client = ServiceBusClient(namespace, identity.credential(settings, CLIENT_ID_SETTING))
        elif connection:
            client = ServiceBusClient.from_connection_string(connection)
        else:
            raise identity.not_configured("Service Bus", NAMESPACE_SETTING, CONNECTION_SETTING, "the official emulator")
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
            properties = {_text(k): _text(v) for k, v in (msg.application_properties or {}).items()}
            out.append(Delivery(body if isinstance(body, dict) else {}, msg, properties))
        return out

    def complete(self, delivery: Delivery) -> None:
        with self._lock:
            self._receiver.complete_message(delivery.handle)

    def abandon(self, delivery: Delivery) -> None:
        with self._lock:
            self._receiver.abandon_message(delivery.handle)

    def close(self) -> None:
        with self._lock:
            self._receiver.close()


def _text(value: Any) -> Any:
    """AMQP hands application properties back as bytes; the code compares strings."""
    return value.decode() if isinstance(value, bytes) else value
