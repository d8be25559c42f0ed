"""The interfaces the services need. Adapters in ``gigafactory.local`` and ``gigafactory.azure``
implement them; services and tests depend only on these."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gigafactory.domain.factories import Factory
from gigafactory.domain.job import Job


class Conflict(Exception):
    """An optimistic-concurrency precondition failed (ETag mismatch / HTTP 412)."""


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class JobStore(Protocol):
    """Jobs and per-pool capacity. Every update is conditional on the ETag read."""

    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert; when the id exists already, return the stored job and ``False``."""
        ...

    def get(self, job_id: str, pool: str | None = None) -> Job | None: ...

    def replace(self, job: Job) -> Job:
        """Write ``job`` if its ``etag`` is still current, else raise ``Conflict``."""
        ...

    def list(
        self,
        *,
        status: str | None = None,
        product: str | None = None,
        pool: str | None = None,
        limit: int = 50,
        continuation: str | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        """Newest first; the continuation token is opaque to callers."""
        ...

    def queued(self, pool: str, due_before: datetime, limit: int) -> builtins.list[Job]:
        """Queued jobs of one pool due by ``due_before``, highest ``sort_key`` first."""
        ...

    def in_status(self, statuses: builtins.list[str], limit: int = 500) -> builtins.list[Job]:
        """Jobs in any of ``statuses`` (the sweeper's reconciliation read)."""
        ...

    def counts(self, pool: str) -> dict[str, int]:
        """Job counts by status for one pool."""
        ...

    def get_capacity(self, pool: str) -> Capacity: ...

    def replace_capacity(self, capacity: Capacity) -> Capacity:
        """Write if ``capacity.etag`` is current (``None`` = create), else raise ``Conflict``."""
        ...


class FactoryStore(Protocol):
    """Enrolled standing factories."""

    def create_factory(self, factory: Factory) -> Factory: ...

    def get_factory(self, factory_id: str) -> Factory | None: ...

    def replace_factory(self, factory: Factory) -> Factory:
        """Write if ``factory.etag`` is current, else raise ``Conflict``."""
        ...

    def list_factories(self, pool: str | None = None) -> builtins.list[Factory]: ...


class ShadowLog(Protocol):
    """Shadow mode's record of which pool each path delivered a job attempt to."""

    def record_shadow(self, job_id: str, attempt: int, side: str, pool: str, at: datetime) -> None:
        """Idempotent per (job, attempt, side)."""
        ...

    def shadow_records(self, limit: int = 10_000) -> builtins.list[dict[str, object]]: ...


@dataclass
class Capacity:
    """The in-flight set of a pool: job id -> {"attempt": n, "at": iso time}.

    A set rather than a counter so that adding or removing the same job twice is harmless:
    replayed change-feed batches must not leak or double-count slots.
    """

    pool: str
    inflight: dict[str, dict[str, Any]] = field(default_factory=dict)
    etag: str | None = None


@dataclass(frozen=True)
class BusMessage:
    """A broker message as Service Bus sees it: ids and small properties only (claim check)."""

    message_id: str
    body: dict[str, Any]
    application_properties: Mapping[str, str | int] = field(default_factory=dict)
    scheduled_enqueue_time: datetime | None = None
    content_type: str = "application/json"


@dataclass(frozen=True)
class Delivery:
    """One peek-locked message from a subscription."""

    body: dict[str, Any]
    handle: Any  # what the source needs to settle it
    properties: dict[str, Any] = field(default_factory=dict)


class DispatchSource(Protocol):
    """A subscription read with Service Bus semantics: peek-lock receive, then settle."""

    def receive(self, max_messages: int, wait_seconds: float) -> builtins.list[Delivery]: ...

    def complete(self, delivery: Delivery) -> None: ...

    def abandon(self, delivery: Delivery) -> None: ...


class DispatchBus(Protocol):
    def publish(self, topic: str, message: BusMessage) -> bool:
        """``False`` when the broker is known to have dropped a duplicate ``message_id``
        (Service Bus drops them silently, so its adapter always answers ``True``)."""
        ...


class Launcher(Protocol):
    """Starts and stops on-demand factory executions."""

    def start(self, job: Job, env: Mapping[str, str]) -> str:
        """Start one execution for the job's current attempt; returns its name."""
        ...

    def stop(self, execution: str) -> None:
        """Stop an execution; stopping one that has ended is not an error."""
        ...


class LifecycleClient(Protocol):
    """The Durable client surface the relay needs."""

    def start(self, job_id: str, payload: dict[str, Any]) -> bool:
        """Start ``job_lifecycle`` with instance id ``job_id``; ``False`` if it already runs."""
        ...

    def signal(self, job_id: str, payload: dict[str, Any]) -> bool:
        """Raise ``job_changed``; ``False`` when no such running instance exists."""
        ...


class BlobStore(Protocol):
    """Claim-check storage for large manifests and factory logs."""

    def put(self, name: str, data: bytes) -> str: ...

    def get(self, name: str) -> bytes: ...
