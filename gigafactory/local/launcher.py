"""On-demand factories as local subprocesses: ``gigafactory factory run`` per attempt.

Each factory gets its own session (process group) and the attempt's environment, exactly as
a Container Apps Job execution would get env overrides. Executions are recorded in the data
dir so a restarted runtime can still stop factories it started before a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from gigafactory.domain.job import Job

log = logging.getLogger("gigafactory.launcher")


class SubprocessLauncher:
    def __init__(self, data_dir: Path, *, kill_grace_seconds: float = 10.0) -> None:
        self._logs = data_dir / "factories"
        self._logs.mkdir(parents=True, exist_ok=True)
        self._work = data_dir / "workspaces"
        self._work.mkdir(parents=True, exist_ok=True)
        self._grace = kill_grace_seconds
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self.started = 0

    def start(self, job: Job, env: Mapping[str, str]) -> str:
        log_path = self._logs / f"{job.id}-{job.attempt}.log"
        child_env = {**os.environ, **env, "GIGAFACTORY_WORKDIR": str(self._work),
                     "GIGAFACTORY_KILL_GRACE_SECONDS": str(self._grace)}
        with log_path.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gigafactory", "factory", "run"], env=child_env,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        with self._lock:
            self._procs[proc.pid] = proc
            self.started += 1
        threading.Thread(target=self._reap, args=(proc,), daemon=True).start()
        name = f"local-{proc.pid}"
        (self._logs / f"{name}.json").write_text(json.dumps({"pid": proc.pid, "job_id": job.id,
                                                              "attempt": job.attempt}))
        log.info("factory started", extra={"job_id": job.id, "attempt": job.attempt, "execution": name})
        return name

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        with self._lock:
            self._procs.pop(proc.pid, None)

    def stop(self, execution: str) -> None:
        if not execution.startswith("local-"):
            return
        pid = int(execution.removeprefix("local-"))
        with self._lock:
            proc = self._procs.get(pid)
        if proc is None and not (self._logs / f"{execution}.json").exists():
            return
        threading.Thread(target=self._terminate, args=(pid, proc), daemon=True).start()

    def _terminate(self, pid: int, proc: subprocess.Popen[bytes] | None) -> None:
        """SIGTERM lets the factory stop its agent and report; SIGKILL after the grace period."""
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + self._grace + 5
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and not _alive(pid):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def running(self) -> int:
        with self._lock:
            return len(self._procs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
