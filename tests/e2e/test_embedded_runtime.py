"""End to end on the embedded runtime, over HTTP, with real subprocess factories."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from gigafactory.domain import ids
from gigafactory.domain.pools import load_pools
from gigafactory.local.runtime import Runtime, RuntimeConfig
from gigafactory.ports import BusMessage
from gigafactory.services import submit
from tests.e2e.conftest import LocalCoordinator, free_port, write_pools


def shell(script: str, **overrides: object) -> dict[str, object]:
    return {"agent": {"profile": "shell", "args": {"script": script}}, **overrides}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_echo_job_succeeds(coordinator: LocalCoordinator) -> None:
    job_id = coordinator.submit(task="hello from e2e")
    job = coordinator.wait_terminal(job_id)
    assert job["status"] == "succeeded"
    assert job["attempt"] == 1
    assert "hello from e2e" in job["result"]["summary"]
    assert [h["status"] for h in job["history"]] == ["queued", "dispatched", "launching", "running", "succeeded"]
    pools = coordinator.http.get("/api/pools").json()["items"]
    assert pools[0]["in_flight"] == 0


def test_result_file_reaches_the_job(coordinator: LocalCoordinator) -> None:
    script = ('printf \'{"summary": "opened a PR", "pr_url": "https://example.invalid/pr/7", '
              '"artifacts": ["report.txt"]}\' > "$GIGAFACTORY_RESULT_FILE"')
    job = coordinator.wait_terminal(coordinator.submit(**shell(script)))
    assert job["status"] == "succeeded"
    assert job["result"]["summary"] == "opened a PR"
    assert job["result"]["pr_url"] == "https://example.invalid/pr/7"
    assert job["result"]["artifacts"] == ["report.txt"]


def test_exit_3_with_two_attempts_ends_failed_at_attempt_2(coordinator: LocalCoordinator) -> None:
    job_id = coordinator.submit(**shell("exit 3", retry={"max_attempts": 2, "backoff_seconds": 0}))
    job = coordinator.wait_terminal(job_id)
    assert (job["status"], job["attempt"]) == ("failed", 2)
    assert job["result"]["exit_code"] == 3
    assert "exhausted" in job["dead_letter"]["reason"]
    assert [s["attempt"] for s in coordinator.factory_starts()] == [1, 2]


def test_cancel_while_running_stops_the_agent(coordinator: LocalCoordinator, tmp_path: Path) -> None:
    pid_file = tmp_path / "agent.pid"
    job_id = coordinator.submit(**shell(f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; exec sleep 120",
                                        timeouts={"heartbeat_seconds": 9}))
    coordinator.wait_for(job_id, lambda j: j["status"] == "running")
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the agent never started: " + str(coordinator.job(job_id)["status"])
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert alive(pid)

    answer = coordinator.http.post(f"/api/jobs/{job_id}/cancel")
    assert answer.status_code == 202
    job = coordinator.wait_terminal(job_id, timeout=45)
    assert job["status"] == "cancelled", job["history"]
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the agent process outlived its cancelled job"


def test_running_jobs_survive_a_coordinator_kill_and_restart(coordinator: LocalCoordinator) -> None:
    job_ids = [coordinator.submit(**shell("sleep 4")) for _ in range(10)]
    for job_id in job_ids:
        coordinator.wait_for(job_id, lambda j: j["status"] == "running", timeout=60)
    coordinator.kill(signal.SIGKILL)
    time.sleep(1)
    coordinator.start()
    for job_id in job_ids:
        job = coordinator.wait_terminal(job_id, timeout=90)
        assert (job["status"], job["attempt"]) == ("succeeded", 1)
    assert len(coordinator.factory_starts()) == 10


def test_jobs_queued_before_a_kill_still_run(coordinator: LocalCoordinator) -> None:
    job_ids = [coordinator.submit() for _ in range(5)]
    coordinator.kill(signal.SIGKILL)
    coordinator.start()
    assert {coordinator.wait_terminal(j)["status"] for j in job_ids} == {"succeeded"}


def test_a_dispatch_delivered_twice_starts_one_factory(tmp_path: Path) -> None:
    """In-process, so the test can publish on the runtime's own bus and count its launches."""
    runtime = Runtime(RuntimeConfig(data_dir=tmp_path / "d", pools=load_pools(write_pools(tmp_path / "p.json")),
                                    port=free_port(), kill_grace_seconds=2))
    server = threading.Thread(target=runtime.serve, daemon=True)
    server.start()
    try:
        job, _ = submit.submit(runtime.services, {"product": "demo", "title": "t", "task": "x",
                                                  "requirements": {"capabilities": ["local"]}})
        deadline = time.monotonic() + 30
        while (current := runtime.store.get(job.id)) is not None and not current.terminal:
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.05)
        assert runtime.launcher.started == 1  # type: ignore[attr-defined]
        body = {"job_id": job.id, "attempt": 1, "pool": "local"}
        props = {"pool": "local", "launch_mode": "on-demand", "product": "demo", "priority": "P2"}
        # Inside the duplicate-detection window the broker drops the copy ...
        assert runtime.bus.publish("dispatch", BusMessage(ids.dispatch_message_id(job.id, 1), body, props)) is False
        # ... and a redelivery the broker does let through is fenced by the handler.
        assert runtime.bus.publish("dispatch", BusMessage(f"{job.id}:1:again", body, props)) is True
        deadline = time.monotonic() + 10
        while runtime.bus.pending_count("dispatch", "launcher").active and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert runtime.bus.pending_count("dispatch", "launcher").active == 0
        assert runtime.launcher.started == 1  # type: ignore[attr-defined]
        final = runtime.store.get(job.id)
        assert final is not None and (final.status, final.attempt) == ("succeeded", 1)
    finally:
        runtime.request_shutdown()
        server.join(15)


def test_replaying_the_change_feed_three_times_changes_nothing(coordinator: LocalCoordinator) -> None:
    job_ids = [coordinator.submit() for _ in range(4)]
    job_ids.append(coordinator.submit(**shell("exit 3", retry={"max_attempts": 2, "backoff_seconds": 0})))
    before = {j: coordinator.wait_terminal(j) for j in job_ids}
    starts = len(coordinator.factory_starts())
    for _ in range(3):
        coordinator.kill(signal.SIGTERM)
        (coordinator.data_dir / "relay.cursor").write_text("0")  # the whole feed again
        coordinator.start()
        time.sleep(1.5)
        for job_id, job in before.items():
            now = coordinator.job(job_id)
            assert (now["status"], now["attempt"], len(now["history"])) == (
                job["status"], job["attempt"], len(job["history"]))
    assert len(coordinator.factory_starts()) == starts
    pools = coordinator.http.get("/api/pools").json()["items"]
    assert pools[0]["in_flight"] == 0


def test_the_local_api_token_is_generated_and_private(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GIGAFACTORY_API_TOKEN"}
    coord = LocalCoordinator(tmp_path / "d", write_pools(tmp_path / "p.json"), free_port())
    coord.env = env
    coord.start()
    try:
        token_file = coord.data_dir / "api-token"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert coord.http.get("/api/jobs").status_code == 401  # the fixture's token is not this one
        ok = coord.http.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert token in coord.log.read_text()  # printed once for the operator
        assert json.dumps(token) not in "".join(
            line for line in coord.log.read_text().splitlines() if line.startswith("{"))  # never in JSON logs
    finally:
        coord.close()


def test_a_large_manifest_is_claim_checked_and_still_runs(coordinator: LocalCoordinator) -> None:
    task = "large task " + "x" * 300_000 + " end-marker"
    script = 'wc -c < "$GIGAFACTORY_TASK_FILE"; tail -c 10 "$GIGAFACTORY_TASK_FILE"'
    job_id = coordinator.submit(task=task, **shell(script, timeouts={"heartbeat_seconds": 30}))
    stored = coordinator.job(job_id)
    assert stored["manifest"] is None
    assert stored["manifest_ref"]["size"] > 300_000 and len(stored["manifest_ref"]["sha256"]) == 64
    job = coordinator.wait_terminal(job_id)
    assert job["status"] == "succeeded"
    assert job["result"]["summary"].split() == [str(len(task)), "end-marker"]  # the whole task arrived


def test_an_agent_that_cannot_start_is_reported_not_stranded(coordinator: LocalCoordinator) -> None:
    # The echo profile passes the task as one argv element; Linux refuses one over 128 KiB.
    job_id = coordinator.submit(task="y" * 200_000, retry={"max_attempts": 1})
    job = coordinator.wait_terminal(job_id, timeout=30)
    assert (job["status"], job["result"]["exit_code"]) == ("failed", 127)
    assert "agent could not start" in job["result"]["summary"]
