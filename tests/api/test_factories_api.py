"""Standing factories over HTTP: enrollment auth, credentials, drain, offline detection and
recovery, the poll-mode lease with its idle backoff, and the shadow-mode report."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gigafactory.domain.pools import load_pools
from gigafactory.local.clock import FakeClock
from gigafactory.local.runtime import Runtime, RuntimeConfig
from gigafactory.services import shadow, submit, sweeper
from tests.fleet import FLEET, fleet_manifest, fleet_pools
from tests.lifecycle.conftest import RecordingLauncher


@dataclass
class Fleet:
    runtime: Runtime
    clock: FakeClock
    http: TestClient

    @property
    def operator(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.runtime.api_token}"}

    def enroll(self, name: str = "host", slots: int = 2, pool: str = FLEET) -> tuple[str, dict[str, str]]:
        answer = self.http.post("/api/factories", json={"pool": pool, "name": name, "slots": slots},
                                headers={"Authorization": f"Bearer {self.runtime.enrollment_secret}"})
        assert answer.status_code == 201, answer.text
        data = answer.json()
        return data["id"], {"Authorization": f"Bearer {data['credential']}"}

    def submit(self, **overrides: Any) -> str:
        job, _ = submit.submit(self.runtime.services, fleet_manifest(**overrides))
        return job.id

    def status(self, job_id: str) -> str:
        job = self.runtime.store.get(job_id)
        assert job is not None
        return job.status.value


def make_fleet(tmp_path: Path, mode: str) -> Fleet:
    clock = FakeClock(datetime(2026, 3, 2, 8, tzinfo=UTC))
    cfg = RuntimeConfig(data_dir=tmp_path / f"data-{mode}", pools=load_pools(fleet_pools(tmp_path / "pools.json")),
                        dispatch_mode=mode)
    runtime = Runtime(cfg, clock=clock, launcher=RecordingLauncher())
    return Fleet(runtime, clock, TestClient(runtime.app()))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path, "broker")
    yield fleet
    fleet.runtime.engine.close()


@pytest.fixture
def poll(tmp_path: Path) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path, "poll")
    yield fleet
    fleet.runtime.engine.close()


def test_enrollment_needs_the_secret(broker: Fleet) -> None:
    body = {"pool": FLEET, "name": "h", "slots": 1}
    assert broker.http.post("/api/factories", json=body).status_code == 401
    wrong = broker.http.post("/api/factories", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert broker.runtime.store.list_factories() == []
    factory_id, _ = broker.enroll()
    assert [f.id for f in broker.runtime.store.list_factories()] == [factory_id]


def test_enrollment_validates_the_pool(broker: Fleet) -> None:
    secret = {"Authorization": f"Bearer {broker.runtime.enrollment_secret}"}
    unknown = broker.http.post("/api/factories", json={"pool": "gpu", "name": "h"}, headers=secret)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "pool"
    on_demand = broker.http.post("/api/factories", json={"pool": "local", "name": "h"}, headers=secret)
    assert on_demand.status_code == 422 and "on-demand" in on_demand.json()["message"]
    assert broker.runtime.store.list_factories() == []


def test_the_credential_is_stored_hashed(broker: Fleet) -> None:
    factory_id, creds = broker.enroll()
    secret = creds["Authorization"].split("_", 2)[2]
    raw = (broker.runtime.cfg.data_dir / "jobs.db").read_bytes()
    assert secret.encode() not in raw
    listed = broker.http.get("/api/factories", headers=broker.operator).json()["items"]
    assert listed[0]["id"] == factory_id and "credential_sha256" not in listed[0]


def test_a_retired_factory_is_refused(broker: Fleet) -> None:
    factory_id, creds = broker.enroll()
    assert broker.http.delete(f"/api/factories/{factory_id}", headers=broker.operator).status_code == 200
    answer = broker.http.post(f"/api/factories/{factory_id}/heartbeat", json={}, headers=creds)
    assert answer.status_code == 403 and "retired" in answer.json()["message"]
    assert broker.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds).status_code == 403


def test_a_credential_speaks_only_for_its_own_factory(broker: Fleet) -> None:
    a, creds_a = broker.enroll("a")
    b, _ = broker.enroll("b")
    assert broker.http.post(f"/api/factories/{b}/heartbeat", json={}, headers=creds_a).status_code == 403
    assert broker.http.post(f"/api/factories/{b}/drain", headers=creds_a).status_code == 403
    assert broker.http.delete(f"/api/factories/{b}", headers=creds_a).status_code == 403
    forged = {"Authorization": creds_a["Authorization"].replace(a, b)}
    assert broker.http.post(f"/api/factories/{b}/heartbeat", json={}, headers=forged).status_code == 403
    assert broker.http.post("/api/pools/local/lease", json={}, headers=creds_a).status_code == 403


def test_a_stolen_credential_cannot_act_on_another_factorys_attempt(broker: Fleet) -> None:
    a, creds_a = broker.enroll("a")
    b, creds_b = broker.enroll("b")
    job_id = broker.submit()
    broker.runtime.pump()
    assert broker.status(job_id) == "dispatched"
    ask = {"job_id": job_id, "attempt": 1}
    token_b = broker.http.post(f"/api/factories/{b}/attempts", json=ask, headers=creds_b).json()["token"]
    # A (or whoever holds A's credential) races for the same attempt before B claims it ...
    token_a = broker.http.post(f"/api/factories/{a}/attempts", json=ask, headers=creds_a).json()["token"]
    claim = broker.http.post(f"/api/attempts/{job_id}/1/claim", json={"holder": b},
                             headers={"Authorization": f"Bearer {token_b}"})
    assert claim.status_code == 200
    # ... but once B holds it, neither a fresh token nor A's earlier one can touch it.
    again = broker.http.post(f"/api/factories/{a}/attempts", json=ask, headers=creds_a)
    assert again.status_code == 409
    as_a = {"Authorization": f"Bearer {token_a}"}
    assert broker.http.post(f"/api/attempts/{job_id}/1/claim", json={"holder": a}, headers=as_a).status_code == 409
    assert broker.http.post(f"/api/attempts/{job_id}/1/heartbeat", headers=as_a).status_code == 409
    assert broker.http.post(f"/api/attempts/{job_id}/1/complete", json={"exit_code": 1},
                            headers=as_a).status_code == 409
    job = broker.runtime.store.get(job_id)
    assert job is not None and job.status == "running" and job.lease is not None and job.lease.holder == b


def test_poll_lease_takes_the_best_job_then_backs_off(poll: Fleet) -> None:
    _, creds = poll.enroll()
    low = poll.submit(priority="P3")
    high = poll.submit(priority="P0")
    poll.runtime.pump()
    assert {poll.status(low), poll.status(high)} == {"queued"}, "poll mode releases no standing work itself"
    first = poll.http.post(f"/api/pools/{FLEET}/lease", json={"idle_polls": 0}, headers=creds)
    assert first.status_code == 200 and first.json()["job_id"] == high
    assert first.headers["X-Gigafactory-Dispatch-Mode"] == "poll"
    token = first.json()["token"]
    claim = poll.http.post(f"/api/attempts/{high}/1/claim", json={"holder": "x"},
                           headers={"Authorization": f"Bearer {token}"})
    assert claim.status_code == 200
    assert poll.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds).json()["job_id"] == low
    waits = []
    for idle in (0, 3, 10):
        empty = poll.http.post(f"/api/pools/{FLEET}/lease", json={"idle_polls": idle}, headers=creds)
        assert empty.status_code == 204
        waits.append(float(empty.headers["Retry-After"]))
    assert 0.8 <= waits[0] <= 1.2
    assert 6.4 <= waits[1] <= 9.6
    assert 48 <= waits[2] <= 72


def test_a_lease_is_one_query(poll: Fleet) -> None:
    _, creds = poll.enroll()
    for _ in range(3):
        poll.submit()
    poll.runtime.pump()
    store = poll.runtime.store
    before = dict(store.ops_by_caller)
    for _ in range(4):  # three jobs, then one empty answer
        poll.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds)
    used = {k: v - before.get(k, 0) for k, v in store.ops_by_caller.items() if k.startswith("lease:")}
    assert used == {"lease:query": 4, "lease:read": 4, "lease:write": 3}


def test_a_draining_factory_takes_no_new_work(poll: Fleet) -> None:
    factory_id, creds = poll.enroll()
    job_id = poll.submit()
    poll.runtime.pump()
    assert poll.http.post(f"/api/factories/{factory_id}/drain", headers=creds).status_code == 202
    assert poll.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds).status_code == 204
    beat = poll.http.post(f"/api/factories/{factory_id}/heartbeat", json={}, headers=creds).json()
    assert beat["drain"] is True and beat["status"] == "draining"
    assert poll.status(job_id) == "queued"


def test_silent_factories_go_offline_and_recover(broker: Fleet) -> None:
    factory_id, creds = broker.enroll()
    broker.clock.advance(60)
    assert sweeper.sweep(broker.runtime.services).factories_offline == []
    broker.clock.advance(31)
    assert sweeper.sweep(broker.runtime.services).factories_offline == [factory_id]
    shown = broker.http.get(f"/api/factories/{factory_id}", headers=broker.operator).json()
    assert shown["status"] == "offline"
    beat = broker.http.post(f"/api/factories/{factory_id}/heartbeat", json={}, headers=creds)
    assert beat.json()["status"] == "active"


def test_the_attempt_of_a_vanished_factory_is_retried(broker: Fleet) -> None:
    factory_id, creds = broker.enroll()
    job_id = broker.submit(timeouts={"heartbeat_seconds": 30}, retry={"max_attempts": 2, "backoff_seconds": 0})
    broker.runtime.pump()
    token = broker.http.post(f"/api/factories/{factory_id}/attempts", json={"job_id": job_id, "attempt": 1},
                             headers=creds).json()["token"]
    broker.http.post(f"/api/attempts/{job_id}/1/claim", json={"holder": factory_id},
                     headers={"Authorization": f"Bearer {token}"})
    broker.runtime.pump()
    assert broker.status(job_id) == "running"
    broker.clock.advance(31)  # the host died: no heartbeats
    broker.runtime.pump()
    job = broker.runtime.store.get(job_id)
    assert job is not None and job.attempt == 2 and job.status == "dispatched"
    assert any(h.reason == "heartbeat_timeout" for h in job.history)


def test_shadow_mode_reports_agreement_and_divergence(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, "shadow")
    try:
        _, creds = fleet.enroll()
        jobs = [fleet.submit() for _ in range(3)]
        fleet.runtime.pump()
        assert fleet.runtime.shadow_once() == 3  # the broker path's deliveries, recorded
        for _ in jobs:
            assert fleet.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds).status_code == 200
        report = fleet.http.get("/api/migration/shadow", headers=fleet.operator).json()
        assert (report["compared"], report["agreed"], report["agreement_rate"]) == (3, 3, 1.0)

        # A job the broker path routed elsewhere, and one it never delivered.
        mismatch = fleet.submit()
        fleet.runtime.pump()
        fleet.runtime.bus.receive("dispatch", "pool-fleet", max_messages=10)  # lost before the shadow reads it
        shadow.record(fleet.runtime.services, mismatch, 1, "broker", "local")
        missing = fleet.submit()
        fleet.runtime.pump()
        fleet.runtime.bus.receive("dispatch", "pool-fleet", max_messages=10)
        for _ in range(2):
            fleet.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds)
        pending = fleet.http.get("/api/migration/shadow", headers=fleet.operator).json()
        assert pending["pending"] == 1  # within the grace period a missing side is not yet a divergence
        fleet.clock.advance(61)
        report = fleet.http.get("/api/migration/shadow", headers=fleet.operator).json()
        reasons = {d["job_id"]: d["reason"] for d in report["divergences"]}
        assert reasons == {mismatch: "pool_mismatch", missing: "broker_missing"}
        assert report["compared"] == 5 and report["agreement_rate"] == 0.6
    finally:
        fleet.runtime.engine.close()


def test_an_undelivered_release_returns_to_the_queue_when_poll_mode_takes_over(broker: Fleet) -> None:
    from gigafactory.services import relay

    _, creds = broker.enroll()
    job_id = broker.submit()
    broker.runtime.pump()
    assert broker.status(job_id) == "dispatched"  # released for broker delivery, nobody took it yet
    broker.runtime.services.dispatch_mode = "poll"  # the deployment switches to poll mode
    job = broker.runtime.store.get(job_id)
    assert job is not None
    relay.handle_changes(broker.runtime.services, [job])
    job = broker.runtime.store.get(job_id)
    assert job is not None and (job.status, job.attempt) == ("queued", 1)
    assert broker.runtime.store.get_capacity(FLEET).inflight == {}
    leased = broker.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds)
    assert leased.status_code == 200 and leased.json()["job_id"] == job_id


def test_a_leased_job_is_not_returned_to_the_queue(poll: Fleet) -> None:
    from gigafactory.services import relay

    _, creds = poll.enroll()
    job_id = poll.submit()
    poll.runtime.pump()
    assert poll.http.post(f"/api/pools/{FLEET}/lease", json={}, headers=creds).status_code == 200
    job = poll.runtime.store.get(job_id)
    assert job is not None and job.factory_id is not None
    relay.handle_changes(poll.runtime.services, [job])
    assert poll.status(job_id) == "dispatched"


def test_a_re_release_after_a_return_to_the_queue_is_not_swallowed_by_duplicate_detection(broker: Fleet) -> None:
    from gigafactory.services import relay

    job_id = broker.submit()
    broker.runtime.pump()
    broker.runtime.services.dispatch_mode = "poll"
    job = broker.runtime.store.get(job_id)
    assert job is not None
    relay.handle_changes(broker.runtime.services, [job])  # back to the queue, undelivered
    broker.runtime.services.dispatch_mode = "broker"  # and back to broker mode
    broker.runtime.pump()
    assert broker.status(job_id) == "dispatched"
    delivered = broker.runtime.bus.receive("dispatch", "pool-fleet", max_messages=10)
    assert sorted(m.message_id for m in delivered) == [f"{job_id}:1", f"{job_id}:1:r1"]
    job = broker.runtime.store.get(job_id)
    assert job is not None and job.attempt == 1 and job.resends == 1


def test_shadow_mode_returns_a_leftover_broker_release_to_the_queue_at_once(broker: Fleet) -> None:
    job_id = broker.submit()
    broker.runtime.pump()
    assert broker.status(job_id) == "dispatched"  # released and published in broker mode
    broker.runtime.services.dispatch_mode = "shadow"  # the deployment moves to shadow mode
    assert broker.runtime.shadow_once() == 1  # the shadow consumer meets the real message ...
    job = broker.runtime.store.get(job_id)
    assert job is not None and (job.status, job.attempt) == ("queued", 1)  # ... and the job can be leased
    assert broker.runtime.store.shadow_records() == []  # a real dispatch is not a shadow delivery
