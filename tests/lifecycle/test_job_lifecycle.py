"""The real ``job_lifecycle`` orchestrator on the in-process engine, with time skipped."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gigafactory.domain.job import StaleAttempt
from tests.lifecycle.conftest import Coordinator

FAST = {"timeouts": {"schedule_to_start_seconds": 60, "start_to_close_seconds": 600, "heartbeat_seconds": 30}}


def test_success_runs_one_attempt_and_frees_capacity(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(**FAST)
    coordinator.pump()
    assert coordinator.job(job_id).status == "launching"
    assert len(coordinator.launcher.starts) == 1
    assert job_id in coordinator.capacity()

    coordinator.claim(job_id, 1)
    assert coordinator.job(job_id).status == "running"
    coordinator.complete(job_id, 1, 0, summary="done")

    job = coordinator.job(job_id)
    assert job.status == "succeeded"
    assert job.result is not None and job.result.summary == "done"
    assert coordinator.capacity() == {}
    assert coordinator.orchestration(job_id).runtime_status == "Completed"
    assert [h.status for h in job.history] == ["queued", "dispatched", "launching", "running", "succeeded"]


def test_failure_is_retried_after_backoff(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(retry={"max_attempts": 3, "backoff_seconds": 100}, **FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    coordinator.complete(job_id, 1, 1)

    job = coordinator.job(job_id)
    assert job.status == "queued" and job.attempt == 2
    delay = (job.due_at - coordinator.clock.now()).total_seconds()
    assert 80 <= delay <= 120  # 100 s with +-20 % jitter
    assert coordinator.capacity() == {}

    coordinator.advance(delay / 2)
    assert coordinator.job(job_id).status == "queued", "released before its backoff elapsed"
    coordinator.advance(delay / 2 + 1)
    assert coordinator.job(job_id).status == "launching"
    coordinator.claim(job_id, 2)
    coordinator.complete(job_id, 2, 0)
    job = coordinator.job(job_id)
    assert (job.status, job.attempt) == ("succeeded", 2)
    assert coordinator.orchestration(job_id).runtime_status == "Completed"


def test_exhausted_attempts_end_failed_with_dead_letter(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(retry={"max_attempts": 2, "backoff_seconds": 0}, **FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    coordinator.complete(job_id, 1, 3)
    coordinator.claim(job_id, 2)
    coordinator.complete(job_id, 2, 3)

    job = coordinator.job(job_id)
    assert (job.status, job.attempt) == ("failed", 2)
    assert job.dead_letter is not None and "exhausted" in job.dead_letter["reason"]
    assert len(coordinator.launcher.starts) == 2
    assert coordinator.capacity() == {}


def test_schedule_to_start_timeout_expires_and_retries(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(retry={"max_attempts": 2, "backoff_seconds": 0}, **FAST)
    coordinator.pump()
    assert coordinator.job(job_id).status == "launching"

    coordinator.advance(59)
    assert coordinator.job(job_id).status == "launching"
    coordinator.advance(2)
    job = coordinator.job(job_id)
    assert job.attempt == 2 and job.status == "launching"
    statuses = [(h.status.value, h.attempt, h.reason) for h in job.history]
    assert ("attempt_failed", 1, "schedule_to_start_timeout") in statuses
    assert coordinator.launcher.stops == [f"exec-{job_id}-1-1"]


def test_heartbeat_loss_expires_the_attempt(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(retry={"max_attempts": 1}, **FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    coordinator.advance(29)
    assert coordinator.job(job_id).status == "running"
    coordinator.advance(2)
    job = coordinator.job(job_id)
    assert job.status == "failed"
    assert any(h.reason == "heartbeat_timeout" for h in job.history)


def test_heartbeat_extension_rearms_the_timer(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(**FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    for _ in range(5):  # 5 x 20 s = 100 s, far past the first 30 s lease
        coordinator.advance(20)
        assert coordinator.heartbeat(job_id, 1)["cancel"] is False
        assert coordinator.job(job_id).status == "running"
    coordinator.complete(job_id, 1, 0)
    assert coordinator.job(job_id).status == "succeeded"


def test_start_to_close_bounds_a_job_that_keeps_heartbeating(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(retry={"max_attempts": 1}, **FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    for _ in range(31):  # 620 s of heartbeats against a 600 s start-to-close
        coordinator.advance(20)
        if coordinator.job(job_id).status != "running":
            break
        coordinator.heartbeat(job_id, 1)
    job = coordinator.job(job_id)
    assert job.status == "failed"
    assert any(h.reason == "start_to_close_timeout" for h in job.history)


def test_cancel_while_queued(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(**FAST)

    from gigafactory.services import jobs

    assert jobs.cancel(coordinator.svc, job_id).status == "cancelled"
    coordinator.pump()
    assert coordinator.job(job_id).status == "cancelled"
    assert coordinator.launcher.starts == []


def test_cancel_while_dispatched(coordinator: Coordinator) -> None:
    from gigafactory.services import jobs

    job_id = coordinator.submit(**FAST)
    coordinator.runtime.relay_once()  # released, not yet launched
    assert coordinator.job(job_id).status == "dispatched"
    jobs.cancel(coordinator.svc, job_id)
    coordinator.pump()
    assert coordinator.job(job_id).status == "cancelled"
    assert coordinator.launcher.starts == []
    assert coordinator.capacity() == {}


def test_cancel_while_launching_stops_the_execution(coordinator: Coordinator) -> None:
    from gigafactory.services import jobs

    job_id = coordinator.submit(**FAST)
    coordinator.pump()
    jobs.cancel(coordinator.svc, job_id)
    coordinator.pump()
    assert coordinator.job(job_id).status == "cancelled"
    assert coordinator.launcher.stops == [f"exec-{job_id}-1-1"]
    assert coordinator.orchestration(job_id).runtime_status == "Completed"


def test_cancel_while_running_tells_the_factory_and_stops_it(coordinator: Coordinator) -> None:
    from gigafactory.services import jobs

    job_id = coordinator.submit(**FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    jobs.cancel(coordinator.svc, job_id)
    coordinator.pump()
    assert coordinator.job(job_id).status == "cancelled"
    assert coordinator.launcher.stops == [f"exec-{job_id}-1-1"]
    assert coordinator.heartbeat(job_id, 1)["cancel"] is True
    assert coordinator.capacity() == {}


def test_cancel_during_backoff(coordinator: Coordinator) -> None:
    from gigafactory.services import jobs

    job_id = coordinator.submit(retry={"max_attempts": 3, "backoff_seconds": 300}, **FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    coordinator.complete(job_id, 1, 1)
    assert coordinator.job(job_id).status == "queued"
    jobs.cancel(coordinator.svc, job_id)
    coordinator.advance(400)
    job = coordinator.job(job_id)
    assert job.status == "cancelled"
    assert len(coordinator.launcher.starts) == 1
    assert coordinator.orchestration(job_id).runtime_status == "Completed"


def test_cancel_of_a_finished_job_is_refused(coordinator: Coordinator) -> None:
    from gigafactory.domain.states import IllegalTransition
    from gigafactory.services import jobs

    job_id = coordinator.submit(**FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    coordinator.complete(job_id, 1, 0)
    with pytest.raises(IllegalTransition):
        jobs.cancel(coordinator.svc, job_id)
    assert coordinator.job(job_id).status == "succeeded"


def test_zombie_report_after_expiry_is_refused_with_409(coordinator: Coordinator) -> None:
    job_id = coordinator.submit(retry={"max_attempts": 2, "backoff_seconds": 0}, **FAST)
    coordinator.pump()
    coordinator.claim(job_id, 1)
    zombie_token = coordinator.token(job_id, 1)
    coordinator.advance(31)  # the lease of attempt 1 runs out
    assert coordinator.job(job_id).attempt == 2
    coordinator.claim(job_id, 2)

    with pytest.raises(StaleAttempt):
        coordinator.complete(job_id, 1, 0)
    client = TestClient(coordinator.runtime.app())
    answer = client.post(f"/api/attempts/{job_id}/1/complete", json={"exit_code": 0},
                         headers={"Authorization": f"Bearer {zombie_token}"})
    assert answer.status_code == 409
    heartbeat = client.post(f"/api/attempts/{job_id}/1/heartbeat", headers={"Authorization": f"Bearer {zombie_token}"})
    assert heartbeat.status_code == 409
    # The zombie's token is scoped to attempt 1: it cannot act on attempt 2 either.
    hijack = client.post(f"/api/attempts/{job_id}/2/complete", json={"exit_code": 0},
                         headers={"Authorization": f"Bearer {zombie_token}"})
    assert hijack.status_code == 403
    job = coordinator.job(job_id)
    assert (job.status, job.attempt) == ("running", 2)
    coordinator.complete(job_id, 2, 0)
    assert coordinator.job(job_id).status == "succeeded"


def test_capacity_limits_parallel_work_and_releases_the_next(coordinator: Coordinator) -> None:
    ids = [coordinator.submit(**FAST) for _ in range(6)]
    coordinator.pump()
    statuses = [coordinator.job(i).status for i in ids]
    assert statuses.count("launching") == 4 and statuses.count("queued") == 2  # max_parallel 4
    first = next(i for i in ids if coordinator.job(i).status == "launching")
    coordinator.claim(first, 1)
    coordinator.complete(first, 1, 0)
    statuses = [coordinator.job(i).status for i in ids]
    assert statuses.count("queued") == 1
    assert len(coordinator.capacity()) == 4


def test_a_dispatch_consumed_without_effect_is_resent_under_a_new_id(coordinator: Coordinator) -> None:
    from gigafactory.services import sweeper

    job_id = coordinator.submit(timeouts={"schedule_to_start_seconds": 600})
    coordinator.runtime.relay_once()  # released
    coordinator.runtime.relay_once()  # published
    (lost,) = coordinator.runtime.bus.receive("dispatch", "launcher")
    coordinator.runtime.bus.complete(lost.lock_token)  # consumed, and nothing launched
    assert lost.message_id == f"{job_id}:1"
    coordinator.pump()
    assert coordinator.job(job_id).status == "dispatched" and coordinator.launcher.starts == []

    coordinator.clock.advance(30)
    assert sweeper.sweep(coordinator.svc).republished == []  # too early to call it lost
    coordinator.clock.advance(31)
    assert sweeper.sweep(coordinator.svc).republished == [job_id]
    coordinator.pump()
    job = coordinator.job(job_id)
    assert (job.status, job.attempt, job.resends) == ("launching", 1, 1)
    assert len(coordinator.launcher.starts) == 1
    coordinator.claim(job_id, 1)
    coordinator.complete(job_id, 1, 0)
    assert coordinator.job(job_id).status == "succeeded"


@pytest.fixture
def classified(tmp_path: object) -> Coordinator:
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    from gigafactory.domain.pools import DEFAULT_POOLS_FILE, load_pools
    from gigafactory.local.clock import FakeClock
    from gigafactory.local.runtime import Runtime, RuntimeConfig
    from tests.lifecycle.conftest import RecordingLauncher

    base = Path(str(tmp_path))
    pools = json.loads(DEFAULT_POOLS_FILE.read_text())
    pools["pools"][0]["profiles"]["shell"]["retryable_exit_codes"] = [75]
    (base / "pools.json").write_text(json.dumps(pools))
    clock = FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    launcher = RecordingLauncher()
    runtime = Runtime(RuntimeConfig(data_dir=base / "data", pools=load_pools(base / "pools.json")), clock=clock,
                      launcher=launcher)
    return Coordinator(runtime, clock, launcher)


def test_a_profile_s_non_retryable_exit_fails_at_once(classified: Coordinator) -> None:
    job_id = classified.submit(agent={"profile": "shell", "args": {"script": "exit 2"}},
                               retry={"max_attempts": 3, "backoff_seconds": 0}, **FAST)
    classified.pump()
    classified.claim(job_id, 1)
    classified.complete(job_id, 1, 2)
    job = classified.job(job_id)
    assert (job.status, job.attempt) == ("failed", 1)
    assert job.dead_letter is not None and "not retryable" in job.dead_letter["reason"]


def test_a_profile_s_retryable_exit_is_retried(classified: Coordinator) -> None:
    job_id = classified.submit(agent={"profile": "shell", "args": {"script": "exit 75"}},
                               retry={"max_attempts": 3, "backoff_seconds": 0}, **FAST)
    classified.pump()
    classified.claim(job_id, 1)
    classified.complete(job_id, 1, 75)
    job = classified.job(job_id)
    assert (job.status, job.attempt) == ("launching", 2)
