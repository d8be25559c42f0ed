"""The job manifest: what a submitter may ask for, with every bound stated once."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gigafactory.domain.timefmt import UtcDatetime

SCHEMA_VERSION = 1
MAX_TASK_CHARS = 4_000_000
MAX_ARGS = 32
MAX_ARG_CHARS = 65_536
MAX_LABELS = 32
MAX_CAPABILITIES = 16

_KEY = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_GIT_URL = re.compile(
    r"^(https://[A-Za-z0-9.-]+(:[0-9]+)?/[^\s]+|ssh://[^\s@]+@[A-Za-z0-9.-]+(:[0-9]+)?/[^\s]+"
    r"|[A-Za-z0-9_.-]+@[A-Za-z0-9.-]+:[^\s]+)$"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Repo(_Strict):
    url: str = Field(max_length=2048)
    ref: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[^\s~^:?*\[\\]+$")

    @field_validator("url")
    @classmethod
    def _git_url(cls, value: str) -> str:
        if not _GIT_URL.match(value):
            raise ValueError("must be an https:// or ssh git URL (https://host/org/repo.git or git@host:org/repo.git)")
        return value


class Agent(_Strict):
    profile: str = Field(default="echo", pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    args: dict[str, str] = Field(default_factory=dict, max_length=MAX_ARGS)

    @field_validator("args")
    @classmethod
    def _args(cls, args: dict[str, str]) -> dict[str, str]:
        for key, value in args.items():
            if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", key):
                raise ValueError(f"key '{key[:64]}' must match ^[a-z_][a-z0-9_]{{0,62}}$")
            if key == "task":
                raise ValueError("key 'task' is reserved for the manifest's task")
            if len(value) > MAX_ARG_CHARS:
                raise ValueError(f"value of '{key}' is longer than {MAX_ARG_CHARS} characters")
        return args


class Requirements(_Strict):
    capabilities: list[str] = Field(default_factory=lambda: ["linux"], max_length=MAX_CAPABILITIES)
    resource_class: Literal["small", "medium", "large"] = "small"

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, caps: list[str]) -> list[str]:
        for cap in caps:
            if not re.match(_KEY, cap):
                raise ValueError(f"capability '{cap[:64]}' must match {_KEY}")
        return sorted(set(caps))


class Retry(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_seconds: float = Field(default=30, ge=0, le=3600)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10)
    max_backoff_seconds: float = Field(default=3600, ge=0, le=86_400)


class Timeouts(_Strict):
    schedule_to_start_seconds: int = Field(default=900, ge=5, le=86_400)
    start_to_close_seconds: int = Field(default=14_400, ge=5, le=7 * 86_400)
    heartbeat_seconds: int = Field(default=60, ge=5, le=3600)

    @model_validator(mode="after")
    def _heartbeat_within_run(self) -> Timeouts:
        if self.heartbeat_seconds > self.start_to_close_seconds:
            raise ValueError("heartbeat_seconds must not exceed start_to_close_seconds")
        return self


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    product: str = Field(pattern=_KEY)
    title: str = Field(min_length=1, max_length=200)
    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS)
    repo: Repo | None = None
    agent: Agent = Field(default_factory=Agent)
    requirements: Requirements = Field(default_factory=Requirements)
    priority: Literal["P0", "P1", "P2", "P3"] = "P2"
    deadline: UtcDatetime | None = None
    retry: Retry = Field(default_factory=Retry)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not re.match(_KEY, key):
                raise ValueError(f"key '{key[:64]}' must match {_KEY}")
            if len(value) > 256:
                raise ValueError(f"value of '{key}' is longer than 256 characters")
        return labels
