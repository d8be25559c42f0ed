"""Standing factories: enrolled hosts that take work for one pool.

A factory's credential is ``gf_<factory id>_<secret>``: the id lets the coordinator find the
record with one point read; only the secret's sha256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, Field

from gigafactory.domain.timefmt import UtcDatetime

# A factory that has not heartbeaten for this long (three missed beats) is offline; its attempts
# are recovered by their lifecycle timers (heartbeat lease), not by the sweeper.
OFFLINE_AFTER = timedelta(seconds=90)
HEARTBEAT_SECONDS = 30


class FactoryStatus(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    OFFLINE = "offline"
    RETIRED = "retired"


class CredentialError(Exception):
    """Missing, malformed, wrong or retired factory credential (HTTP 401/403)."""


class Factory(BaseModel):
    id: str
    type: str = "factory"
    pool: str
    name: str = Field(min_length=1, max_length=100)
    slots: int = Field(ge=1, le=64)
    status: FactoryStatus = FactoryStatus.ACTIVE
    credential_sha256: str
    enrolled_at: UtcDatetime
    last_heartbeat_at: UtcDatetime
    running: list[str] = Field(default_factory=list)
    etag: str | None = Field(default=None, exclude=True)

    def to_doc(self) -> dict[str, object]:
        return self.model_dump(mode="json")

    @classmethod
    def from_doc(cls, doc: dict[str, object]) -> Factory:
        factory = cls.model_validate(doc)
        factory.etag = doc.get("_etag")  # type: ignore[assignment]
        return factory

    @property
    def takes_work(self) -> bool:
        return self.status is FactoryStatus.ACTIVE


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def enroll(*, pool: str, name: str, slots: int, now: datetime) -> tuple[Factory, str]:
    factory_id = "f-" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    factory = Factory(id=factory_id, pool=pool, name=name, slots=slots, credential_sha256=_hash(secret),
                      enrolled_at=now, last_heartbeat_at=now)
    return factory, f"gf_{factory_id}_{secret}"


def credential_factory_id(credential: str) -> str:
    parts = credential.split("_", 2)
    if len(parts) != 3 or parts[0] != "gf" or not parts[1].startswith("f-"):
        raise CredentialError("factory credential: malformed")
    return parts[1]


def verify(factory: Factory, credential: str) -> None:
    secret = credential.split("_", 2)[2]
    if not hmac.compare_digest(_hash(secret), factory.credential_sha256):
        raise CredentialError("factory credential: wrong")
    if factory.status is FactoryStatus.RETIRED:
        raise CredentialError(f"factory {factory.id} is retired")


def _with(factory: Factory, **changes: object) -> Factory:
    updated = factory.model_copy(update=changes)
    updated.etag = factory.etag
    return updated


def heartbeat(factory: Factory, running: list[str], now: datetime) -> Factory:
    status = FactoryStatus.ACTIVE if factory.status is FactoryStatus.OFFLINE else factory.status
    return _with(factory, last_heartbeat_at=now, running=running[:64], status=status)


def drain(factory: Factory) -> Factory:
    if factory.status is FactoryStatus.RETIRED:
        raise CredentialError(f"factory {factory.id} is retired")
    return _with(factory, status=FactoryStatus.DRAINING)


def retire(factory: Factory) -> Factory:
    return _with(factory, status=FactoryStatus.RETIRED, running=[])


def is_silent(factory: Factory, now: datetime) -> bool:
    return factory.status in (FactoryStatus.ACTIVE, FactoryStatus.DRAINING) and \
        now - factory.last_heartbeat_at > OFFLINE_AFTER


def mark_offline(factory: Factory) -> Factory:
    return _with(factory, status=FactoryStatus.OFFLINE)
