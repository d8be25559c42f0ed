"""Dispatch cost and speed: the same standing-factory workload through ``poll`` mode (with the
M0 idle backoff) and ``broker`` mode, one after the other in one run, each on a fresh data dir.

Why: the redesign's headline is that broker delivery stops the store from being polled around
the clock. This measures it instead of estimating it. Per mode, N no-op jobs (the ``echo``
profile) are submitted over HTTP to an embedded coordinator serving a standing pool, F
in-process standing factories with S slots each take them, and after the last job is terminal
the fleet sits idle for T seconds. Store operations come from the store port's own counters
(every caller, split by caller and kind); the coordinator's sweeper runs on its default 60 s
timer and is included.

Measured per mode:
  store_ops_per_job                 all store operations in the busy phase / N
  idle_store_ops_per_factory_hour   all store operations in the idle phase / F / (T / 3600)
  latency_p50_ms, latency_p99_ms    submit -> claim (job ``started_at - submitted_at``), read
                                    through a separate store handle so the reads are not counted
  jobs_per_second                   N / busy-phase wall time (first submit to last terminal)

Also shown: the claim latency of the first F x S jobs (they find a free slot, so it is dispatch
alone), the idle requests each factory made, and how often a job was released and then returned
to the queue. The idle window starts right after the work, so in poll mode it includes the
backoff's ramp from 1 s to its 60 s cap. Broker mode runs first: its shutdown waits out the
factories' 30 s long-polls while the poll run goes on.

The legacy poller (a fixed 1 s poll, no backoff) is not run: it is derived from the ops per
empty lease measured here. The figures are also translated into Cosmos DB request units and
serverless cost under stated, estimated per-operation charges. Prints tables, then one JSON
line ``{"broker": {...}, "poll": {...}}`` as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, percentile, table
from gigafactory.domain.job import Job
from gigafactory.domain.pools import load_pools
from gigafactory.domain.states import TERMINAL
from gigafactory.factory.serve import ServeConfig, StandingFactory
from gigafactory.local.runtime import Runtime, RuntimeConfig
from gigafactory.local.store import SqliteJobStore
from gigafactory.services.lease import BACKOFF_MAX_SECONDS
from tests.fleet import FLEET, fleet_manifest, fleet_pools

MODES = ("broker", "poll")  # broker first: its long-polls end while the poll run goes on
HOURS_PER_MONTH = 730
# Cosmos DB charges: estimates for ~2 KB documents with this project's indexing policy.
RU_READ = 1.0  # point read
RU_WRITE = (6.0, 10.0)  # insert or replace, low and high
RU_QUERY = 3.0  # single-partition indexed query returning up to 5 documents
USD_PER_MILLION_RU = 0.25  # serverless list price: verify against the current price sheet
LEGACY_POLL_SECONDS = 1.0
# Callers that keep going while the fleet is idle; the others are the work's own tail.
IDLE_CALLERS = frozenset({"lease", "factories", "broker"})


def endpoint(path: str) -> str:
    if path.endswith("/lease"):
        return "lease"
    if path.endswith("/messages/receive"):
        return "receive"
    if "/messages/" in path:
        return "settle"
    if path.endswith("/heartbeat"):
        return "heartbeat"
    if path.endswith("/attempts"):
        return "attempt-token"
    return "enroll" if path == "/api/factories" else "other"


class Calls:
    """One factory's requests to the coordinator, counted on the client side by endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        self._answered: Counter[str] = Counter()  # "endpoint:status"

    def on_request(self, request: httpx.Request) -> None:
        with self._lock:
            self._sent[endpoint(request.url.path)] += 1

    def on_response(self, response: httpx.Response) -> None:
        with self._lock:
            self._answered[f"{endpoint(response.request.url.path)}:{response.status_code}"] += 1

    def asked_for_work(self) -> bool:
        with self._lock:
            return self._sent["lease"] + self._sent["receive"] > 0

    def answered(self) -> Counter[str]:
        with self._lock:
            return Counter(self._answered)


def store_ops(runtime: Runtime) -> Counter[str]:
    """The runtime store's operation counts by ``caller:kind`` (a consistent copy)."""
    while True:
        try:
            return Counter(dict(runtime.store.ops_by_caller))
        except RuntimeError:  # a new caller:kind appeared during the copy
            continue


def by_kind(ops: Counter[str]) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for key, count in ops.items():
        kinds[key.rsplit(":", 1)[1]] += count
    return kinds


def request_units(kinds: Counter[str] | dict[str, float]) -> tuple[float, float]:
    """Estimated RU for these operation counts, with writes at the low and the high charge."""
    base = kinds.get("read", 0) * RU_READ + kinds.get("query", 0) * RU_QUERY
    writes = kinds.get("write", 0)
    return base + writes * RU_WRITE[0], base + writes * RU_WRITE[1]


def serve_factory(factory: StandingFactory) -> None:
    try:
        factory.serve()
    finally:
        factory.http.close()


@dataclass
class Fleet:
    """One mode's coordinator (served in a thread) and its standing factories."""

    mode: str
    work: Path
    runtime: Runtime
    server: threading.Thread
    factories: list[StandingFactory] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    calls: list[Calls] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.cfg.port}"

    def answered(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for calls in self.calls:
            total += calls.answered()
        return total

    def stop(self) -> None:
        """Stop the factories (a broker long-poll returns within its wait), then the server."""
        for factory in self.factories:
            factory.stop.set()
        for thread in self.threads:
            thread.join(60)
        self.runtime.request_shutdown()
        self.server.join(60)
        alive = [t.name for t in (*self.threads, self.server) if t.is_alive()]
        if alive:
            print(f"{self.mode}: still running after shutdown: {', '.join(alive)}", file=sys.stderr)


def start_fleet(mode: str, work: Path, factories: int, slots: int) -> Fleet:
    work.mkdir(parents=True)
    (work / "workspaces").mkdir()
    pools = load_pools(fleet_pools(work / "pools.json", standing_parallel=factories * slots))
    runtime = Runtime(RuntimeConfig(data_dir=work / "data", pools=pools, port=free_port(), dispatch_mode=mode))
    ready = threading.Event()
    server = threading.Thread(target=runtime.serve, kwargs={"on_ready": ready.set}, name=f"{mode}-coordinator",
                             daemon=True)
    server.start()
    if not ready.wait(30):
        raise RuntimeError(f"{mode}: the coordinator did not start")
    fleet = Fleet(mode, work, runtime, server)
    for i in range(factories):
        factory = StandingFactory(ServeConfig(
            url=fleet.url, pool=FLEET, slots=slots, name=f"bench-{mode}-{i}",
            enrollment_secret=runtime.enrollment_secret, state_dir=work / f"factory-{i}",
            workdir=work / "workspaces", kill_grace_seconds=2.0))
        calls = Calls()
        factory.http.event_hooks = {"request": [calls.on_request], "response": [calls.on_response]}
        thread = threading.Thread(target=serve_factory, args=(factory,), name=f"{mode}-factory-{i}", daemon=True)
        fleet.factories.append(factory)
        fleet.calls.append(calls)
        fleet.threads.append(thread)
        thread.start()
    deadline = time.monotonic() + 30
    while not all(calls.asked_for_work() for calls in fleet.calls):
        if time.monotonic() > deadline or not all(t.is_alive() for t in fleet.threads):
            fleet.stop()
            raise RuntimeError(f"{mode}: the standing factories did not enroll and ask for work")
        time.sleep(0.05)
    return fleet


def settle(runtime: Runtime, quiet: float = 1.0, limit: float = 15.0) -> None:
    """Wait until the work's own tail (relay, lifecycle, reports) has stopped moving, so it is
    billed to the busy phase and the idle phase sees only what idleness costs."""

    def work_ops() -> Counter[str]:
        return Counter({k: v for k, v in store_ops(runtime).items() if k.split(":")[0] not in IDLE_CALLERS})

    last, quiet_since, deadline = work_ops(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = work_ops()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            return


def terminal_count(observer: SqliteJobStore) -> int:
    return sum(n for status, n in observer.counts(FLEET).items() if status in TERMINAL)


def returned_to_queue(job: Job) -> int:
    """How often a job went dispatched -> queued at the same attempt (a release undone)."""
    return sum(1 for prev, cur in pairwise(job.history)
               if prev.status == "dispatched" and cur.status == "queued" and prev.attempt == cur.attempt)


def measure(fleet: Fleet, n: int, idle: float) -> dict[str, Any]:
    runtime, factories = fleet.runtime, len(fleet.factories)
    observer = SqliteJobStore(fleet.work / "data" / "jobs.db")  # a separate handle: its reads are not counted
    try:
        before = store_ops(runtime)
        with httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {runtime.api_token}"},
                          timeout=30) as api:
            start = time.perf_counter()
            job_ids = []
            for i in range(n):
                answer = api.post("/api/jobs", json=fleet_manifest(title=f"dispatch bench {i}"))
                answer.raise_for_status()
                job_ids.append(str(answer.json()["id"]))
        deadline = time.monotonic() + 120 + n
        while terminal_count(observer) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{fleet.mode}: only {terminal_count(observer)} of {n} jobs finished")
            time.sleep(0.05)
        busy_seconds = time.perf_counter() - start
        settle(runtime)
        after_busy, calls_busy = store_ops(runtime), fleet.answered()
        print(f"{fleet.mode}: {n} jobs in {busy_seconds:.1f} s; idle for {idle:g} s", file=sys.stderr)
        idle_start = time.perf_counter()
        time.sleep(idle)
        after_idle, calls_idle = store_ops(runtime), fleet.answered()
        idle_seconds = time.perf_counter() - idle_start
        jobs = [observer.get(job_id) for job_id in job_ids]
    finally:
        observer.close()
    busy, idle_ops, idle_calls = after_busy - before, after_idle - after_busy, calls_idle - calls_busy
    latencies = [(j.started_at - j.submitted_at).total_seconds() * 1000 if j and j.started_at else None
                 for j in jobs]
    claimed = [ms for ms in latencies if ms is not None]
    # The first F x S jobs find a free slot: their latency is dispatch alone, without queueing.
    first_wave = [ms for ms in latencies[:factories * fleet.factories[0].cfg.slots] if ms is not None]

    def per_factory_hour(count: float) -> float:
        return count / factories / (idle_seconds / 3600)

    idle_kinds = by_kind(idle_ops)
    ru_job = request_units({k: v / n for k, v in by_kind(busy).items()})
    ru_hour = request_units({k: per_factory_hour(v) for k, v in idle_kinds.items()})
    result: dict[str, Any] = {
        "store_ops_per_job": round(sum(busy.values()) / n, 2),
        "idle_store_ops_per_factory_hour": round(per_factory_hour(sum(idle_ops.values())), 1),
        "latency_p50_ms": round(percentile(claimed, 50), 1),
        "latency_p99_ms": round(percentile(claimed, 99), 1),
        "jobs_per_second": round(n / busy_seconds, 2),
        "jobs": n,
        "succeeded": sum(1 for j in jobs if j and j.status == "succeeded"),
        "factories": factories,
        "slots": fleet.factories[0].cfg.slots,
        "busy_seconds": round(busy_seconds, 2),
        "latency_first_wave_p50_ms": round(percentile(first_wave, 50), 1),
        "latency_first_wave_max_ms": round(max(first_wave, default=float("nan")), 1),
        "releases_returned_to_queue": sum(returned_to_queue(j) for j in jobs if j),
        "idle_seconds": round(idle_seconds, 1),
        "ops_by_caller_busy_per_job": {k: round(v / n, 2) for k, v in sorted(busy.items())},
        "ops_by_caller_idle": {k: round(per_factory_hour(v), 1) for k, v in sorted(idle_ops.items())},
        "requests_idle_per_factory_hour": {k: round(per_factory_hour(v), 1) for k, v in sorted(idle_calls.items())},
        "ru_per_job": [round(x, 1) for x in ru_job],
        "idle_ru_per_factory_month": [round(x * HOURS_PER_MONTH) for x in ru_hour],
        "idle_usd_per_factory_month": [round(x * HOURS_PER_MONTH / 1e6 * USD_PER_MILLION_RU, 4) for x in ru_hour],
    }
    empty_leases = idle_calls["lease:204"]
    if empty_leases:
        lease_ops = Counter({k: v for k, v in idle_ops.items() if k.startswith("lease:")})
        per_lease = {kind: count / empty_leases for kind, count in by_kind(lease_ops).items()}
        result["ops_per_empty_lease"] = round(sum(per_lease.values()), 2)
        result["ops_per_empty_lease_by_kind"] = {k: round(v, 2) for k, v in sorted(per_lease.items())}
        for key, every in (("legacy_1s_poll", LEGACY_POLL_SECONDS), ("m0_at_cap", BACKOFF_MAX_SECONDS)):
            calls_per_hour = 3600 / every
            ru = request_units({k: v * calls_per_hour for k, v in per_lease.items()})
            result[f"{key}_derived"] = {
                "lease_calls_per_factory_hour": round(calls_per_hour, 1),
                "idle_store_ops_per_factory_hour": round(calls_per_hour * sum(per_lease.values()), 1),
                "idle_ru_per_factory_month": [round(x * HOURS_PER_MONTH) for x in ru],
                "idle_usd_per_factory_month": [round(x * HOURS_PER_MONTH / 1e6 * USD_PER_MILLION_RU, 4) for x in ru],
            }
    return result


def ratio(broker: float, poll: float) -> str:
    return f"{broker / poll:.2f}x" if poll else "n/a"


def span(values: list[float], fmt: str = "{:,.0f}") -> str:
    low, high = values
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    poll, broker = results["poll"], results["broker"]
    print(f"dispatch: {args.n} jobs (echo profile), {args.factories} standing factories x {args.slots} slots, "
          f"then {args.idle:g} s idle; each mode on a fresh data dir")
    headline: list[tuple[str, ...]] = [("metric", "poll (M0 backoff)", "broker", "broker/poll")]
    headline.append(("jobs succeeded", f"{poll['succeeded']}/{poll['jobs']}", f"{broker['succeeded']}/{broker['jobs']}",
                     ""))
    headline.append(("busy phase s", str(poll["busy_seconds"]), str(broker["busy_seconds"]), ""))
    headline.append((f"claim ms, first {args.factories * args.slots} jobs p50/max",
                     f"{poll['latency_first_wave_p50_ms']:,}/{poll['latency_first_wave_max_ms']:,}",
                     f"{broker['latency_first_wave_p50_ms']:,}/{broker['latency_first_wave_max_ms']:,}", ""))
    headline.append(("releases returned to queue", str(poll["releases_returned_to_queue"]),
                     str(broker["releases_returned_to_queue"]), ""))
    for key in ("jobs_per_second", "latency_p50_ms", "latency_p99_ms", "store_ops_per_job",
                "idle_store_ops_per_factory_hour"):
        headline.append((key, f"{poll[key]:,}", f"{broker[key]:,}", ratio(broker[key], poll[key])))
    print(table(headline))
    print("latency = submit -> claim over all jobs, so it includes waiting for a free slot; the first "
          "F x S jobs find one free, so theirs is dispatch alone")
    if poll["releases_returned_to_queue"] or broker["releases_returned_to_queue"]:
        print("releases returned to queue: queued jobs the coordinator moved to dispatched and then back to "
              "queued at the same attempt; each costs store operations that are counted above")

    print()
    print("idle phase, store operations per factory-hour by caller:kind (every caller; the coordinator's "
          "sweeper, every 60 s, is included)")
    keys = sorted(set(poll["ops_by_caller_idle"]) | set(broker["ops_by_caller_idle"]))
    rows: list[tuple[str, ...]] = [("caller:kind", "poll", "broker")]
    rows += [(k, f"{poll['ops_by_caller_idle'].get(k, 0):,}", f"{broker['ops_by_caller_idle'].get(k, 0):,}")
             for k in keys]
    rows.append(("total", f"{poll['idle_store_ops_per_factory_hour']:,}",
                 f"{broker['idle_store_ops_per_factory_hour']:,}"))
    print(table(rows))
    keys = sorted(set(poll["requests_idle_per_factory_hour"]) | set(broker["requests_idle_per_factory_hour"]))
    rows = [("factory request:status", "poll", "broker")]
    rows += [(k, f"{poll['requests_idle_per_factory_hour'].get(k, 0):,}",
              f"{broker['requests_idle_per_factory_hour'].get(k, 0):,}") for k in keys]
    print(table(rows))
    print("(requests per factory-hour in the idle phase, counted by the factories' HTTP clients; a broker "
          "receive is a long-poll of up to 30 s)")
    shares = []
    for name, result in (("poll", poll), ("broker", broker)):
        beats = sum(v for k, v in result["ops_by_caller_idle"].items() if k.startswith("factories:"))
        total = result["idle_store_ops_per_factory_hour"]
        shares.append(f"{name} {beats:,.0f} ({beats / total:.0%})" if total else f"{name} {beats:,.0f}")
    print(f"factory heartbeats (caller 'factories') in the idle phase, ops per factory-hour: {', '.join(shares)}")

    print()
    print(f"Cosmos DB estimate (serverless): read {RU_READ:g} RU, write {RU_WRITE[0]:g}-{RU_WRITE[1]:g} RU "
          f"(~2 KB doc, our indexing), indexed single-partition query (<=5 docs) {RU_QUERY:g} RU -- estimates; "
          f"US${USD_PER_MILLION_RU} per million RU is the list price, to verify; month = {HOURS_PER_MONTH} h")
    legacy, cap = poll.get("legacy_1s_poll_derived"), poll.get("m0_at_cap_derived")
    cols: list[str] = ["", "poll (M0), measured", "broker, measured"]
    if legacy and cap:
        cols += ["poll M0 at 60 s cap (derived)", "legacy 1 s poll (derived)"]
    rows = [tuple(cols)]
    rows.append(("RU per job", span(poll["ru_per_job"], "{:,.1f}"), span(broker["ru_per_job"], "{:,.1f}"),
                 *(["-", "-"] if legacy else [])))
    extra: list[dict[str, Any]] = [cap, legacy] if legacy and cap else []
    rows.append(("idle store ops per factory-hour", f"{poll['idle_store_ops_per_factory_hour']:,}",
                 f"{broker['idle_store_ops_per_factory_hour']:,}",
                 *[f"{d['idle_store_ops_per_factory_hour']:,}" for d in extra]))
    rows.append(("idle RU per factory-month", span(poll["idle_ru_per_factory_month"]),
                 span(broker["idle_ru_per_factory_month"]), *[span(d["idle_ru_per_factory_month"]) for d in extra]))
    rows.append(("idle US$ per factory-month", span(poll["idle_usd_per_factory_month"], "{:.3f}"),
                 span(broker["idle_usd_per_factory_month"], "{:.3f}"),
                 *[span(d["idle_usd_per_factory_month"], "{:.3f}") for d in extra]))
    print(table(rows))
    if legacy and cap:
        print(f"derived columns: lease calls only (no heartbeats), {poll['ops_per_empty_lease']} store ops per "
              f"empty lease as measured in this run ({poll['ops_per_empty_lease_by_kind']}); legacy = one lease "
              f"per factory per {LEGACY_POLL_SECONDS:g} s, M0 at cap = one per {BACKOFF_MAX_SECONDS:g} s")
    print("notes: busy-phase ops include the relay/lifecycle tail after the last job ends; the relay's "
          "change-feed reads are not store operations and are not counted. Poll factories begin the busy phase "
          f"with a fresh backoff; a fleet idle for minutes first sleeps up to {BACKOFF_MAX_SECONDS:g} s +/-20 % "
          "before its next lease, which a burst's first job waits out. The idle figures cover the first "
          f"{args.idle:g} s after the work, including the poll backoff's ramp-up.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="jobs per mode")
    parser.add_argument("-f", "--factories", type=int, default=4, help="standing factories")
    parser.add_argument("-s", "--slots", type=int, default=2, help="slots per factory")
    parser.add_argument("-t", "--idle", type=float, default=60.0, help="idle seconds after the work")
    parser.add_argument("--quick", action="store_true", help="N=40, F=2, S=2, T=35 (one heartbeat period fits)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.factories, args.slots, args.idle = 40, 2, 2, 35.0
    results: dict[str, dict[str, Any]] = {}
    stopping: list[threading.Thread] = []
    with tempfile.TemporaryDirectory(prefix="gigafactory-dispatch-bench-", ignore_cleanup_errors=True) as tmp:
        try:
            for mode in MODES:
                fleet = start_fleet(mode, Path(tmp) / mode, args.factories, args.slots)
                try:
                    results[mode] = measure(fleet, args.n, args.idle)
                finally:
                    # Shut this mode down while the next one runs: it only waits for long-polls.
                    stopper = threading.Thread(target=fleet.stop, name=f"{mode}-stop")
                    stopper.start()
                    stopping.append(stopper)
        finally:
            for stopper in stopping:
                stopper.join()
            wait_for_threads(40.0)
    report(results, args)
    broker_vs_poll = {k: round(results["broker"][k] / results["poll"][k], 3) if results["poll"][k] else None
                      for k in ("store_ops_per_job", "idle_store_ops_per_factory_hour", "latency_p50_ms",
                                "latency_p99_ms", "jobs_per_second")}
    results["broker"]["vs_poll"] = broker_vs_poll
    print(json.dumps({"broker": results["broker"], "poll": results["poll"]}))


def wait_for_threads(limit: float) -> None:
    """Every thread this run started ends before the data dirs are removed."""
    deadline = time.monotonic() + limit
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if alive:
        print(f"threads still running at exit: {', '.join(alive)}", file=sys.stderr)


if __name__ == "__main__":
    main()
