"""One contract for every ``JobStore`` (and for the ``FactoryStore`` and ``ShadowLog`` the same
stores implement): the same tests run unchanged on SQLite and on Cosmos DB.

The services' own tests run on the embedded store, so anything the Cosmos store did differently
through the port would first show up in Azure. These tests are what keeps the two interchangeable.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from azure.cosmos import ContainerProxy, CosmosClient, DatabaseProxy, PartitionKey

from gigafactory.azure.cosmos_store import (
    CONNECTION_SETTING,
    DATABASE_SETTING,
    ENDPOINT_SETTING,
    FACTORIES_CONTAINER,
    JOBS_CONTAINER,
    CosmosJobStore,
)
from gigafactory.domain import factories as F
from gigafactory.domain.factories import Factory, FactoryStatus
from gigafactory.domain.job import Job, new_job, release
from gigafactory.domain.manifest import Manifest
from gigafactory.domain.states import Status
from gigafactory.domain.timefmt import to_iso
from gigafactory.local.store import SqliteJobStore
from gigafactory.ports import Capacity, Conflict, FactoryStore, JobStore, ShadowLog

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def make_job(job_id: str, *, pool: str = "alpha", product: str = "widgets", at: datetime = T0,
             priority: str = "P2", status: Status = Status.QUEUED, due_at: datetime | None = None,
             labels: dict[str, str] | None = None) -> Job:
    manifest = Manifest(product=product, title=f"job {job_id}", task="Fix the flaky test.", priority=priority,
                        labels=labels or {})
    job = new_job(job_id=job_id, manifest=manifest, pool=pool, now=at)
    changes: dict[str, Any] = {}
    if status is not Status.QUEUED:
        changes["status"] = status
    if due_at is not None:
        changes["due_at"] = due_at
    return job.model_copy(update=changes) if changes else job


@pytest.fixture(params=["sqlite", "cosmos"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        sqlite = SqliteJobStore(tmp_path / "jobs.db")
        yield sqlite
        sqlite.close()
    else:
        jobs, pools = request.getfixturevalue("cosmos_containers")
        yield CosmosJobStore(jobs, pools)


class Registry(JobStore, FactoryStore, ShadowLog, Protocol):
    """One store in all three roles, as both composition roots wire it (the shadow log shares
    a container with pool capacity on Cosmos, so the two are tested side by side)."""


@pytest.fixture
def cosmos_factories(cosmos_database: DatabaseProxy) -> Iterator[ContainerProxy]:
    """A fresh ``factories`` container for one test, partitioned as infra partitions it."""
    container = cosmos_database.create_container(f"factories-{uuid.uuid4().hex[:8]}",
                                                 partition_key=PartitionKey(path="/pool"))
    yield container
    cosmos_database.delete_container(container)


@pytest.fixture(params=["sqlite", "cosmos"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        sqlite = SqliteJobStore(tmp_path / "jobs.db")
        yield sqlite
        sqlite.close()
    else:
        jobs, pools = request.getfixturevalue("cosmos_containers")
        yield CosmosJobStore(jobs, pools, request.getfixturevalue("cosmos_factories"))


def make_factory(factory_id: str, *, pool: str = "alpha", name: str | None = None, slots: int = 2) -> Factory:
    return Factory(id=factory_id, pool=pool, name=name or f"host {factory_id}", slots=slots,
                   credential_sha256="0" * 64, enrolled_at=T0, last_heartbeat_at=T0)


def ops(store: JobStore) -> dict[str, int]:
    return dict(store.ops)  # type: ignore[attr-defined]


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


# -- create / get ---------------------------------------------------------------------------------


def test_create_stores_the_job_and_returns_it_with_an_etag(store: JobStore) -> None:
    job = make_job("j-1", labels={"team": "core"})
    stored, created = store.create(job)
    assert created is True
    assert stored.etag
    assert stored.to_doc() == job.to_doc()
    for read in (store.get("j-1"), store.get("j-1", "alpha")):
        assert read is not None
        assert read.to_doc() == job.to_doc()
        assert read.etag == stored.etag


def test_create_is_idempotent(store: JobStore) -> None:
    first, created = store.create(make_job("j-1"))
    again, created_again = store.create(make_job("j-1", labels={"second": "submission"}))
    assert (created, created_again) == (True, False)
    assert again.etag == first.etag
    assert again.labels == {}
    assert ids(store.list()[0]) == ["j-1"]


def test_create_with_the_same_id_in_another_pool_returns_the_existing_job(store: JobStore) -> None:
    store.create(make_job("j-1", pool="alpha"))
    existing, created = store.create(make_job("j-1", pool="beta"))
    assert created is False
    assert existing.pool == "alpha"
    assert ids(store.list()[0]) == ["j-1"]
    assert store.counts("beta") == {}


def test_get_missing_is_none(store: JobStore) -> None:
    store.create(make_job("j-1"))
    assert store.get("nope") is None
    assert store.get("nope", "alpha") is None
    assert store.get("nope", "no-such-pool") is None


def test_get_with_a_wrong_pool_hint_still_finds_the_job(store: JobStore) -> None:
    store.create(make_job("j-1", pool="alpha"))
    found = store.get("j-1", "beta")
    assert found is not None and found.pool == "alpha"


# -- replace ----------------------------------------------------------------------------------------


def test_replace_with_the_current_etag_writes_and_changes_the_etag(store: JobStore) -> None:
    stored, _ = store.create(make_job("j-1"))
    updated = store.replace(release(stored, T0 + timedelta(minutes=1)))
    assert updated.status is Status.DISPATCHED
    assert updated.etag and updated.etag != stored.etag
    read = store.get("j-1", "alpha")
    assert read is not None
    assert read.status is Status.DISPATCHED and read.etag == updated.etag
    assert read.dispatched_at == T0 + timedelta(minutes=1)


def test_replace_with_a_stale_etag_conflicts_and_changes_nothing(store: JobStore) -> None:
    stored, _ = store.create(make_job("j-1"))
    winner = store.replace(stored.model_copy(update={"labels": {"by": "winner"}}))
    loser = release(stored, T0)
    assert loser.etag == stored.etag
    with pytest.raises(Conflict):
        store.replace(loser)
    read = store.get("j-1")
    assert read is not None
    assert read.status is Status.QUEUED and read.labels == {"by": "winner"} and read.etag == winner.etag


def test_replace_without_an_etag_conflicts(store: JobStore) -> None:
    stored, _ = store.create(make_job("j-1"))
    blind = stored.model_copy(update={"labels": {"blind": "write"}})
    blind.etag = None
    with pytest.raises(Conflict):
        store.replace(blind)
    read = store.get("j-1")
    assert read is not None and read.labels == {}


# -- list -------------------------------------------------------------------------------------------


@pytest.fixture
def catalogue(store: JobStore) -> list[Job]:
    """Seven jobs, one minute apart, over two pools, two products and three statuses."""
    spec = [
        ("j-0", "alpha", "widgets", Status.QUEUED),
        ("j-1", "beta", "gadgets", Status.RUNNING),
        ("j-2", "alpha", "gadgets", Status.QUEUED),
        ("j-3", "alpha", "widgets", Status.SUCCEEDED),
        ("j-4", "beta", "widgets", Status.QUEUED),
        ("j-5", "beta", "gadgets", Status.QUEUED),
        ("j-6", "alpha", "widgets", Status.RUNNING),
    ]
    jobs = [make_job(i, pool=p, product=prod, status=s, at=T0 + timedelta(minutes=n))
            for n, (i, p, prod, s) in enumerate(spec)]
    for job in jobs:
        store.create(job)
    return jobs


def newest_first(jobs: list[Job]) -> list[str]:
    return ids(sorted(jobs, key=lambda j: j.submitted_at, reverse=True))


def test_list_is_newest_first_with_each_filter(store: JobStore, catalogue: list[Job]) -> None:
    assert ids(store.list()[0]) == newest_first(catalogue)
    cases: list[dict[str, str]] = [
        {"status": "queued"}, {"status": "running"}, {"product": "gadgets"}, {"pool": "beta"},
        {"pool": "alpha", "status": "queued"}, {"product": "widgets", "status": "queued"},
        {"pool": "alpha", "product": "widgets", "status": "running"}, {"status": "failed"},
    ]
    for filters in cases:
        expected = [j for j in catalogue if all(str(getattr(j, k)) == v for k, v in filters.items())]
        page, token = store.list(**filters)  # type: ignore[arg-type]
        assert ids(page) == newest_first(expected), filters
        assert token is None


@pytest.mark.parametrize("filters", [{}, {"pool": "alpha"}, {"status": "queued"}])
def test_list_pages_cover_every_job_exactly_once(store: JobStore, catalogue: list[Job],
                                                 filters: dict[str, str]) -> None:
    expected = [j for j in catalogue if all(str(getattr(j, k)) == v for k, v in filters.items())]
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = store.list(limit=3, continuation=token, **filters)  # type: ignore[arg-type]
        pages += 1
        assert len(page) <= 3
        seen += ids(page)
        if token is None:
            break
        assert pages < 10
    assert seen == newest_first(expected)
    assert pages == max(1, -(-len(expected) // 3))


def test_list_pages_split_jobs_submitted_at_the_same_instant(store: JobStore) -> None:
    instants = [T0, T0 + timedelta(seconds=1), *[T0 + timedelta(seconds=2)] * 4, T0 + timedelta(seconds=3)]
    for n, at in enumerate(instants):
        store.create(make_job(f"j-{n}", pool=("alpha", "beta")[n % 2], at=at))
    seen: list[str] = []
    token: str | None = None
    while True:
        page, token = store.list(limit=3, continuation=token)
        seen += ids(page)
        if token is None:
            break
    assert sorted(seen) == sorted(f"j-{n}" for n in range(len(instants)))
    assert len(seen) == len(set(seen))
    assert seen[0] == "j-6" and set(seen[1:5]) == {"j-2", "j-3", "j-4", "j-5"} and seen[5:] == ["j-1", "j-0"]


@pytest.mark.parametrize("token", ["not a token", "bm9wZQ", "WzEsMl0", "WyJ4Il0"])
def test_list_refuses_a_continuation_it_did_not_issue(store: JobStore, token: str) -> None:
    with pytest.raises(ValueError, match="continuation"):
        store.list(continuation=token)


# -- scheduler and sweeper reads ----------------------------------------------------------------------


def test_queued_is_highest_sort_key_first_and_only_due_queued_jobs_of_the_pool(store: JobStore) -> None:
    now = T0 + timedelta(hours=1)
    wanted = [
        make_job("p0-late", priority="P0", at=T0 + timedelta(minutes=30)),
        make_job("p0-early", priority="P0", at=T0),
        make_job("p1", priority="P1", at=T0),
        make_job("p3", priority="P3", at=T0),
        make_job("due-now", priority="P2", at=T0, due_at=now),
    ]
    others = [
        make_job("not-due", priority="P0", at=T0, due_at=now + timedelta(seconds=1)),
        make_job("running", priority="P0", at=T0, status=Status.RUNNING),
        make_job("dispatched", priority="P0", at=T0, status=Status.DISPATCHED),
        make_job("other-pool", pool="beta", priority="P0", at=T0),
    ]
    for job in [*others, *wanted]:
        store.create(job)
    expected = ids(sorted(wanted, key=lambda j: j.sort_key, reverse=True))
    assert expected[:3] == ["p0-early", "p0-late", "p1"]
    assert ids(store.queued("alpha", now, 10)) == expected
    assert ids(store.queued("alpha", now, 2)) == expected[:2]
    assert ids(store.queued("gamma", now, 10)) == []


def test_in_status_returns_jobs_in_any_of_the_statuses(store: JobStore) -> None:
    statuses = [Status.QUEUED, Status.DISPATCHED, Status.LAUNCHING, Status.RUNNING, Status.SUCCEEDED]
    for n, status in enumerate(statuses * 2):
        store.create(make_job(f"j-{n}", pool=("alpha", "beta")[n % 2], status=status))
    found = store.in_status(["dispatched", "launching", "running"])
    assert sorted(ids(found)) == ["j-1", "j-2", "j-3", "j-6", "j-7", "j-8"]
    assert all(j.in_flight for j in found)
    assert len(store.in_status(["dispatched", "launching", "running"], limit=4)) == 4
    assert store.in_status(["failed"]) == []
    assert store.in_status([]) == []


def test_counts_are_per_status_for_one_pool(store: JobStore) -> None:
    spec = [("alpha", Status.QUEUED), ("alpha", Status.QUEUED), ("alpha", Status.RUNNING),
            ("alpha", Status.FAILED), ("beta", Status.QUEUED), ("beta", Status.SUCCEEDED)]
    for n, (pool, status) in enumerate(spec):
        store.create(make_job(f"j-{n}", pool=pool, status=status))
    assert store.counts("alpha") == {"queued": 2, "running": 1, "failed": 1}
    assert store.counts("beta") == {"queued": 1, "succeeded": 1}
    assert store.counts("gamma") == {}


# -- capacity --------------------------------------------------------------------------------------


def test_capacity_is_created_once_and_replaced_under_its_etag(store: JobStore) -> None:
    empty = store.get_capacity("alpha")
    assert (empty.pool, empty.inflight, empty.etag) == ("alpha", {}, None)

    slot = {"attempt": 1, "at": "2026-03-02T09:00:00.000000Z"}
    created = store.replace_capacity(Capacity(pool="alpha", inflight={"j-1": slot}))
    assert created.etag
    with pytest.raises(Conflict):
        store.replace_capacity(Capacity(pool="alpha", inflight={"j-9": slot}))

    read = store.get_capacity("alpha")
    assert read.inflight == {"j-1": slot} and read.etag == created.etag

    grown = store.replace_capacity(Capacity(pool="alpha", inflight={**read.inflight, "j-2": slot}, etag=read.etag))
    assert grown.etag and grown.etag != read.etag
    with pytest.raises(Conflict):
        store.replace_capacity(Capacity(pool="alpha", inflight={}, etag=read.etag))

    final = store.get_capacity("alpha")
    assert final.inflight == {"j-1": slot, "j-2": slot} and final.etag == grown.etag
    assert store.get_capacity("beta").etag is None


# -- concurrency and accounting -------------------------------------------------------------------


def test_concurrent_read_modify_write_loses_no_update(store: JobStore) -> None:
    store.create(make_job("j-1", labels={"n": "0"}))
    threads_n, rounds = 8, 5
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            for _ in range(rounds):
                while True:
                    job = store.get("j-1", "alpha")
                    assert job is not None
                    bumped = job.model_copy(update={"labels": {"n": str(int(job.labels["n"]) + 1)}})
                    try:
                        store.replace(bumped)
                        break
                    except Conflict:
                        continue  # someone else wrote first: read again and redo the increment
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    final = store.get("j-1")
    assert final is not None and final.labels == {"n": str(threads_n * rounds)}


def test_operations_are_counted_by_kind(store: JobStore) -> None:
    stored, _ = store.create(make_job("j-1"))
    before = ops(store)
    store.get("j-1", "alpha")
    after_read = ops(store)
    store.replace(stored.model_copy(update={"labels": {"a": "b"}}))
    after_write = ops(store)
    store.list()
    after_query = ops(store)
    assert set(after_query) <= {"read", "write", "query"}

    def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) != a.get(k, 0)}

    assert delta(before, after_read) == {"read": 1}
    assert delta(after_read, after_write) == {"write": 1}
    assert delta(after_write, after_query) == {"query": 1}


# -- standing factories ------------------------------------------------------------------------------


def factory_ids(factories: list[Factory]) -> list[str]:
    return [f.id for f in factories]


def test_factory_create_returns_it_with_an_etag_and_get_finds_it_by_id_alone(registry: Registry) -> None:
    factory = make_factory("f-1", pool="beta")
    stored = registry.create_factory(factory)
    assert stored.etag
    assert stored.to_doc() == factory.to_doc()
    read = registry.get_factory("f-1")
    assert read is not None
    assert read.to_doc() == factory.to_doc() and read.etag == stored.etag


def test_factories_are_listed_by_id_all_or_of_one_pool(registry: Registry) -> None:
    for factory_id, pool in [("f-3", "alpha"), ("f-1", "beta"), ("f-2", "alpha"), ("f-4", "beta")]:
        registry.create_factory(make_factory(factory_id, pool=pool))
    assert factory_ids(registry.list_factories()) == ["f-1", "f-2", "f-3", "f-4"]
    assert factory_ids(registry.list_factories("alpha")) == ["f-2", "f-3"]
    assert factory_ids(registry.list_factories("beta")) == ["f-1", "f-4"]
    assert registry.list_factories("gamma") == []
    assert all(f.etag for f in registry.list_factories())


def test_factory_replace_with_the_current_etag_writes_and_a_stale_one_conflicts(registry: Registry) -> None:
    stored = registry.create_factory(make_factory("f-1"))
    beat = registry.replace_factory(F.heartbeat(stored, ["j-1"], T0 + timedelta(seconds=15)))
    assert beat.etag and beat.etag != stored.etag
    assert beat.running == ["j-1"] and beat.last_heartbeat_at == T0 + timedelta(seconds=15)

    with pytest.raises(Conflict):
        registry.replace_factory(F.drain(stored))
    read = registry.get_factory("f-1")
    assert read is not None
    assert read.status is FactoryStatus.ACTIVE and read.running == ["j-1"] and read.etag == beat.etag

    drained = registry.replace_factory(F.drain(read))
    assert drained.status is FactoryStatus.DRAINING
    final = registry.get_factory("f-1")
    assert final is not None and final.status is FactoryStatus.DRAINING and final.etag == drained.etag


def test_factory_replace_without_an_etag_or_of_a_missing_factory_conflicts(registry: Registry) -> None:
    stored = registry.create_factory(make_factory("f-1"))
    blind = F.retire(stored)
    blind.etag = None
    with pytest.raises(Conflict):
        registry.replace_factory(blind)
    ghost = make_factory("f-ghost")
    ghost.etag = stored.etag
    with pytest.raises(Conflict):
        registry.replace_factory(ghost)
    read = registry.get_factory("f-1")
    assert read is not None and read.status is FactoryStatus.ACTIVE
    assert registry.get_factory("f-ghost") is None


def test_factory_create_with_an_existing_id_conflicts_in_any_pool(registry: Registry) -> None:
    registry.create_factory(make_factory("f-1", pool="alpha", name="first"))
    for pool in ("alpha", "beta"):
        with pytest.raises(Conflict):
            registry.create_factory(make_factory("f-1", pool=pool, name="second"))
    read = registry.get_factory("f-1")
    assert read is not None and (read.pool, read.name) == ("alpha", "first")
    assert factory_ids(registry.list_factories()) == ["f-1"]


def test_get_missing_factory_is_none(registry: Registry) -> None:
    assert registry.get_factory("f-nope") is None
    registry.create_factory(make_factory("f-1"))
    assert registry.get_factory("f-nope") is None


# -- shadow log --------------------------------------------------------------------------------------


def test_shadow_records_are_idempotent_per_side_and_newest_first(registry: Registry) -> None:
    assert registry.shadow_records() == []
    registry.record_shadow("j-1", 1, "poll", "alpha", T0)
    registry.record_shadow("j-1", 1, "broker", "alpha", T0 + timedelta(seconds=2))
    registry.record_shadow("j-1", 2, "poll", "alpha", T0 + timedelta(seconds=1))
    registry.record_shadow("j-2", 1, "broker", "beta", T0 + timedelta(seconds=3))
    # A replayed delivery of the same side: neither its pool nor its time replaces the first.
    registry.record_shadow("j-1", 1, "poll", "beta", T0 + timedelta(seconds=5))

    def rec(job_id: str, attempt: int, side: str, pool: str, seconds: int) -> dict[str, object]:
        return {"job_id": job_id, "attempt": attempt, "side": side, "pool": pool,
                "at": to_iso(T0 + timedelta(seconds=seconds))}

    expected = [rec("j-2", 1, "broker", "beta", 3), rec("j-1", 1, "broker", "alpha", 2),
                rec("j-1", 2, "poll", "alpha", 1), rec("j-1", 1, "poll", "alpha", 0)]
    assert registry.shadow_records() == expected
    assert registry.shadow_records(limit=2) == expected[:2]


def test_shadow_records_leave_pool_capacity_alone(registry: Registry) -> None:
    registry.record_shadow("j-1", 1, "poll", "alpha", T0)
    capacity = registry.get_capacity("alpha")
    assert (capacity.inflight, capacity.etag) == ({}, None)
    created = registry.replace_capacity(Capacity(pool="alpha", inflight={"j-1": {"attempt": 1}}))
    assert created.etag
    assert [r["job_id"] for r in registry.shadow_records()] == ["j-1"]


def test_factory_and_shadow_operations_are_counted(registry: Registry) -> None:
    stored = registry.create_factory(make_factory("f-0"))
    calls: list[tuple[str, Callable[[], object]]] = [
        ("create_factory", lambda: registry.create_factory(make_factory("f-1"))),
        ("get_factory", lambda: registry.get_factory("f-1")),
        ("replace_factory", lambda: registry.replace_factory(F.drain(stored))),
        ("list_factories", lambda: registry.list_factories("alpha")),
        ("record_shadow", lambda: registry.record_shadow("j-1", 1, "poll", "alpha", T0)),
        ("shadow_records", lambda: registry.shadow_records()),
    ]
    for name, call in calls:
        before = sum(ops(registry).values())
        call()
        assert sum(ops(registry).values()) > before, name
    assert set(ops(registry)) <= {"read", "write", "query"}


# -- Cosmos only: configuration and document shape ----------------------------------------------------


def test_cosmos_store_from_a_local_connection_string_provisions_what_it_needs(
    cosmos_connection_string: str, cosmos_client: CosmosClient
) -> None:
    database = f"settings-{datetime.now(UTC).strftime('%H%M%S%f')}"
    try:
        store = CosmosJobStore.from_settings({CONNECTION_SETTING: cosmos_connection_string, DATABASE_SETTING: database})
        stored, created = store.create(make_job("j-1"))
        assert created
        raw = cosmos_client.get_database_client(database).get_container_client(JOBS_CONTAINER).read_item(
            "j-1", partition_key="alpha")
        # What the change-feed trigger hands the relay: the job's own document plus system fields.
        assert {k: v for k, v in raw.items() if not k.startswith("_")} == make_job("j-1").to_doc()
        assert Job.from_doc(dict(raw)).etag == stored.etag
        again = CosmosJobStore.from_settings({CONNECTION_SETTING: cosmos_connection_string, DATABASE_SETTING: database})
        assert again.get("j-1") is not None

        enrolled = store.create_factory(make_factory("f-1"))
        raw = cosmos_client.get_database_client(database).get_container_client(FACTORIES_CONTAINER).read_item(
            "f-1", partition_key="alpha")
        assert {k: v for k, v in raw.items() if not k.startswith("_")} == make_factory("f-1").to_doc()
        found = again.get_factory("f-1")
        assert found is not None and found.etag == enrolled.etag
    finally:
        cosmos_client.delete_database(database)


def test_cosmos_store_built_without_the_factories_container_says_so(
    cosmos_containers: tuple[ContainerProxy, ContainerProxy]
) -> None:
    store = CosmosJobStore(*cosmos_containers)
    with pytest.raises(RuntimeError, match="factories container"):
        store.get_factory("f-1")
    store.record_shadow("j-1", 1, "poll", "alpha", T0)
    assert len(store.shadow_records()) == 1


def test_cosmos_store_without_settings_names_both_ways_to_configure_it() -> None:
    with pytest.raises(ValueError) as info:
        CosmosJobStore.from_settings({})
    assert ENDPOINT_SETTING in str(info.value) and CONNECTION_SETTING in str(info.value)
