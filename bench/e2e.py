"""The whole loop: N jobs with a no-op agent through submit, release, dispatch, launch, a real
subprocess factory, claim, run, complete, and the lifecycle — on the embedded runtime.

Prints jobs/s, submit->claim latency p50/p99, store operations per job (counted by the
store port, split by kind), and the coordinator's resident memory; then one JSON line.
Factories are separate processes and are not in the RSS figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, manifest, pools_file, summary, table
from gigafactory.domain.pools import load_pools
from gigafactory.local.runtime import Runtime, RuntimeConfig
from gigafactory.local.store import SqliteJobStore
from gigafactory.services import submit


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=8, help="the pool's max_parallel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pools = load_pools(pools_file(work / "pools.json", max_parallel=args.parallel))
        runtime = Runtime(RuntimeConfig(data_dir=work / "data", pools=pools, port=free_port()))
        server = threading.Thread(target=runtime.serve, daemon=True)
        server.start()
        time.sleep(0.5)
        rss_before = rss_mb()
        observer = SqliteJobStore(work / "data" / "jobs.db")  # a separate reader, not counted
        ops_before = dict(runtime.store.ops)
        start = time.perf_counter()
        job_ids = [submit.submit(runtime.services, manifest(i))[0].id for i in range(args.n)]
        pending = set(job_ids)
        peak = rss_before
        while pending:
            time.sleep(0.05)
            peak = max(peak, rss_mb())
            for job_id in list(pending):
                job = observer.get(job_id)
                if job is not None and job.terminal:
                    pending.discard(job_id)
        elapsed = time.perf_counter() - start
        ops = {k: runtime.store.ops[k] - ops_before.get(k, 0) for k in runtime.store.ops}
        jobs = [observer.get(j) for j in job_ids]
        latencies = [(j.started_at - j.submitted_at).total_seconds() * 1000 for j in jobs if j and j.started_at]
        # The first max_parallel jobs find a free slot: theirs is the dispatch latency alone.
        first_wave = latencies[: args.parallel]
        succeeded = sum(1 for j in jobs if j and j.status == "succeeded")
        runtime.request_shutdown()
        server.join(15)
    total_ops = sum(ops.values())
    results = {
        "n": args.n,
        "max_parallel": args.parallel,
        "succeeded": succeeded,
        "jobs_per_second": round(args.n / elapsed, 2),
        "submit_to_claim": summary(latencies),
        "submit_to_claim_first_wave": summary(first_wave),
        "store_ops_per_job": round(total_ops / args.n, 2),
        "store_ops_by_kind_per_job": {k: round(v / args.n, 2) for k, v in sorted(ops.items())},
        "coordinator_rss_mb": {"idle": round(rss_before, 1), "peak": round(peak, 1)},
    }
    print(table([
        ("jobs", "succeeded", "jobs/s", "claim p50 ms", "claim p99 ms", "store ops/job", "RSS MB idle/peak"),
        (str(args.n), str(succeeded), str(results["jobs_per_second"]),
         str(results["submit_to_claim"]["p50_ms"]), str(results["submit_to_claim"]["p99_ms"]),
         str(results["store_ops_per_job"]), f"{rss_before:.0f}/{peak:.0f}"),
    ]))
    print("store ops per job by kind:", results["store_ops_by_kind_per_job"])
    print(f"submit->claim of the first {args.parallel} jobs (a free slot each, so dispatch alone): "
          f"p50 {results['submit_to_claim_first_wave']['p50_ms']} ms, "
          f"max-ish p99 {results['submit_to_claim_first_wave']['p99_ms']} ms; the rest include queueing")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
