"""``gigafactory factory serve``: a standing factory with N slots for one pool.

It enrolls once (the credential is kept in its state dir, mode 0600), heartbeats, and takes
work the way the coordinator's dispatch mode says: in ``broker`` mode it receives dispatch
messages from its pool's subscription, exchanges each for an attempt token, claims, and
settles the message as soon as the claim is recorded (no lock held for the hours a job runs);
in ``poll`` and ``shadow`` mode it leases through ``POST /api/pools/{pool}/lease`` and sleeps
for the ``Retry-After`` the coordinator answers (exponential idle backoff with jitter).
Draining: it finishes what it runs and takes nothing new.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gigafactory.factory import runner, sources
from gigafactory.ports import DispatchSource

log = logging.getLogger("gigafactory.factory")
MODE_HEADER = "X-Gigafactory-Dispatch-Mode"
DRAIN_HEADER = "X-Gigafactory-Drain"


@dataclass
class ServeConfig:
    url: str
    pool: str
    slots: int = 1
    name: str = field(default_factory=lambda: os.uname().nodename)
    enrollment_secret: str | None = None
    state_dir: Path = Path(".gigafactory-factory")
    workdir: Path = Path("/tmp")
    kill_grace_seconds: float = 10.0
    receive_wait_seconds: float = 30.0


class StandingFactory:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.http = httpx.Client(base_url=cfg.url.rstrip("/"), timeout=cfg.receive_wait_seconds + 15)
        self.factory_id = ""
        self.credential = ""
        self.mode = "broker"
        self.draining = False
        self.running: dict[str, threading.Thread] = {}
        self.completed = 0
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()
        self.stop = threading.Event()
        self.idle_polls = 0
        self.heartbeat_seconds = 30
        self.source: DispatchSource = sources.service_bus_source(cfg.pool) or sources.GatewaySource(
            self.http, cfg.pool, lambda: self._auth, self._follow)

    # -- enrollment and heartbeat ---------------------------------------------------------------

    def enroll(self) -> None:
        state = self.cfg.state_dir / "factory.json"
        if state.exists():
            saved = json.loads(state.read_text())
            if saved.get("url") == self.cfg.url and saved.get("pool") == self.cfg.pool:
                self.factory_id, self.credential = saved["id"], saved["credential"]
                return
        if not self.cfg.enrollment_secret:
            raise SystemExit("factory serve: not enrolled and no enrollment secret (GIGAFACTORY_ENROLLMENT_SECRET)")
        answer = self.http.post("/api/factories", json={"pool": self.cfg.pool, "name": self.cfg.name,
                                                        "slots": self.cfg.slots},
                                headers={"Authorization": f"Bearer {self.cfg.enrollment_secret}"})
        if answer.status_code != 201:
            raise SystemExit(f"factory serve: enrollment refused ({answer.status_code}): {answer.text}")
        data = answer.json()
        self.factory_id, self.credential = data["id"], data["credential"]
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": self.cfg.url, "pool": self.cfg.pool, "id": self.factory_id,
                       "credential": self.credential}, f)
        log.info("factory enrolled", extra={"factory_id": self.factory_id, "pool": self.cfg.pool})

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    def heartbeat(self) -> None:
        with self._lock:
            running = list(self.running)
        try:
            answer = self.http.post(f"/api/factories/{self.factory_id}/heartbeat", json={"running": running},
                                    headers=self._auth, timeout=15)
        except httpx.TransportError as exc:
            log.warning("factory heartbeat failed", extra={"factory_id": self.factory_id, "error": str(exc)})
            return
        if answer.status_code == 200:
            data = answer.json()
            self.heartbeat_seconds = int(data.get("heartbeat_seconds", self.heartbeat_seconds))
            self.mode = data.get("dispatch_mode", self.mode)
            self.draining = bool(data.get("drain"))
        elif answer.status_code in (401, 403):
            log.error("factory credential refused; stopping", extra={"factory_id": self.factory_id})
            self.stop.set()

    def _heartbeat_loop(self, every: float) -> None:
        while not self.stop.wait(every):
            self.heartbeat()

    # -- taking work ----------------------------------------------------------------------------

    def _start_attempt(self, job_id: str, attempt: int, token: str, on_claimed: Any = None) -> None:
        cfg = runner.RunConfig(url=self.cfg.url, job_id=job_id, attempt=attempt, token=token,
                               holder=self.factory_id, workdir=self.cfg.workdir,
                               kill_grace_seconds=self.cfg.kill_grace_seconds)

        def work() -> None:
            try:
                runner.run(cfg, on_claimed=on_claimed, handle_sigterm=False)
            except Exception:
                log.exception("attempt crashed", extra={"job_id": job_id, "attempt": attempt})
            finally:
                with self._lock:
                    self.running.pop(job_id, None)
                    self.completed += 1
                self._slot_freed.set()

        thread = threading.Thread(target=work, name=f"attempt-{job_id}", daemon=True)
        with self._lock:
            self.running[job_id] = thread
        thread.start()

    def _follow(self, answer: httpx.Response) -> None:
        self.mode = answer.headers.get(MODE_HEADER, self.mode)
        if answer.headers.get(DRAIN_HEADER) == "true":
            self.draining = True

    def broker_round(self, free: int) -> None:
        try:
            deliveries = self.source.receive(free, self.cfg.receive_wait_seconds)
        except sources.Refused:
            log.error("receive refused; stopping", extra={"factory_id": self.factory_id})
            self.stop.set()
            return
        for delivery in deliveries:
            job_id, attempt = delivery.body.get("job_id"), delivery.body.get("attempt")
            grant = self.http.post(f"/api/factories/{self.factory_id}/attempts", headers=self._auth,
                                   json={"job_id": job_id, "attempt": attempt}, timeout=15)
            if grant.status_code == 409 and grant.json().get("error") == "not_taking_work":
                self.draining = True
                self.source.abandon(delivery)  # another factory of the pool takes it
                continue
            if grant.status_code in (404, 409, 422):
                # Stale (claimed, cancelled, newer attempt), unknown or malformed: nothing to run.
                self.source.complete(delivery)
                continue
            if grant.status_code != 200:
                self.source.abandon(delivery)  # a coordinator hiccup: let the broker redeliver it
                continue
            self._start_attempt(str(job_id), int(str(attempt)), grant.json()["token"],
                                on_claimed=lambda d=delivery: self.source.complete(d))

    def poll_round(self) -> None:
        answer = self.http.post(f"/api/pools/{self.cfg.pool}/lease", headers=self._auth,
                                json={"idle_polls": self.idle_polls}, timeout=15)
        self._follow(answer)
        if answer.status_code == 200:
            data = answer.json()
            self.idle_polls = 0
            self._start_attempt(data["job_id"], data["attempt"], data["token"])
            return
        if answer.status_code == 204:
            self.idle_polls += 1
            if self.mode in ("poll", "shadow") and not self.draining:
                self.stop.wait(float(answer.headers.get("Retry-After", "1")))
            return
        if answer.status_code in (401, 403):
            log.error("lease refused; stopping", extra={"factory_id": self.factory_id, "status": answer.status_code})
            self.stop.set()
            return
        answer.raise_for_status()

    def serve(self) -> int:
        self.enroll()
        self.heartbeat()
        beat = threading.Thread(target=self._heartbeat_loop, args=(float(self.heartbeat_seconds),), daemon=True)
        beat.start()
        while not self.stop.is_set():
            with self._lock:
                busy = len(self.running)
            if self.draining:
                if busy == 0:
                    log.info("drained; exiting", extra={"factory_id": self.factory_id})
                    break
                self._slot_freed.wait(1.0)
                self._slot_freed.clear()
                continue
            free = self.cfg.slots - busy
            if free <= 0:
                self._slot_freed.wait(1.0)
                self._slot_freed.clear()
                continue
            try:
                if self.mode == "broker":
                    self.broker_round(free)
                else:
                    self.poll_round()
            except httpx.HTTPError as exc:
                log.warning("coordinator unreachable; retrying", extra={"factory_id": self.factory_id,
                                                                         "error": str(exc)})
                self.stop.wait(2.0)
        for thread in list(self.running.values()):
            thread.join(timeout=5)
        return 0


def serve(cfg: ServeConfig) -> int:
    factory = StandingFactory(cfg)
    try:
        return factory.serve()
    finally:
        factory.http.close()


