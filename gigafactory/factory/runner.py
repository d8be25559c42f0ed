"""``gigafactory factory run``: run one attempt in this container or process.

claim -> workspace (shallow clone when the manifest names a repo) -> run the profile's argv
(rendered by the coordinator, whole argv elements, no shell) -> heartbeat meanwhile -> on a
cancel answer SIGTERM, then SIGKILL after a grace period -> report exit code and result.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigafactory.factory.client import AttemptClient, Refused

log = logging.getLogger("gigafactory.factory")
LOG_TAIL_BYTES = 4096


@dataclass
class RunConfig:
    url: str
    job_id: str
    attempt: int
    token: str
    holder: str
    workdir: Path
    kill_grace_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RunConfig:
        env = dict(os.environ if env is None else env)
        missing = [k for k in ("GIGAFACTORY_URL", "GIGAFACTORY_JOB_ID", "GIGAFACTORY_ATTEMPT",
                               "GIGAFACTORY_ATTEMPT_TOKEN") if not env.get(k)]
        if missing:
            raise SystemExit(f"factory run: missing environment: {', '.join(missing)}")
        return cls(
            url=env["GIGAFACTORY_URL"], job_id=env["GIGAFACTORY_JOB_ID"], attempt=int(env["GIGAFACTORY_ATTEMPT"]),
            token=env["GIGAFACTORY_ATTEMPT_TOKEN"],
            holder=env.get("GIGAFACTORY_EXECUTION") or f"{os.uname().nodename}:{os.getpid()}",
            workdir=Path(env.get("GIGAFACTORY_WORKDIR") or tempfile.gettempdir()),
            kill_grace_seconds=float(env.get("GIGAFACTORY_KILL_GRACE_SECONDS", "10")),
        )


class AgentProcess:
    """The agent in its own process group, so stopping it stops everything it started."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, grace: float) -> None:
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._grace = grace
        self.stopped = threading.Event()

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(self._grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        code = self.proc.wait()
        self._log.close()
        return code


def clone(repo: dict[str, Any], into: Path, log_path: Path) -> None:
    argv = ["git", "clone", "--depth", "1"]
    if repo.get("ref"):
        argv += ["--branch", str(repo["ref"])]
    argv += ["--", str(repo["url"]), str(into)]
    with log_path.open("ab") as out:
        subprocess.run(argv, check=True, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0"}, timeout=900)


def read_result(path: Path) -> dict[str, Any]:
    """The optional result file an agent writes; anything unreadable is ignored, not fatal."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(data.get("summary"), str):
        out["summary"] = data["summary"][:20_000]
    if isinstance(data.get("pr_url"), str) and data["pr_url"].startswith(("https://", "http://")):
        out["pr_url"] = data["pr_url"]
    if isinstance(data.get("artifacts"), list):
        out["artifacts"] = [str(a) for a in data["artifacts"]][:100]
    return out


def tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(path.stat().st_size - LOG_TAIL_BYTES, 0))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run(cfg: RunConfig, *, on_claimed: Callable[[], None] | None = None, handle_sigterm: bool = True) -> int:
    """Run one attempt. ``on_claimed`` runs once the claim is recorded (a standing factory
    settles its broker message there); ``handle_sigterm`` only where this owns the process."""
    client = AttemptClient(cfg.url, cfg.job_id, cfg.attempt, cfg.token)
    try:
        claim = client.call("claim", {"holder": cfg.holder})
    except Refused as exc:
        log.warning("claim refused", extra={"job_id": cfg.job_id, "attempt": cfg.attempt, "error": str(exc)})
        client.close()
        return 3
    if on_claimed is not None:
        on_claimed()
    workspace = Path(tempfile.mkdtemp(prefix=f"{cfg.job_id}-{cfg.attempt}-", dir=cfg.workdir))
    log_path = workspace / "agent.log"
    result_file = workspace / "result.json"
    cwd = workspace
    if claim.get("repo"):
        cwd = workspace / "repo"
        try:
            clone(claim["repo"], cwd, log_path)
        except (subprocess.SubprocessError, OSError) as exc:
            log.error("clone failed", extra={"job_id": cfg.job_id, "attempt": cfg.attempt, "error": str(exc)})
            return _report(client, cfg, 128, log_path, result_file, cancelled=False)
    task_file = workspace / "task.md"
    task_file.write_text(str(claim.get("task", "")), encoding="utf-8")
    env = {**{k: v for k, v in os.environ.items() if k != "GIGAFACTORY_ATTEMPT_TOKEN"},
           "GIGAFACTORY_TASK_FILE": str(task_file),
           "GIGAFACTORY_RESULT_FILE": str(result_file), "GIGAFACTORY_WORKSPACE": str(workspace),
           "GIGAFACTORY_JOB_ID": cfg.job_id, "GIGAFACTORY_ATTEMPT": str(cfg.attempt)}
    try:
        agent = AgentProcess(list(claim["argv"]), cwd, env, log_path, cfg.kill_grace_seconds)
    except OSError as exc:  # not installed, not executable, argv too long for the kernel ...
        with log_path.open("a", encoding="utf-8") as out:
            out.write(f"agent could not start: {exc}\n")
        log.error("agent could not start", extra={"job_id": cfg.job_id, "attempt": cfg.attempt, "error": str(exc)})
        return _report(client, cfg, 127, log_path, result_file, cancelled=False)
    log.info("agent started", extra={"job_id": cfg.job_id, "attempt": cfg.attempt, "pid": agent.proc.pid})
    cancelled = threading.Event()
    done = threading.Event()

    def on_term(signum: int, _frame: Any) -> None:
        cancelled.set()
        threading.Thread(target=agent.stop, daemon=True).start()

    if handle_sigterm:
        signal.signal(signal.SIGTERM, on_term)
    beat = threading.Thread(target=_heartbeat, args=(client, cfg, float(claim["heartbeat_seconds"]) / 3,
                                                     agent, cancelled, done), daemon=True)
    beat.start()
    code = agent.wait()
    done.set()
    return _report(client, cfg, code, log_path, result_file, cancelled=cancelled.is_set())


def _heartbeat(client: AttemptClient, cfg: RunConfig, every: float, agent: AgentProcess,
               cancelled: threading.Event, done: threading.Event) -> None:
    while not done.wait(every):
        try:
            answer = client.call("heartbeat", patience=every * 2)
        except Refused:
            answer = {"cancel": True}
        except Exception as exc:  # keep the agent running through a coordinator outage
            log.warning("heartbeat failed", extra={"job_id": cfg.job_id, "attempt": cfg.attempt, "error": str(exc)})
            continue
        if answer.get("cancel"):
            log.info("cancel received; stopping agent", extra={"job_id": cfg.job_id, "attempt": cfg.attempt})
            cancelled.set()
            agent.stop()
            return


def _report(client: AttemptClient, cfg: RunConfig, code: int, log_path: Path, result_file: Path, *,
            cancelled: bool) -> int:
    body = {"exit_code": max(min(code, 255), -255), "cancelled": cancelled, "log_ref": str(log_path),
            "log_tail": tail(log_path), **read_result(result_file)}
    try:
        answer = client.call("complete", body)
        log.info("attempt reported", extra={"job_id": cfg.job_id, "attempt": cfg.attempt, "exit_code": code,
                                            "status": answer.get("status")})
    except Refused as exc:
        log.warning("report refused", extra={"job_id": cfg.job_id, "attempt": cfg.attempt, "error": str(exc)})
    finally:
        client.close()
    return 0
