"""Intake speed: N submissions over HTTP against the embedded runtime, against the same N
straight into the store (and through the submit service without HTTP), in one run, so the
API's overhead shows as a ratio.

The coordinator runs as `gigafactory local` in its own process with a standing pool that has
no factories, so nothing but intake competes for the CPU. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, manifest, pools_file, summary, table
from gigafactory.domain import ids
from gigafactory.domain.job import new_job
from gigafactory.domain.manifest import Manifest
from gigafactory.domain.pools import load_pools
from gigafactory.local.clock import SystemClock
from gigafactory.local.store import SqliteJobStore
from gigafactory.services import submit
from gigafactory.services.context import Services

TOKEN = "bench-token"


def start_coordinator(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    pools = pools_file(work / "pools.json", launch_mode="standing", container=None, max_parallel=1)
    port = free_port()
    env = {**os.environ, "GIGAFACTORY_API_TOKEN": TOKEN, "GIGAFACTORY_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "gigafactory", "local", "--port", str(port), "--data-dir",
                             str(work / "data"), "--pools", str(pools)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("coordinator did not start")


def http_sequential(url: str, n: int) -> tuple[float, list[float]]:
    latencies = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            answer = http.post("/api/jobs", json=manifest(i))
            latencies.append((time.perf_counter() - t0) * 1000)
            assert answer.status_code == 202, answer.text
        return time.perf_counter() - start, latencies


def http_concurrent(url: str, n: int, workers: int) -> float:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                      limits=httpx.Limits(max_connections=workers)) as http:
        def one(i: int) -> None:
            assert http.post("/api/jobs", json=manifest(i)).status_code == 202

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(n)))
        return time.perf_counter() - start


def direct_store(work: Path, n: int) -> tuple[float, list[float]]:
    store = SqliteJobStore(work / "direct.db")
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        store.create(new_job(job_id=ids.new_job_id(), manifest=Manifest.model_validate(manifest(i)), pool="local",
                             now=datetime.now(UTC)))
        latencies.append((time.perf_counter() - t0) * 1000)
    return time.perf_counter() - start, latencies


def service_only(work: Path, n: int) -> tuple[float, list[float]]:
    svc = Services(store=SqliteJobStore(work / "service.db"), pools=load_pools(), clock=SystemClock(),
                   token_secret=b"x" * 32)
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        submit.submit(svc, manifest(i))
        latencies.append((time.perf_counter() - t0) * 1000)
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1000, help="submissions per variant")
    parser.add_argument("--workers", type=int, default=8, help="client threads for the concurrent HTTP run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store_s, store_lat = direct_store(work, args.n)
        svc_s, svc_lat = service_only(work, args.n)
        proc, url = start_coordinator(work)
        try:
            http_s, http_lat = http_sequential(url, args.n)
            conc_s = http_concurrent(url, args.n, args.workers)
        finally:
            proc.terminate()
            proc.wait(15)
    results = {
        "n": args.n,
        "store": {"jobs_per_second": round(args.n / store_s, 1), **summary(store_lat)},
        "service": {"jobs_per_second": round(args.n / svc_s, 1), **summary(svc_lat)},
        "http": {"jobs_per_second": round(args.n / http_s, 1), **summary(http_lat)},
        "http_concurrent": {"jobs_per_second": round(args.n / conc_s, 1), "workers": args.workers},
    }
    results["ratio_http_to_store_p50"] = round(results["http"]["p50_ms"] / results["store"]["p50_ms"], 2)
    results["ratio_store_to_http_throughput"] = round(
        results["store"]["jobs_per_second"] / results["http"]["jobs_per_second"], 2)
    rows = [("variant", "jobs/s", "p50 ms", "p99 ms")]
    for name in ("store", "service", "http"):
        r = results[name]
        rows.append((name, str(r["jobs_per_second"]), str(r["p50_ms"]), str(r["p99_ms"])))
    rows.append((f"http x{args.workers}", str(results["http_concurrent"]["jobs_per_second"]), "-", "-"))
    print(table(rows))
    print(f"HTTP p50 is {results['ratio_http_to_store_p50']}x the direct store write; "
          f"direct store throughput is {results['ratio_store_to_http_throughput']}x HTTP's")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
