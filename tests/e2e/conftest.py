"""The embedded runtime as a user runs it: ``python -m gigafactory local`` in its own process,
driven over HTTP on 127.0.0.1, killed and restarted on the same data dir when a test says so."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

TOKEN = "e2e-token"
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_pools(path: Path, max_parallel: int = 12) -> Path:
    pools = json.loads((Path(__file__).parents[2] / "gigafactory" / "pools.json").read_text())
    pools["pools"][0]["max_parallel"] = max_parallel
    path.write_text(json.dumps(pools))
    return path


class LocalCoordinator:
    def __init__(self, data_dir: Path, pools: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.pools = pools
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "GIGAFACTORY_API_TOKEN": TOKEN, "GIGAFACTORY_SWEEP_SECONDS": "5", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        self.log = data_dir.parent / "coordinator.log"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gigafactory", "local", "--port", str(self.port), "--data-dir",
                 str(self.data_dir), "--pools", str(self.pools)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.get("/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("coordinator did not start:\n" + self.log.read_text()[-3000:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def submit(self, **overrides: Any) -> str:
        manifest = {"product": "demo", "title": "e2e", "task": "hello", "agent": {"profile": "echo"},
                    "requirements": {"capabilities": ["local"]}, **overrides}
        answer = self.http.post("/api/jobs", json=manifest)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/api/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait_for(self, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            time.sleep(0.1)
        raise AssertionError(f"timed out; last state {job.get('status')} attempt {job.get('attempt')}:\n"
                             + self.log.read_text()[-3000:])

    def wait_terminal(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(job_id, lambda j: j["status"] in TERMINAL, timeout)

    def factory_starts(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.data_dir / "factories").glob("local-*.json"))]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.http.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[LocalCoordinator]:
    coord = LocalCoordinator(tmp_path / "data", write_pools(tmp_path / "pools.json"), free_port(),
                             env={"GIGAFACTORY_KILL_GRACE_SECONDS": "2"})
    coord.start()
    yield coord
    coord.close()
