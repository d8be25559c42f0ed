"""A coordinator on a fake clock: the real relay, launch handler, scheduler and the real
``job_lifecycle`` on the in-process Durable engine, driven step by step. Factories are played
by the test through the attempt service, holding the token the launch handler issued."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gigafactory.domain.job import Job
from gigafactory.domain.pools import load_pools
from gigafactory.local.clock import FakeClock
from gigafactory.local.runtime import Runtime, RuntimeConfig
from gigafactory.services import attempts, submit


@dataclass
class RecordingLauncher:
    """Honours the launcher contract (start returns a name, stop of an ended one is fine)."""

    starts: list[dict[str, str]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)

    def start(self, job: Job, env: Mapping[str, str]) -> str:
        self.starts.append(dict(env))
        return f"exec-{job.id}-{job.attempt}-{len(self.starts)}"

    def stop(self, execution: str) -> None:
        self.stops.append(execution)


@dataclass
class Coordinator:
    runtime: Runtime
    clock: FakeClock
    launcher: RecordingLauncher

    @property
    def svc(self) -> Any:
        return self.runtime.services

    def submit(self, **overrides: Any) -> str:
        manifest = {"product": "demo", "title": "t", "task": "do it", "agent": {"profile": "echo"},
                    "requirements": {"capabilities": ["local"]}, **overrides}
        job, _ = submit.submit(self.svc, manifest)
        return job.id

    def pump(self) -> None:
        self.runtime.pump()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()

    def job(self, job_id: str) -> Job:
        job = self.svc.store.get(job_id)
        assert job is not None
        return job

    def token(self, job_id: str, attempt: int) -> str:
        for env in reversed(self.launcher.starts):
            if env["GIGAFACTORY_JOB_ID"] == job_id and env["GIGAFACTORY_ATTEMPT"] == str(attempt):
                return env["GIGAFACTORY_ATTEMPT_TOKEN"]
        raise AssertionError(f"no factory was launched for {job_id} attempt {attempt}")

    def claim(self, job_id: str, attempt: int) -> dict[str, Any]:
        answer = attempts.claim(self.svc, job_id, attempt, self.token(job_id, attempt),
                                attempts.ClaimRequest(holder=f"factory-{attempt}"))
        self.pump()
        return answer

    def heartbeat(self, job_id: str, attempt: int) -> dict[str, Any]:
        answer = attempts.heartbeat(self.svc, job_id, attempt, self.token(job_id, attempt))
        self.pump()
        return answer

    def complete(self, job_id: str, attempt: int, exit_code: int, **extra: Any) -> dict[str, Any]:
        answer = attempts.complete(self.svc, job_id, attempt, self.token(job_id, attempt),
                                   attempts.CompleteRequest(exit_code=exit_code, **extra))
        self.pump()
        return answer

    def capacity(self) -> dict[str, Any]:
        return dict(self.svc.store.get_capacity("local").inflight)

    def orchestration(self, job_id: str) -> Any:
        return self.runtime.engine.get_status(job_id)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    clock = FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    launcher = RecordingLauncher()
    runtime = Runtime(RuntimeConfig(data_dir=tmp_path / "data", pools=load_pools()), clock=clock, launcher=launcher)
    yield Coordinator(runtime, clock, launcher)
    runtime.engine.close()
