"""A pools file with the default on-demand pool plus a standing pool, for fleet tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gigafactory.domain.pools import DEFAULT_POOLS_FILE

FLEET = "fleet"


def fleet_pools(path: Path, *, standing_parallel: int = 4) -> Path:
    pools: dict[str, Any] = json.loads(DEFAULT_POOLS_FILE.read_text())
    local = pools["pools"][0]
    pools["pools"].append({
        "name": FLEET,
        "capabilities": ["fleet", "linux"],
        "launch_mode": "standing",
        "max_parallel": standing_parallel,
        "cost_rank": 2,
        "profiles": local["profiles"],
    })
    path.write_text(json.dumps(pools))
    return path


def fleet_manifest(**overrides: Any) -> dict[str, Any]:
    return {"product": "fleet", "title": "standing", "task": "hello", "agent": {"profile": "echo"},
            "requirements": {"capabilities": ["fleet"]}, **overrides}
