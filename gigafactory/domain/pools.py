"""Pool definitions and capability routing.

Pools live in one JSON file that Bicep also reads (``loadJsonContent``), so the model here
accepts exactly that file's shape and nothing more.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_POOLS_FILE = Path(__file__).resolve().parent.parent / "pools.json"

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
PLACEHOLDER = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")


class RoutingError(ValueError):
    """No pool can run a job; the message lists what the pools offer."""


class Profile(BaseModel):
    """An agent profile: an argv template whose ``{name}`` elements are replaced whole."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1)
    defaults: dict[str, str] = Field(default_factory=dict)
    # None: any non-zero exit may be retried; a list: only those exit codes may.
    retryable_exit_codes: list[int] | None = None

    def is_retryable(self, exit_code: int) -> bool:
        if exit_code == 0:
            return False
        return self.retryable_exit_codes is None or exit_code in self.retryable_exit_codes

    def render(self, task: str, args: dict[str, str]) -> list[str]:
        """Substitute whole argv elements; never a shell, never a partial string."""
        values = {**self.defaults, **args, "task": task}
        out: list[str] = []
        for element in self.argv:
            match = PLACEHOLDER.match(element)
            if match is None:
                out.append(element)
                continue
            name = match.group(1)
            if name not in values:
                raise ValueError(f"agent.args.{name}: required by the profile's argv")
            out.append(values[name])
        return out


class Container(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
    image: str = Field(min_length=1)
    cpu: float = Field(gt=0, le=4)
    memory: str = Field(pattern=r"^[0-9.]+Gi$")
    replica_timeout_seconds: int = Field(ge=60, le=86400)


class Pool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    capabilities: list[str] = Field(min_length=1)
    launch_mode: Literal["on-demand", "standing"]
    max_parallel: int = Field(ge=1, le=1000)
    cost_rank: int = Field(default=1, ge=0, le=1000)
    profiles: dict[str, Profile] = Field(min_length=1)
    container: Container | None = None

    @model_validator(mode="after")
    def _container_for_on_demand(self) -> Pool:
        if self.launch_mode == "on-demand" and self.container is None:
            raise ValueError(f"pool {self.name}: an on-demand pool needs a container")
        return self

    def covers(self, capabilities: list[str]) -> bool:
        return set(capabilities) <= set(self.capabilities)


class PoolSet(BaseModel):
    model_config = ConfigDict(extra="allow")

    pools: list[Pool] = Field(min_length=1)

    @field_validator("pools")
    @classmethod
    def _unique_names(cls, pools: list[Pool]) -> list[Pool]:
        names = [p.name for p in pools]
        if len(names) != len(set(names)):
            raise ValueError("pool names must be unique")
        return pools

    def get(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def names(self) -> list[str]:
        return [p.name for p in self.pools]

    def route(self, capabilities: list[str], profile: str) -> Pool:
        """The most specific (fewest extra capabilities), then cheapest pool that covers the job."""
        matches = [p for p in self.pools if p.covers(capabilities) and profile in p.profiles]
        if not matches:
            offered = "; ".join(
                f"{p.name} (capabilities {sorted(p.capabilities)}, profiles {sorted(p.profiles)})"
                for p in self.pools
            )
            raise RoutingError(
                f"requirements.capabilities {sorted(capabilities)} with agent.profile "
                f"'{profile}' match no pool; pools: {offered}"
            )
        return min(matches, key=lambda p: (len(p.capabilities) - len(capabilities), p.cost_rank, p.name))


def parse_pools(text: str) -> PoolSet:
    return PoolSet.model_validate(json.loads(text))


def load_pools(path: str | Path | None = None) -> PoolSet:
    return parse_pools(Path(path or DEFAULT_POOLS_FILE).read_text(encoding="utf-8"))
