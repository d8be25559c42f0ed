"""The adapters one use case needs, gathered so entrypoints can hand them over in one piece."""

from __future__ import annotations

from dataclasses import dataclass, field

from gigafactory.domain.pools import PoolSet
from gigafactory.ports import (
    BlobStore,
    Clock,
    DispatchBus,
    FactoryStore,
    JobStore,
    Launcher,
    LifecycleClient,
    ShadowLog,
)

DISPATCH_MODES = ("poll", "shadow", "broker")


@dataclass
class Services:
    store: JobStore
    pools: PoolSet
    clock: Clock
    token_secret: bytes
    coordinator_url: str = "http://127.0.0.1:7071"
    bus: DispatchBus | None = None
    lifecycle: LifecycleClient | None = None
    launcher: Launcher | None = None
    blobs: BlobStore | None = None
    dispatch_mode: str = "broker"
    factories: FactoryStore | None = None
    shadow_log: ShadowLog | None = None
    # Presented by standing factories to enroll (``POST /api/factories``).
    enrollment_secret: str | None = None
    # Manifests whose JSON is larger than this go to blob storage (claim check).
    claim_check_bytes: int = 64 * 1024
    attempt_token_ttl_seconds: int = 8 * 86_400
    extras: dict[str, object] = field(default_factory=dict)
