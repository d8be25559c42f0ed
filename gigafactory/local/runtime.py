"""``gigafactory local``: the whole coordinator in one process on SQLite.

The same function bodies the Functions host would invoke, fed by local sources: the store's
change sequence goes to the outbox relay (as the Cosmos change feed would), the launcher
subscription of the embedded bus goes to the launch handler (as the Service Bus trigger
would), ``job_lifecycle`` runs on the in-process Durable engine, and a timer runs the sweeper.
Every loop sleeps until it is woken: nothing polls while idle.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigafactory import accounting, lifecycle, messages
from gigafactory.domain.pools import PoolSet
from gigafactory.local.blobs import FileBlobStore
from gigafactory.local.bus import LocalBus, LocalSubscription
from gigafactory.local.clock import SystemClock
from gigafactory.local.durable import DurableEngine
from gigafactory.local.launcher import SubprocessLauncher
from gigafactory.local.store import SqliteJobStore
from gigafactory.ports import Clock, Launcher
from gigafactory.services import launch, relay, shadow, sweeper
from gigafactory.services.context import DISPATCH_MODES, Services

log = logging.getLogger("gigafactory.runtime")
RELAY_BATCH = 100


def read_or_create_secret(path: Path, env_value: str | None, nbytes: int = 32) -> str:
    """The env value if set; else the one saved in the data dir; else a new one saved 0600."""
    if env_value:
        return env_value
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    return value


class EngineLifecycleClient:
    """The LifecycleClient port over the in-process engine; wakes the engine loop."""

    def __init__(self, engine: DurableEngine, wake: Callable[[], None]) -> None:
        self._engine = engine
        self._wake = wake

    def start(self, job_id: str, payload: dict[str, Any]) -> bool:
        started = self._engine.start_new(lifecycle.ORCHESTRATOR, job_id, payload)
        self._wake()
        return started

    def signal(self, job_id: str, payload: dict[str, Any]) -> bool:
        raised = self._engine.raise_event(job_id, lifecycle.EVENT, payload)
        self._wake()
        return raised


@dataclass
class RuntimeConfig:
    data_dir: Path
    pools: PoolSet
    host: str = "127.0.0.1"
    port: int = 7071
    dispatch_mode: str = "broker"
    sweep_seconds: float = 60.0
    kill_grace_seconds: float = 10.0


class Runtime:
    def __init__(self, cfg: RuntimeConfig, clock: Clock | None = None, launcher: Launcher | None = None) -> None:
        if cfg.dispatch_mode not in DISPATCH_MODES:
            raise ValueError(f"GIGAFACTORY_DISPATCH_MODE: must be one of {', '.join(DISPATCH_MODES)}")
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock or SystemClock()
        self.api_token = read_or_create_secret(cfg.data_dir / "api-token", os.environ.get("GIGAFACTORY_API_TOKEN"))
        signing = read_or_create_secret(cfg.data_dir / "signing-key", os.environ.get("GIGAFACTORY_TOKEN_SECRET"))
        self.enrollment_secret = read_or_create_secret(cfg.data_dir / "enrollment-secret",
                                                       os.environ.get("GIGAFACTORY_ENROLLMENT_SECRET"))
        self.store = SqliteJobStore(cfg.data_dir / "jobs.db")
        self.bus = LocalBus(cfg.data_dir / "bus.db", self.clock)
        self.bus.release_locks()  # one runtime per data dir: any lock is a dead predecessor's
        self.bus.create_topic(messages.EVENTS_TOPIC)
        self.bus.create_subscription(messages.DISPATCH_TOPIC, messages.LAUNCHER_SUBSCRIPTION,
                                     {"launch_mode": "on-demand"})
        for pool in cfg.pools.pools:
            if pool.launch_mode == "standing":
                self.bus.create_subscription(messages.DISPATCH_TOPIC, messages.pool_subscription(pool.name),
                                             {"pool": pool.name})
        self.launcher: Launcher = launcher or SubprocessLauncher(cfg.data_dir,
                                                                 kill_grace_seconds=cfg.kill_grace_seconds)
        self._engine_wake = threading.Event()
        self.engine = DurableEngine(cfg.data_dir / "durable.db", self.clock, lifecycle.ORCHESTRATORS,
                                    lifecycle.ACTIVITIES)
        self.services = Services(
            store=self.store, pools=cfg.pools, clock=self.clock, token_secret=signing.encode(),
            coordinator_url=f"http://{cfg.host}:{cfg.port}", bus=self.bus,
            lifecycle=EngineLifecycleClient(self.engine, self._engine_wake.set), launcher=self.launcher,
            blobs=FileBlobStore(cfg.data_dir / "blobs"), dispatch_mode=cfg.dispatch_mode,
            factories=self.store, shadow_log=self.store, enrollment_secret=self.enrollment_secret,
        )
        lifecycle.use_services(lambda: self.services)
        self._changes = threading.Event()
        self.store.listeners.append(self._changes.set)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cursor_path = cfg.data_dir / "relay.cursor"
        self._server: Any = None

    # -- loops -------------------------------------------------------------------------------

    def _cursor(self) -> int:
        try:
            return int(self._cursor_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _save_cursor(self, seq: int) -> None:
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(str(seq))
        tmp.replace(self._cursor_path)

    def relay_once(self) -> int:
        """Hand the next batch of changes to the relay; the checkpoint moves only after it."""
        cursor = self._cursor()
        batch = self.store.changes_since(cursor, RELAY_BATCH)
        if batch:
            relay.handle_changes(self.services, [job for _, job in batch])
            self._save_cursor(batch[-1][0])
        return len(batch)

    def _relay_loop(self) -> None:
        accounting.caller.set("relay")
        while not self._stop.is_set():
            self._changes.clear()
            try:
                if self.relay_once():
                    continue
            except Exception:
                log.exception("relay batch failed; it will be retried")
                self._stop.wait(1.0)
                continue
            self._changes.wait()

    def launch_once(self) -> int:
        received = self.bus.receive(messages.DISPATCH_TOPIC, messages.LAUNCHER_SUBSCRIPTION, max_messages=8)
        for msg in received:
            try:
                launch.handle_dispatch(self.services, msg.body)
            except launch.BadDispatch as exc:
                self.bus.dead_letter(msg.lock_token, "BadDispatch", str(exc))
            except Exception as exc:
                log.exception("launch failed; the broker will redeliver", extra={"message_id": msg.message_id})
                self.bus.abandon(msg.lock_token)
                del exc
            else:
                self.bus.complete(msg.lock_token)
        return len(received)

    def pump(self, max_rounds: int = 1000) -> int:
        """Run every source until nothing moves: the single-threaded, deterministic drive used
        by tests and benchmarks (with a fake clock, time moves only when they move it)."""
        total = 0
        for _ in range(max_rounds):
            moved = self.relay_once() + self.launch_once() + self.engine.run_until_idle()
            if not moved:
                return total
            total += moved
        raise RuntimeError(f"runtime still busy after {max_rounds} rounds")

    def _launch_loop(self) -> None:
        accounting.caller.set("launch")
        while not self._stop.is_set():
            if self.launch_once():
                continue
            self.bus.wait_for_message(messages.DISPATCH_TOPIC, messages.LAUNCHER_SUBSCRIPTION, timeout=30.0)

    def _engine_loop(self) -> None:
        accounting.caller.set("lifecycle")
        while not self._stop.is_set():
            self._engine_wake.clear()
            try:
                self.engine.run_until_idle()
            except Exception:
                log.exception("durable engine step failed")
                self._stop.wait(1.0)
            due = self.engine.next_timer_due()
            timeout = None if due is None else max((due - self.clock.now()).total_seconds(), 0.0) + 0.01
            self._engine_wake.wait(timeout)

    def _sweep_loop(self) -> None:
        accounting.caller.set("sweeper")
        while not self._stop.wait(self.cfg.sweep_seconds):
            try:
                sweeper.sweep(self.services)
            except Exception:
                log.exception("sweep failed")

    def shadow_once(self) -> int:
        """Shadow mode's broker side: what the pool subscriptions would have delivered."""
        seen = 0
        for pool in self.cfg.pools.pools:
            if pool.launch_mode != "standing":
                continue
            source = LocalSubscription(self.bus, messages.DISPATCH_TOPIC, messages.pool_subscription(pool.name))
            seen += shadow.consume(self.services, pool.name, source)
        return seen

    def _shadow_loop(self) -> None:
        accounting.caller.set("shadow")
        while not self._stop.is_set():
            if self.services.dispatch_mode != "shadow":
                return
            try:
                if self.shadow_once():
                    continue
            except Exception:
                log.exception("shadow consumer failed")
            self.bus.wait(timeout=5.0)

    # -- start / stop --------------------------------------------------------------------------

    def start_background(self) -> None:
        loops = [self._relay_loop, self._launch_loop, self._engine_loop, self._sweep_loop]
        if self.services.dispatch_mode == "shadow":
            loops.append(self._shadow_loop)
        for target in loops:
            thread = threading.Thread(target=target, name=target.__name__.strip("_"), daemon=True)
            thread.start()
            self._threads.append(thread)
        self._changes.set()

    def stop(self) -> None:
        self._stop.set()
        self._changes.set()
        self._engine_wake.set()
        self.bus.interrupt()
        for thread in self._threads:
            thread.join(timeout=5)

    def app(self) -> Any:
        from gigafactory.api.app import create_app
        from gigafactory.api.attempts import router as attempts_router
        from gigafactory.api.factories import operator as factories_operator
        from gigafactory.api.factories import router as factories_router
        from gigafactory.local.gateway import gateway_router

        return create_app(lambda: self.services, api_token=self.api_token,
                          dispatch_mode=lambda: self.services.dispatch_mode,
                          extra_routers=[attempts_router, factories_router, factories_operator,
                                         gateway_router(self.bus)])

    def request_shutdown(self) -> None:
        """Ask a serving runtime to stop as SIGTERM would (for embedding and tests)."""
        if self._server is not None:
            self._server.should_exit = True

    def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        import uvicorn

        config = uvicorn.Config(self.app(), host=self.cfg.host, port=self.cfg.port, log_config=None,
                                access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        self._server = server
        self.start_background()
        if on_ready is not None:
            original = server.startup

            async def startup(sockets: Any = None) -> None:
                await original(sockets)
                on_ready()

            server.startup = startup  # type: ignore[method-assign]
        try:
            server.run()
        finally:
            self.stop()
