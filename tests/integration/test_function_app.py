"""Every function ``function_app`` registers, invoked as the Functions host would invoke it —
with real ``azure.functions`` types — but wired to the embedded adapters (SQLite store, the
embedded bus, the in-process Durable engine)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from gigafactory.azure import handlers, settings
from gigafactory.domain.pools import load_pools
from gigafactory.local.clock import FakeClock
from gigafactory.local.runtime import Runtime, RuntimeConfig
from tests.integration.indexed import FUNCTIONS
from tests.lifecycle.conftest import RecordingLauncher

MANIFEST = {"product": "demo", "title": "t", "task": "hello", "requirements": {"capabilities": ["local"]}}


class EngineClient:
    """The Durable client surface (async, as the binding's) over the in-process engine."""

    def __init__(self, runtime: Runtime) -> None:
        self.engine = runtime.engine

    async def get_status(self, instance_id: str) -> Any:
        return self.engine.get_status(instance_id)

    async def start_new(self, name: str, instance_id: str | None = None, client_input: Any = None) -> str:
        assert instance_id is not None
        self.engine.start_new(name, instance_id, client_input)
        return instance_id

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        if not self.engine.raise_event(instance_id, event_name, event_data):
            raise RuntimeError(f"instance {instance_id} is not running")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(RuntimeConfig(data_dir=tmp_path / "data", pools=load_pools()),
                 clock=FakeClock(datetime(2026, 1, 5, 9, tzinfo=UTC)), launcher=RecordingLauncher())
    settings.use(lambda: rt.services)
    yield rt
    settings.use(None)
    rt.engine.close()




def user_function(name: str) -> Callable[..., Any]:
    assert name in FUNCTIONS, f"function {name} is not registered"
    return FUNCTIONS[name].get_user_function()  # type: ignore[no-any-return]


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    fn = user_function(name)
    if any(isinstance(a, EngineClient) for a in args):
        # The Durable middleware would build a client for the host's HTTP API from a JSON
        # binding string; the body underneath is called with the engine's client instead.
        fn = fn.__wrapped__  # type: ignore[attr-defined]
    result = fn(*args, **kwargs)
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result


def http(method: str, path: str, body: Any = None, token: str | None = None) -> func.HttpResponse:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = func.HttpRequest(method=method, url=f"http://localhost{path}", headers=headers,
                           body=json.dumps(body).encode() if body is not None else b"")
    return call("http_app", req, None)  # type: ignore[no-any-return]


def job_documents(runtime: Runtime) -> func.DocumentList:
    docs = []
    for _, job in runtime.store.changes_since(0, 1000):
        doc = job.to_doc()
        doc["_etag"] = job.etag
        docs.append(func.Document.from_dict(doc))
    return func.DocumentList(docs)


def test_http_function_serves_the_api(runtime: Runtime) -> None:
    assert http("GET", "/api/health").status_code == 200
    answer = http("POST", "/api/jobs", MANIFEST)
    assert answer.status_code == 202
    job_id = json.loads(answer.get_body())["id"]
    assert runtime.store.get(job_id) is not None
    shown = http("GET", f"/api/jobs/{job_id}")
    assert json.loads(shown.get_body())["status"] == "queued"
    assert http("POST", "/api/jobs", {"product": "x"}).status_code == 422


def test_change_feed_trigger_releases_publishes_and_starts_the_lifecycle(runtime: Runtime) -> None:
    assert http("POST", "/api/jobs", MANIFEST).status_code == 202
    client = EngineClient(runtime)
    call("relay_job_changes", job_documents(runtime), client)  # queued -> dispatched
    call("relay_job_changes", job_documents(runtime), client)  # dispatched -> message + lifecycle
    (job,) = [j for _, j in runtime.store.changes_since(0)]
    assert job.status == "dispatched"
    received = runtime.bus.receive("dispatch", "launcher")
    assert [m.message_id for m in received] == [f"{job.id}:1"]
    status = runtime.engine.get_status(job.id)
    assert status is not None and status.runtime_status in ("Pending", "Running")
    # Replaying the same batch: no second message, no second lifecycle, no change.
    runtime.bus.complete(received[0].lock_token)
    call("relay_job_changes", job_documents(runtime), client)
    assert runtime.bus.receive("dispatch", "launcher") == []
    assert runtime.store.get(job.id).status == "dispatched"  # type: ignore[union-attr]


def test_service_bus_trigger_launches_once(runtime: Runtime) -> None:
    answer = http("POST", "/api/jobs", MANIFEST)
    job_id = json.loads(answer.get_body())["id"]
    runtime.relay_once()
    message = func.ServiceBusMessage(body=json.dumps({"job_id": job_id, "attempt": 1, "pool": "local"}).encode())
    call("launch_dispatch", message)
    call("launch_dispatch", message)  # a redelivery
    launcher = runtime.launcher
    assert isinstance(launcher, RecordingLauncher)
    assert len(launcher.starts) == 1
    assert runtime.store.get(job_id).status == "launching"  # type: ignore[union-attr]


def test_service_bus_trigger_raises_on_poison_so_the_broker_dead_letters(runtime: Runtime) -> None:
    from gigafactory.services.launch import BadDispatch

    with pytest.raises(BadDispatch):
        call("launch_dispatch", func.ServiceBusMessage(body=b"not json"))
    with pytest.raises(BadDispatch):
        call("launch_dispatch", func.ServiceBusMessage(body=b'{"job_id": "nope", "attempt": 1, "pool": "local"}'))


def test_queue_submission_accepts_and_dedupes_by_idempotency_key(runtime: Runtime) -> None:
    body = json.dumps({**MANIFEST, "idempotency_key": "order-42"}).encode()
    call("submit_from_queue", func.ServiceBusMessage(body=body))
    call("submit_from_queue", func.ServiceBusMessage(body=body))
    jobs, _ = runtime.store.list()
    assert len(jobs) == 1 and jobs[0].idempotency_key == "order-42"


def test_queue_submission_poison_raises_and_stores_nothing(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    from gigafactory.services.submit import InvalidRequest

    with pytest.raises(InvalidRequest):
        call("submit_from_queue", func.ServiceBusMessage(body=json.dumps({"product": "demo"}).encode()))
    with pytest.raises(ValueError):
        call("submit_from_queue", func.ServiceBusMessage(body=b"{not json"))
    assert runtime.store.list()[0] == []
    assert any("job request rejected" in r.getMessage() for r in caplog.records)


def event(data: Any, event_id: str = "evt-1") -> func.EventGridEvent:
    return func.EventGridEvent(id=event_id, data=data, topic="/gigafactory/requests", subject="jobs",
                               event_type="gigafactory.job.requested", event_time=datetime.now(UTC),
                               data_version="1.0")


def test_event_grid_submission_uses_the_event_id_as_idempotency_key(runtime: Runtime) -> None:
    call("submit_from_event_grid", event(MANIFEST, "evt-7"))
    call("submit_from_event_grid", event(MANIFEST, "evt-7"))  # Event Grid redelivers
    call("submit_from_event_grid", event(MANIFEST, "evt-8"))
    jobs, _ = runtime.store.list()
    assert sorted(j.idempotency_key or "" for j in jobs) == ["eg:evt-7", "eg:evt-8"]


def test_event_grid_poison_is_logged_with_reason_and_id(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    call("submit_from_event_grid", event({"product": "demo", "title": "t"}, "evt-bad"))
    assert runtime.store.list()[0] == []
    (record,) = [r for r in caplog.records if r.getMessage() == "job request event rejected"]
    assert record.__dict__["event_id"] == "evt-bad"
    assert "task" in record.__dict__["reason"]


def test_timer_trigger_runs_the_sweeper(runtime: Runtime) -> None:
    answer = http("POST", "/api/jobs", MANIFEST)
    job_id = json.loads(answer.get_body())["id"]
    # The change feed lost this batch: nothing released it. The sweeper does.
    timer = TimerRequest(past_due=False)
    call("sweep", timer, EngineClient(runtime))
    assert runtime.store.get(job_id).status == "dispatched"  # type: ignore[union-attr]


def test_orchestrator_and_activities_are_the_engine_s(runtime: Runtime) -> None:
    from gigafactory import lifecycle

    assert user_function("job_lifecycle").orchestrator_function is lifecycle.job_lifecycle  # type: ignore[attr-defined]
    for name, fn in lifecycle.ACTIVITIES.items():
        assert user_function(name) is fn


def test_shadow_compare_records_the_broker_side_in_shadow_mode(runtime: Runtime, tmp_path: Path) -> None:
    from gigafactory.domain.pools import load_pools as load
    from gigafactory.local.bus import LocalSubscription
    from gigafactory.services import shadow, submit
    from tests.fleet import fleet_manifest, fleet_pools

    runtime.services.pools = load(fleet_pools(tmp_path / "pools.json"))
    runtime.bus.create_subscription("dispatch", "pool-fleet", {"pool": "fleet"})

    def local(pool: str) -> LocalSubscription:
        return LocalSubscription(runtime.bus, "dispatch", f"pool-{pool}")

    job, _ = submit.submit(runtime.services, fleet_manifest())
    runtime.services.dispatch_mode = "broker"
    assert handlers.shadow_compare(TimerRequest(), local) == 0  # not in shadow mode: nothing read
    runtime.services.dispatch_mode = "shadow"
    runtime.relay_once()  # shadow mode publishes a shadow copy for the queued standing job
    assert handlers.shadow_compare(TimerRequest(), local) == 1
    recorded = [(r["job_id"], r["side"], r["pool"]) for r in runtime.store.shadow_records()]
    assert recorded == [(job.id, "broker", "fleet")]
    assert shadow.report(runtime.services)["pending"] == 1


def test_shadow_compare_is_registered_as_a_timer() -> None:
    assert "shadow_compare" in FUNCTIONS
