"""Standing factories as separate processes against the embedded coordinator: broker
delivery, drain, and switching dispatch modes under load with nothing lost or duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import LocalCoordinator, free_port
from tests.fleet import FLEET, fleet_manifest, fleet_pools

SECRET = "e2e-enrollment-secret"


class Factories:
    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, slots: int = 2) -> subprocess.Popen[bytes]:
        env = {**os.environ, "GIGAFACTORY_ENROLLMENT_SECRET": SECRET, "GIGAFACTORY_LOG_LEVEL": "WARNING"}
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gigafactory", "factory", "serve", "--pool", FLEET, "--slots", str(slots),
             "--name", name, "--url", self.url, "--state-dir", str(self.tmp / name), "--workdir", str(self.tmp),
             "--receive-wait", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def fleet_coordinator(tmp: Path, mode: str, port: int | None = None) -> LocalCoordinator:
    coord = LocalCoordinator(tmp / "data", fleet_pools(tmp / "pools.json", standing_parallel=4), port or free_port(),
                             env={"GIGAFACTORY_ENROLLMENT_SECRET": SECRET, "GIGAFACTORY_DISPATCH_MODE": mode,
                                  "GIGAFACTORY_KILL_GRACE_SECONDS": "2"})
    return coord


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[LocalCoordinator, Factories]]:
    coord = fleet_coordinator(tmp_path, "broker")
    coord.start()
    factories = Factories(tmp_path, coord.url)
    yield coord, factories
    factories.close()
    coord.close()


def run_script(runs: Path, seconds: float = 0.2) -> dict[str, object]:
    script = f'echo "$GIGAFACTORY_JOB_ID $GIGAFACTORY_ATTEMPT" >> {runs}; sleep {seconds}'
    return {"agent": {"profile": "shell", "args": {"script": script}}}


def test_broker_mode_delivers_to_standing_factories(broker: tuple[LocalCoordinator, Factories],
                                                    tmp_path: Path) -> None:
    coord, factories = broker
    factories.start("a")
    factories.start("b")
    runs = tmp_path / "runs.txt"
    job_ids = [coord.submit(**fleet_manifest(**run_script(runs))) for _ in range(8)]
    jobs = [coord.wait_terminal(j, timeout=60) for j in job_ids]
    assert {(j["status"], j["attempt"]) for j in jobs} == {("succeeded", 1)}
    assert Counter(line.split()[0] for line in runs.read_text().splitlines()) == Counter(job_ids)
    holders = {j["factory_id"] for j in jobs}
    assert holders <= {f["id"] for f in coord.http.get("/api/factories").json()["items"]}
    assert coord.factory_starts() == [], "a standing pool never launches on-demand factories"


def test_a_drained_factory_finishes_its_work_and_exits(broker: tuple[LocalCoordinator, Factories],
                                                       tmp_path: Path) -> None:
    coord, factories = broker
    proc = factories.start("solo", slots=1)
    runs = tmp_path / "runs.txt"
    job_id = coord.submit(**fleet_manifest(**run_script(runs, seconds=2)))
    coord.wait_for(job_id, lambda j: j["status"] == "running", timeout=30)
    (factory,) = coord.http.get("/api/factories").json()["items"]
    assert coord.http.post(f"/api/factories/{factory['id']}/drain").status_code == 202
    later = coord.submit(**fleet_manifest(**run_script(runs)))
    assert coord.wait_terminal(job_id, timeout=30)["status"] == "succeeded"
    assert proc.wait(30) == 0
    time.sleep(1)
    assert coord.job(later)["status"] in ("queued", "dispatched"), "a draining factory took new work"
    shown = coord.http.get(f"/api/factories/{factory['id']}").json()
    assert shown["status"] == "draining"


def test_switching_modes_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    port = free_port()
    coord = fleet_coordinator(tmp_path, "poll", port)
    coord.start()
    factories = Factories(tmp_path, coord.url)
    try:
        factories.start("a")
        factories.start("b")
        runs = tmp_path / "runs.txt"
        job_ids = [coord.submit(**fleet_manifest(**run_script(runs, seconds=0.3))) for _ in range(24)]

        def finished() -> int:
            return sum(1 for j in job_ids if coord.job(j)["status"] in ("succeeded", "failed", "cancelled"))

        for threshold, next_mode in ((6, "broker"), (12, "shadow"), (18, "broker")):
            deadline = time.monotonic() + 60
            while finished() < threshold:
                assert time.monotonic() < deadline, f"stalled before {threshold} finished"
                time.sleep(0.1)
            coord.kill(signal.SIGTERM)  # an app-setting change restarts the coordinator
            coord.env["GIGAFACTORY_DISPATCH_MODE"] = next_mode
            coord.start()
            assert coord.http.get("/api/health").json()["dispatch_mode"] == next_mode
        jobs = [coord.wait_terminal(j, timeout=90) for j in job_ids]
        assert [(j["status"], j["attempt"]) for j in jobs] == [("succeeded", 1)] * len(job_ids)
        ran = Counter(line.split()[0] for line in runs.read_text().splitlines())
        assert ran == Counter(job_ids), "a job ran twice or not at all"
    finally:
        factories.close()
        coord.close()
