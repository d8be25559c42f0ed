"""Idle means idle (SPEC §6): in broker mode with nothing queued, neither the coordinator nor
its standing factories ask the store for work — the factories wait on the broker, and the only
store traffic left is their liveness heartbeat."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from gigafactory.domain.pools import load_pools
from gigafactory.factory.serve import ServeConfig, StandingFactory
from gigafactory.local.runtime import Runtime, RuntimeConfig
from gigafactory.services import submit
from tests.e2e.conftest import free_port
from tests.fleet import FLEET, fleet_manifest, fleet_pools


def test_an_idle_broker_fleet_does_not_poll_the_store(tmp_path: Path) -> None:
    runtime = Runtime(RuntimeConfig(data_dir=tmp_path / "data", pools=load_pools(fleet_pools(tmp_path / "p.json")),
                                    port=free_port(), sweep_seconds=3600))
    ready = threading.Event()
    server = threading.Thread(target=runtime.serve, kwargs={"on_ready": ready.set}, daemon=True)
    server.start()
    assert ready.wait(30)
    receives = Counter[str]()
    factories = []
    for i in range(2):
        factory = StandingFactory(ServeConfig(
            url=f"http://127.0.0.1:{runtime.cfg.port}", pool=FLEET, slots=2, name=f"idle-{i}",
            enrollment_secret=runtime.enrollment_secret, state_dir=tmp_path / f"f{i}", workdir=tmp_path,
            receive_wait_seconds=0.5))
        factory.http.event_hooks = {"request": [lambda r: receives.update([r.url.path.split("/")[-1]])]}
        factories.append(factory)
        threading.Thread(target=factory.serve, daemon=True).start()
    try:
        # One job end to end first, so every loop has run at least once.
        job, _ = submit.submit(runtime.services, fleet_manifest())
        deadline = time.monotonic() + 30
        while (current := runtime.store.get(job.id)) is not None and not current.terminal:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)
        before, waits_before = Counter(runtime.store.ops_by_caller), receives["receive"]
        time.sleep(4.0)
        used = Counter(runtime.store.ops_by_caller) - before
        assert receives["receive"] - waits_before >= 4, "the factories were not waiting on the broker"
        assert {key.split(":")[0] for key in used} <= {"factories"}, f"idle store traffic: {dict(used)}"
    finally:
        for factory in factories:
            factory.stop.set()
        runtime.request_shutdown()
        server.join(15)
