"""Shared helpers for the benchmarks: percentiles, free ports, a pools file, printing."""

from __future__ import annotations

import json
import socket
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values_ms, 50), 3),
        "p99_ms": round(percentile(values_ms, 99), 3),
        "mean_ms": round(statistics.fmean(values_ms), 3) if values_ms else float("nan"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pools_file(path: Path, **changes: Any) -> Path:
    pools = json.loads((ROOT / "gigafactory" / "pools.json").read_text())
    pools["pools"][0].update(changes)
    path.write_text(json.dumps(pools))
    return path


def manifest(i: int, **overrides: Any) -> dict[str, Any]:
    return {"product": f"bench-{i % 3}", "title": f"bench job {i}", "task": "echo bench",
            "agent": {"profile": "echo"}, "requirements": {"capabilities": ["local"]}, **overrides}


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
