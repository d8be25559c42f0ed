"""The job store on Azure Cosmos DB (NoSQL API), behaving like ``SqliteJobStore`` through the port.

Layout: container ``jobs`` partitioned by ``/pool`` so the scheduler's hot read (the queued jobs of
one pool) is a single-partition indexed query, container ``pools`` partitioned by ``/id`` holding
one capacity document per pool (and shadow mode's records), and container ``factories``
partitioned by ``/pool`` holding the enrolled standing factories. Every write of an existing
document is conditional on the ETag that was read (HTTP 412 becomes ``Conflict``), which is what
makes the relay, the scheduler and the factory callbacks safe to run concurrently and to replay.

Decisions that follow from the partitioning, each with its cost:

* Job ids are unique across pools, but Cosmos only enforces id uniqueness inside one logical
  partition. ``create`` therefore first looks the id up with one cross-partition query (a fan-out
  to every physical partition, a few RU each), then inserts. A repeated submission is answered by
  that query alone; a new job costs the query plus the insert. Two creates of the same id racing
  into two different pools within the same few milliseconds are not caught; the same id
  arriving in two pools at once means routing changed between two deliveries of one request.
* ``get`` with a pool is a point read (the cheapest operation there is); without one, or when the
  pool hint was wrong, it is a cross-partition query on ``id``.
* ``list`` pages with a keyset token (the last page's ``submitted_at`` and the ids already
  returned at that instant) instead of the SDK's continuation token: the Python SDK's token is
  not resumable for cross-partition ORDER BY queries on the real service.
* ``counts`` issues one index-served ``COUNT`` per status: ``GROUP BY`` is not available to the
  Python SDK across partitions and not to every Cosmos-compatible server, while a single query
  projecting ``status`` would read every job the pool ever had.
* Factories are found by id alone (the credential names the factory, not its pool), so
  ``get_factory`` is a cross-partition query rather than a point read, and ``create_factory``
  looks the id up across pools before inserting, as ``create`` does for jobs. A few factories per
  pool make the fan-out cheap; partitioning by pool keeps ``list_factories(pool)`` in one
  partition and leaves room to grow.
* Shadow records live in ``pools``, one document per (job, attempt, side) with that triple as its
  id: inserting is then idempotent by construction (a second insert is a 409 that is ignored), and
  shadow mode, a migration phase, needs no container of its own that would outlive it.

Queries order by the equality-filtered property first (``ORDER BY c.status, c.sort_key DESC``) so
that the composite indexes in ``JOBS_INDEXING_POLICY`` serve them; infrastructure must declare
the same indexes.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import os
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.cosmos import ContainerProxy, CosmosClient, DatabaseProxy, PartitionKey
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from gigafactory import accounting
from gigafactory.azure import identity
from gigafactory.domain.factories import Factory
from gigafactory.domain.job import Job
from gigafactory.domain.states import Status
from gigafactory.domain.timefmt import to_iso
from gigafactory.ports import Capacity, Conflict

JOBS_CONTAINER = "jobs"
POOLS_CONTAINER = "pools"
FACTORIES_CONTAINER = "factories"
SHADOW_TYPE = "shadow"
DEFAULT_DATABASE = "gigafactory"

ENDPOINT_SETTING = "COSMOS__accountEndpoint"
CLIENT_ID_SETTING = "COSMOS__clientId"
CONNECTION_SETTING = "COSMOS_CONNECTION"
DATABASE_SETTING = "COSMOS_DATABASE"


def _composite(*paths: tuple[str, str]) -> list[dict[str, str]]:
    return [{"path": f"/{name}", "order": order} for name, order in paths]


JOBS_INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    # The manifest (the agent's task text) and the history are never filtered on; indexing them
    # would only make every write dearer.
    "excludedPaths": [{"path": '/"_etag"/?'}, {"path": "/manifest/*"}, {"path": "/history/*"}],
    "compositeIndexes": [
        _composite(("status", "ascending"), ("sort_key", "descending")),
        _composite(("status", "ascending"), ("submitted_at", "descending")),
        _composite(("product", "ascending"), ("submitted_at", "descending")),
        _composite(("pool", "ascending"), ("submitted_at", "descending")),
    ],
}
"""The jobs container's indexing policy; ``infra`` provisions the same one."""


class CosmosJobStore:
    """``JobStore``, ``FactoryStore`` and ``ShadowLog`` on Cosmos DB containers; see the module
    docstring for the trade-offs.

    ``factories`` is optional because only the standing-factory use cases read it: a store built
    for jobs alone (as most tests build it) needs no third container, and says so when asked for
    a factory instead of failing deep inside the SDK.
    """

    def __init__(self, jobs: ContainerProxy, pools: ContainerProxy, factories: ContainerProxy | None = None) -> None:
        self._jobs = jobs
        self._pools = pools
        self._factories = factories
        self._ops_lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.ops_by_caller: Counter[str] = Counter()

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, str] | None = None, *, credential: TokenCredential | None = None
    ) -> CosmosJobStore:
        """Keyless in Azure (``COSMOS__accountEndpoint`` + ``DefaultAzureCredential``).

        ``COSMOS_CONNECTION`` is for local emulators only: with it the database and containers are
        created when missing, since nothing else provisions an emulator (in Azure, infrastructure
        does, and Entra-authenticated clients may not create containers anyway). When both are set
        the connection string wins: only a developer pointing at an emulator ever sets it.
        """
        env = os.environ if settings is None else settings
        database_name = env.get(DATABASE_SETTING) or DEFAULT_DATABASE
        connection = env.get(CONNECTION_SETTING)
        if connection:
            client = _client_from_connection_string(connection)
            database = provision(client, database_name)
        else:
            endpoint = env.get(ENDPOINT_SETTING)
            if not endpoint:
                raise identity.not_configured("Cosmos DB", ENDPOINT_SETTING, CONNECTION_SETTING, "local emulators")
            if credential is None:
                credential = identity.credential(env, CLIENT_ID_SETTING)
            client = CosmosClient(endpoint, credential=credential)
            database = client.get_database_client(database_name)
        return cls(
            database.get_container_client(JOBS_CONTAINER),
            database.get_container_client(POOLS_CONTAINER),
            database.get_container_client(FACTORIES_CONTAINER),
        )

    # -- jobs --------------------------------------------------------------------------------

    def create(self, job: Job) -> tuple[Job, bool]:
        # Look first, across pools: inserting first would put a duplicate on the change feed
        # before it could be noticed, and the relay would act on it.
        existing = self._find(job.id)
        if existing is not None:
            return existing, False
        self._count("write")
        try:
            body = self._jobs.create_item(job.to_doc())
        except CosmosResourceExistsError:
            # Lost a race with a create of the same id into the same pool.
            raced = self.get(job.id, job.pool)
            if raced is None:
                raise
            return raced, False
        return Job.from_doc(body), True

    def get(self, job_id: str, pool: str | None = None) -> Job | None:
        if pool is not None:
            doc = self._point_read(self._jobs, job_id, pool, pk_field="pool")
            if doc is not None:
                return Job.from_doc(doc)
        # No hint, or a hint that named the wrong pool: the id alone still identifies the job.
        return self._find(job_id)

    def replace(self, job: Job) -> Job:
        self._count("write")
        return Job.from_doc(_replace_if_current(self._jobs, f"job {job.id}", job.id, job.to_doc(), job.etag, job.pool))

    def list(
        self,
        *,
        status: str | None = None,
        product: str | None = None,
        pool: str | None = None,
        limit: int = 50,
        continuation: str | None = None,
    ) -> tuple[list[Job], str | None]:
        where: list[str] = []
        params: dict[str, Any] = {"@n": limit + 1}
        for name, value in (("status", status), ("product", product), ("pool", pool)):
            if value is not None:
                where.append(f"c.{name} = @{name}")
                params[f"@{name}"] = value
        after: str | None = None
        seen: list[str] = []
        if continuation:
            after, seen = _decode_continuation(continuation)
            where.append("c.submitted_at <= @after AND NOT ARRAY_CONTAINS(@seen, c.id)")
            params["@after"] = after
            params["@seen"] = seen
        # Leading with the equality-filtered property lets a composite index serve the sort.
        lead = next((f"c.{name} ASC, " for name, value in (("pool", pool), ("status", status),
                                                            ("product", product)) if value is not None), "")
        sql = "SELECT TOP @n * FROM c" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {lead}c.submitted_at DESC"
        rows = self._query(self._jobs, sql, params, partition_key=pool)
        jobs = [Job.from_doc(r) for r in rows[:limit]]
        token = None
        if len(rows) > limit and jobs:
            last = to_iso(jobs[-1].submitted_at)
            at_last = [j.id for j in jobs if to_iso(j.submitted_at) == last]
            token = _encode_continuation(last, (seen if after == last else []) + at_last)
        return jobs, token

    def queued(self, pool: str, due_before: datetime, limit: int) -> builtins.list[Job]:
        rows = self._query(
            self._jobs,
            "SELECT TOP @n * FROM c WHERE c.pool = @pool AND c.status = @status AND c.due_at <= @due"
            " ORDER BY c.status ASC, c.sort_key DESC",
            {"@n": limit, "@pool": pool, "@status": Status.QUEUED.value, "@due": to_iso(due_before)},
            partition_key=pool,
        )
        return [Job.from_doc(r) for r in rows]

    def in_status(self, statuses: builtins.list[str], limit: int = 500) -> builtins.list[Job]:
        if not statuses:
            self._count("query")
            return []
        marks = {f"@s{i}": s for i, s in enumerate(statuses)}
        rows = self._query(
            self._jobs,
            f"SELECT TOP @n * FROM c WHERE c.status IN ({', '.join(marks)}) ORDER BY c._ts ASC",
            {"@n": limit, **marks},
        )
        return [Job.from_doc(r) for r in rows]

    def counts(self, pool: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in Status:
            rows = self._query(
                self._jobs,
                "SELECT VALUE COUNT(1) FROM c WHERE c.pool = @pool AND c.status = @status",
                {"@pool": pool, "@status": status.value},
                partition_key=pool,
            )
            n = int(rows[0]) if rows else 0
            if n:
                counts[status.value] = n
        return counts

    # -- capacity ------------------------------------------------------------------------------

    def get_capacity(self, pool: str) -> Capacity:
        doc = self._point_read(self._pools, pool, pool, pk_field="id")
        if doc is None:
            return Capacity(pool=pool)
        return Capacity(pool=pool, inflight=dict(doc.get("inflight") or {}), etag=doc["_etag"])

    def replace_capacity(self, capacity: Capacity) -> Capacity:
        doc = {"id": capacity.pool, "inflight": capacity.inflight}
        self._count("write")
        try:
            if capacity.etag is None:
                body = self._pools.create_item(doc)
            else:
                body = self._pools.replace_item(
                    capacity.pool, doc, etag=capacity.etag, match_condition=MatchConditions.IfNotModified
                )
        except CosmosResourceExistsError as exc:
            raise Conflict(f"capacity {capacity.pool}: created concurrently") from exc
        except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError) as exc:
            raise Conflict(f"capacity {capacity.pool}: the ETag {capacity.etag} is no longer current") from exc
        return Capacity(pool=capacity.pool, inflight=dict(capacity.inflight), etag=body["_etag"])

    # -- standing factories --------------------------------------------------------------------

    def create_factory(self, factory: Factory) -> Factory:
        container = self._factories_container()
        # Cosmos enforces id uniqueness only within one pool; the registry needs it across pools,
        # since a credential names the factory id alone.
        if self._find_factory(factory.id) is not None:
            raise Conflict(f"factory {factory.id}: exists")
        self._count("write")
        try:
            body = container.create_item(factory.to_doc())
        except CosmosResourceExistsError as exc:
            raise Conflict(f"factory {factory.id}: exists") from exc
        return Factory.from_doc(body)

    def get_factory(self, factory_id: str) -> Factory | None:
        return self._find_factory(factory_id)

    def replace_factory(self, factory: Factory) -> Factory:
        container = self._factories_container()
        self._count("write")
        return Factory.from_doc(_replace_if_current(container, f"factory {factory.id}", factory.id, factory.to_doc(),
                                                    factory.etag, factory.pool))

    def list_factories(self, pool: str | None = None) -> builtins.list[Factory]:
        container = self._factories_container()
        if pool is None:
            rows = self._query(container, "SELECT * FROM c ORDER BY c.id", {})
        else:
            rows = self._query(container, "SELECT * FROM c WHERE c.pool = @pool ORDER BY c.id", {"@pool": pool},
                               partition_key=pool)
        return [Factory.from_doc(r) for r in rows]

    # -- shadow-mode comparison ------------------------------------------------------------------

    def record_shadow(self, job_id: str, attempt: int, side: str, pool: str, at: datetime) -> None:
        # Create, never upsert: a replayed delivery must not move the first record's time, which
        # is what the report's grace period is measured from.
        doc = {"id": f"shadow:{job_id}:{attempt}:{side}", "type": SHADOW_TYPE, "job_id": job_id,
               "attempt": attempt, "side": side, "pool": pool, "at": to_iso(at)}
        self._count("write")
        with contextlib.suppress(CosmosResourceExistsError):
            self._pools.create_item(doc)

    def shadow_records(self, limit: int = 10_000) -> builtins.list[dict[str, object]]:
        rows = self._query(
            self._pools,
            "SELECT TOP @n c.job_id, c.attempt, c.side, c.pool, c.at FROM c WHERE c.type = @type ORDER BY c.at DESC",
            {"@n": limit, "@type": SHADOW_TYPE},
        )
        return [{"job_id": r["job_id"], "attempt": r["attempt"], "side": r["side"], "pool": r["pool"], "at": r["at"]}
                for r in rows]

    # -- plumbing ------------------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        """Every request is counted (by kind, and by the caller ``accounting`` names), so each
        use case's cost in Cosmos requests is measured the same way as on the embedded store."""
        with self._ops_lock:
            self.ops[kind] += 1
            self.ops_by_caller[f"{accounting.caller.get()}:{kind}"] += 1

    def _find(self, job_id: str) -> Job | None:
        rows = self._query(self._jobs, "SELECT * FROM c WHERE c.id = @id", {"@id": job_id})
        return Job.from_doc(rows[0]) if rows else None

    def _factories_container(self) -> ContainerProxy:
        if self._factories is None:
            raise RuntimeError("this store was built without the factories container")
        return self._factories

    def _find_factory(self, factory_id: str) -> Factory | None:
        rows = self._query(self._factories_container(), "SELECT * FROM c WHERE c.id = @id", {"@id": factory_id})
        return Factory.from_doc(rows[0]) if rows else None

    def _point_read(self, container: ContainerProxy, item_id: str, pk: str, *, pk_field: str) -> dict[str, Any] | None:
        self._count("read")
        try:
            return dict(container.read_item(item_id, partition_key=pk))
        except CosmosResourceNotFoundError:
            return None
        except CosmosHttpResponseError as exc:
            if exc.status_code != 500:
                raise
        # Some Cosmos-compatible servers answer a point read of a missing item with 500 instead of
        # 404; a query in the same partition tells "missing" from "broken" (which raises again).
        rows = self._query(container, f"SELECT * FROM c WHERE c.id = @id AND c.{pk_field} = @pk",
                           {"@id": item_id, "@pk": pk}, partition_key=pk)
        return rows[0] if rows else None

    def _query(
        self, container: ContainerProxy, sql: str, params: Mapping[str, Any], *, partition_key: str | None = None
    ) -> builtins.list[Any]:
        self._count("query")
        parameters: builtins.list[dict[str, object]] = [{"name": k, "value": v} for k, v in params.items()]
        if partition_key is None:
            return list(container.query_items(sql, parameters=parameters, enable_cross_partition_query=True))
        return list(container.query_items(sql, parameters=parameters, partition_key=partition_key))


def _replace_if_current(container: ContainerProxy, what: str, item_id: str, doc: dict[str, Any],
                        etag: str | None, pool: str) -> dict[str, Any]:
    """Replace under an ETag precondition; every way of not being current is a ``Conflict``."""
    if etag is None:
        raise Conflict(f"{what}: no ETag was read, so there is nothing to be current against")
    try:
        body: dict[str, Any] = container.replace_item(item_id, doc, etag=etag,
                                                      match_condition=MatchConditions.IfNotModified)
    except CosmosAccessConditionFailedError as exc:
        raise Conflict(f"{what}: the ETag {etag} is no longer current") from exc
    except CosmosResourceNotFoundError as exc:
        # Gone, or written with another pool (the partition key cannot change in place).
        raise Conflict(f"{what}: not found in pool {pool}") from exc
    return body


def provision(client: CosmosClient, database_name: str = DEFAULT_DATABASE) -> DatabaseProxy:
    """Create the database and the store's containers when missing (emulators and tests only)."""
    database = client.create_database_if_not_exists(database_name)
    database.create_container_if_not_exists(
        JOBS_CONTAINER, partition_key=PartitionKey(path="/pool"), indexing_policy=JOBS_INDEXING_POLICY
    )
    database.create_container_if_not_exists(POOLS_CONTAINER, partition_key=PartitionKey(path="/id"))
    database.create_container_if_not_exists(FACTORIES_CONTAINER, partition_key=PartitionKey(path="/pool"))
    return database


def _client_from_connection_string(connection: str) -> CosmosClient:
    """Emulators serve TLS with a self-signed certificate, so verification is off for loopback only."""
    parts = dict(p.split("=", 1) for p in connection.split(";") if "=" in p)
    endpoint = parts.get("AccountEndpoint", "")
    host = urlparse(endpoint).hostname or ""
    loopback = host in {"localhost", "127.0.0.1", "::1"}
    return CosmosClient.from_connection_string(connection, connection_verify=not loopback)


def _encode_continuation(submitted_at: str, seen: list[str]) -> str:
    raw = json.dumps([submitted_at, seen], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continuation(token: str) -> tuple[str, list[str]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        submitted, seen = json.loads(raw)
        if not isinstance(submitted, str) or not isinstance(seen, list) or not all(isinstance(s, str) for s in seen):
            raise ValueError
        return submitted, seen
    except (ValueError, TypeError) as exc:
        raise ValueError("continuation: not a token this API issued") from exc
