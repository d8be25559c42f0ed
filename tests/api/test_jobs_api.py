"""The jobs API through HTTP: intake, reading, listing, cancel and retry, every error class,
auth on every route, idempotency (also under 20 concurrent duplicates on a real socket), and
the OpenAPI document. Every refused request is checked to leave the store untouched."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gigafactory.api import attempts
from gigafactory.api.app import MAX_BODY_BYTES, create_app
from gigafactory.domain import job as J
from gigafactory.domain import tokens
from gigafactory.domain.job import Job
from gigafactory.local.clock import FakeClock
from gigafactory.services.context import Services
from gigafactory.services.mutate import update_job

MANIFEST: dict[str, Any] = {
    "product": "demo",
    "title": "Fix the flaky test",
    "task": "Make tests/test_x.py pass reliably.",
    "agent": {"profile": "echo"},
    "requirements": {"capabilities": ["local"]},
}
PUBLIC_PATHS = {"/api/health", "/api/openapi.json", "/api/docs", "/docs/oauth2-redirect"}
ATTEMPT_PREFIX = "/api/attempts/"


def manifest(**overrides: Any) -> dict[str, Any]:
    return {**MANIFEST, **overrides}


def submit(client: TestClient, auth: dict[str, str], **overrides: Any) -> dict[str, Any]:
    r = client.post("/api/jobs", json=manifest(**overrides), headers=auth)
    assert r.status_code == 202, r.text
    return dict(r.json())


def release(svc: Services, job_id: str) -> Job:
    return update_job(svc.store, job_id, lambda j: J.release(j, svc.clock.now()))


# -- submit ---------------------------------------------------------------------------------------------


def test_submit_answers_202_with_id_status_score_and_status_url(client: TestClient, auth: dict[str, str],
                                                                 svc: Services, rows: Any) -> None:
    r = client.post("/api/jobs", json=manifest(priority="P1"), headers=auth)
    assert r.status_code == 202
    body = r.json()
    assert re.fullmatch(r"j-[0-9a-f]{32}", body["id"])
    assert body["status"] == "queued"
    assert body["status_url"] == f"/api/jobs/{body['id']}"
    assert r.headers["location"] == body["status_url"]
    assert body["score"]["priority"] == 2000
    assert body["score"]["total"] == pytest.approx(2000)
    assert body["pool"] == "local" and body["attempt"] == 1
    stored = svc.store.get(body["id"])
    assert stored is not None and stored.status.value == "queued" and stored.manifest is not None
    assert stored.manifest.title == MANIFEST["title"]
    assert [row[0] for row in rows()] == [body["id"]]


def test_each_submission_without_a_key_is_a_new_job(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    ids = {submit(client, auth)["id"] for _ in range(3)}
    assert len(ids) == 3 and len(rows()) == 3


def test_status_url_serves_the_job(client: TestClient, auth: dict[str, str]) -> None:
    created = submit(client, auth)
    assert client.get(created["status_url"], headers=auth).json()["id"] == created["id"]


# -- get --------------------------------------------------------------------------------------------------


def test_get_shows_status_attempt_score_breakdown_and_history(client: TestClient, auth: dict[str, str],
                                                              clock: FakeClock) -> None:
    created = submit(client, auth, priority="P3", labels={"team": "core"})
    clock.advance(600)
    r = client.get(f"/api/jobs/{created['id']}", headers=auth)
    assert r.status_code == 200
    job = r.json()
    assert (job["id"], job["status"], job["attempt"], job["pool"], job["product"]) == (
        created["id"], "queued", 1, "local", "demo")
    score = job["score"]
    assert set(score) >= {"priority", "age", "deadline_urgency", "retry_penalty", "total", "sort_key"}
    assert score["age"] == pytest.approx(10.0)  # ten minutes on the clock
    assert score["total"] == pytest.approx(score["priority"] + score["age"] + score["deadline_urgency"]
                                           - score["retry_penalty"])
    assert [h["status"] for h in job["history"]] == ["queued"]
    assert job["manifest"]["task"] == MANIFEST["task"]
    assert job["labels"] == {"team": "core"}
    assert job["result"] is None


def test_get_never_shows_the_attempt_token_or_its_fingerprint(client: TestClient, auth: dict[str, str],
                                                              svc: Services, clock: FakeClock) -> None:
    job_id = submit(client, auth)["id"]
    release(svc, job_id)
    token = tokens.issue(svc.token_secret, job_id, 1, int(clock.now().timestamp()) + 3600)
    claim = client.post(f"/api/attempts/{job_id}/1/claim", json={"holder": "factory-1"},
                        headers={"Authorization": f"Bearer {token}"})
    assert claim.status_code == 200, claim.text
    stored = svc.store.get(job_id)
    assert stored is not None and stored.lease is not None
    fingerprint = stored.lease.token_sha256
    assert fingerprint == tokens.fingerprint(token)
    for path in (f"/api/jobs/{job_id}", "/api/jobs", "/api/jobs?status=running&product=demo"):
        r = client.get(path, headers=auth)
        assert r.status_code == 200
        assert fingerprint not in r.text and token not in r.text
    lease = client.get(f"/api/jobs/{job_id}", headers=auth).json()["lease"]
    assert lease["holder"] == "factory-1" and "expires_at" in lease
    assert "token_sha256" not in lease


def test_unknown_job_is_404_everywhere(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    submit(client, auth)
    before = rows()
    for method, path in (("GET", "/api/jobs/j-nope"), ("POST", "/api/jobs/j-nope/cancel"),
                         ("POST", "/api/jobs/j-nope/retry")):
        r = client.request(method, path, headers=auth)
        assert r.status_code == 404, (method, path)
        assert r.json()["error"] == "not_found" and "j-nope" in r.json()["message"]
    assert rows() == before


# -- list -------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(client: TestClient, auth: dict[str, str], clock: FakeClock) -> dict[str, list[str]]:
    """Two products; one of each cancelled; submitted at distinct and at equal instants."""
    made: dict[str, list[str]] = {"alpha": [], "beta": [], "cancelled": []}
    for i in range(4):
        made["alpha"].append(submit(client, auth, product="alpha")["id"])
        made["beta"].append(submit(client, auth, product="beta")["id"])
        if i % 2:
            clock.advance(1)
    for product in ("alpha", "beta"):
        victim = made[product][0]
        assert client.post(f"/api/jobs/{victim}/cancel", headers=auth).status_code == 202
        made["cancelled"].append(victim)
    return made


def _ids(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {item["id"] for item in r.json()["items"]}


def test_list_shape_is_exactly_items_and_continuation(client: TestClient, auth: dict[str, str],
                                                      mixed: dict[str, list[str]]) -> None:
    body = client.get("/api/jobs", headers=auth).json()
    assert set(body) == {"items", "continuation"}
    assert body["continuation"] is None
    assert len(body["items"]) == 8
    item = body["items"][0]
    assert {"id", "status", "product", "pool", "priority", "score", "status_url"} <= set(item)
    assert "manifest" not in item


def test_list_newest_first(client: TestClient, auth: dict[str, str], mixed: dict[str, list[str]]) -> None:
    items = client.get("/api/jobs", headers=auth).json()["items"]
    stamps = [i["submitted_at"] for i in items]
    assert stamps == sorted(stamps, reverse=True)


def test_list_filters(client: TestClient, auth: dict[str, str], mixed: dict[str, list[str]]) -> None:
    everything = set(mixed["alpha"]) | set(mixed["beta"])
    assert _ids(client.get("/api/jobs", params={"product": "alpha"}, headers=auth)) == set(mixed["alpha"])
    assert _ids(client.get("/api/jobs", params={"product": "beta"}, headers=auth)) == set(mixed["beta"])
    assert _ids(client.get("/api/jobs", params={"product": "gamma"}, headers=auth)) == set()
    assert _ids(client.get("/api/jobs", params={"status": "cancelled"}, headers=auth)) == set(mixed["cancelled"])
    assert _ids(client.get("/api/jobs", params={"status": "queued"}, headers=auth)) == everything - set(
        mixed["cancelled"])
    assert _ids(client.get("/api/jobs", params={"status": "running"}, headers=auth)) == set()
    assert _ids(client.get("/api/jobs", params={"pool": "local"}, headers=auth)) == everything
    assert _ids(client.get("/api/jobs", params={"pool": "elsewhere"}, headers=auth)) == set()
    both = client.get("/api/jobs", params={"product": "beta", "status": "cancelled", "pool": "local"}, headers=auth)
    assert _ids(both) == {mixed["beta"][0]}


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8, 50])
@pytest.mark.parametrize("params", [{}, {"product": "alpha"}, {"status": "queued"}])
def test_paging_covers_every_job_exactly_once(client: TestClient, auth: dict[str, str],
                                              mixed: dict[str, list[str]], limit: int,
                                              params: dict[str, str]) -> None:
    expected = _ids(client.get("/api/jobs", params={**params, "limit": 200}, headers=auth))
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        query: dict[str, Any] = {**params, "limit": limit}
        if token:
            query["continuation"] = token
        body = client.get("/api/jobs", params=query, headers=auth).json()
        assert set(body) == {"items", "continuation"}
        assert len(body["items"]) <= limit
        seen += [i["id"] for i in body["items"]]
        pages += 1
        token = body["continuation"]
        if token is None:
            break
        assert pages < 20
    assert len(seen) == len(set(seen)), "a job appeared on two pages"
    assert set(seen) == expected
    assert pages == max(1, -(-len(expected) // limit)), "no empty trailing page"


@pytest.mark.parametrize(
    ("params", "field"),
    [({"status": "sleeping"}, "status"), ({"limit": 0}, "limit"), ({"limit": 201}, "limit"),
     ({"limit": "many"}, "limit"), ({"continuation": "not-a-token"}, "continuation")],
)
def test_bad_list_parameters_are_422(client: TestClient, auth: dict[str, str], params: dict[str, Any],
                                     field: str) -> None:
    r = client.get("/api/jobs", params=params, headers=auth)
    assert r.status_code == 422
    assert field in r.json()["message"]


# -- cancel and retry --------------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(client: TestClient, auth: dict[str, str]) -> None:
    job_id = submit(client, auth)["id"]
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled" and r.json()["status_url"] == f"/api/jobs/{job_id}"
    job = client.get(f"/api/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert [h["status"] for h in job["history"]] == ["queued", "cancelled"]


def test_cancel_of_in_flight_work_flags_it(client: TestClient, auth: dict[str, str], svc: Services) -> None:
    job_id = submit(client, auth)["id"]
    release(svc, job_id)
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 202
    assert r.json()["status"] == "dispatched" and r.json()["cancel_requested"] is True
    again = client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    assert again.status_code == 202 and again.json()["cancel_requested"] is True
    stored = svc.store.get(job_id)
    assert stored is not None and stored.status.value == "dispatched" and stored.cancel_requested


def test_cancel_of_a_terminal_job_is_409_and_changes_nothing(client: TestClient, auth: dict[str, str],
                                                             rows: Any) -> None:
    job_id = submit(client, auth)["id"]
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=auth).status_code == 202
    before = rows()
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 409
    assert r.json()["error"] == "illegal_transition"
    assert "cancelled" in r.json()["message"]
    assert rows() == before


def test_retry_of_a_queued_job_is_409(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    job_id = submit(client, auth)["id"]
    before = rows()
    r = client.post(f"/api/jobs/{job_id}/retry", headers=auth)
    assert r.status_code == 409
    assert "from queued to queued" in r.json()["message"]
    assert rows() == before


def test_retry_of_a_cancelled_job_queues_a_new_attempt(client: TestClient, auth: dict[str, str]) -> None:
    job_id = submit(client, auth)["id"]
    client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    r = client.post(f"/api/jobs/{job_id}/retry", headers=auth)
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["attempt"]) == ("queued", 2)
    job = client.get(f"/api/jobs/{job_id}", headers=auth).json()
    assert job["attempt"] == 2 and job["cancel_requested"] is False
    assert job["score"]["retry_penalty"] == 100


# -- pools and health -----------------------------------------------------------------------------------------


def test_pools_show_queued_and_in_flight_counts(client: TestClient, auth: dict[str, str], svc: Services) -> None:
    ids = [submit(client, auth)["id"] for _ in range(3)]
    release(svc, ids[0])
    items = client.get("/api/pools", headers=auth).json()["items"]
    local = next(p for p in items if p["name"] == "local")
    assert (local["queued"], local["in_flight"]) == (2, 1)
    assert set(local["capabilities"]) == {"linux", "local"} and local["max_parallel"] >= 1


def test_health_is_public(client: TestClient) -> None:
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["dispatch_mode"] == "broker" and r.json()["version"]


# -- body errors: 400 and 413 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b'{"product": "demo",', b"product=demo", b"\xff\xfe\xfd", b"{}}"])
def test_body_that_is_not_json_is_400(client: TestClient, auth: dict[str, str], rows: Any, raw: bytes) -> None:
    submit(client, auth)
    before = rows()
    r = client.post("/api/jobs", content=raw, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request" and "JSON" in r.json()["message"]
    assert "Traceback" not in r.text
    assert rows() == before


def _oversized() -> bytes:
    return json.dumps(manifest(task="x" * (MAX_BODY_BYTES + 10))).encode()


def test_body_over_the_limit_with_content_length_is_413(client: TestClient, auth: dict[str, str],
                                                        rows: Any) -> None:
    before = rows()
    r = client.post("/api/jobs", content=_oversized(), headers={**auth, "Content-Type": "application/json"})
    assert r.request.headers["content-length"] == str(len(_oversized()))
    assert r.status_code == 413
    assert str(MAX_BODY_BYTES) in r.json()["message"]
    assert rows() == before


def test_body_over_the_limit_without_content_length_is_413(client: TestClient, auth: dict[str, str],
                                                           rows: Any) -> None:
    data = _oversized()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 64 * 1024):
            yield data[i:i + 64 * 1024]

    before = rows()
    r = client.post("/api/jobs", content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert rows() == before


def test_chunked_body_over_the_limit_on_a_real_socket_is_413(live_url: str, auth: dict[str, str],
                                                             rows: Any) -> None:
    """No Content-Length to go by: the server counts what arrives."""
    data = _oversized()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 256 * 1024):
            yield data[i:i + 256 * 1024]

    r = httpx.post(f"{live_url}/api/jobs", content=chunks(), headers={**auth, "Content-Type": "application/json"},
                   timeout=10)
    assert r.status_code == 413
    assert rows() == []


def test_body_just_under_the_limit_is_accepted(client: TestClient, auth: dict[str, str]) -> None:
    base = json.dumps(manifest(task="")).encode()
    body = json.dumps(manifest(task="x" * (MAX_BODY_BYTES - len(base)))).encode()
    assert len(body) == MAX_BODY_BYTES
    r = client.post("/api/jobs", content=body, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 202, r.text[:300]


# -- 422: the field and the rule -------------------------------------------------------------------------------

INVALID: list[tuple[str, Any, str, str]] = [
    ("missing-product", {k: v for k, v in MANIFEST.items() if k != "product"}, "product", "missing"),
    ("bad-priority", manifest(priority="urgent"), "priority", "literal_error"),
    ("unknown-top-field", manifest(owner="me"), "owner", "extra_forbidden"),
    ("nested-retry", manifest(retry={"max_attempts": 0}), "retry.max_attempts", "greater_than_equal"),
    ("nested-heartbeat", manifest(timeouts={"heartbeat_seconds": 4}), "timeouts.heartbeat_seconds",
     "greater_than_equal"),
    ("nested-unknown", manifest(repo={"url": "https://github.com/o/r", "branch": "x"}), "repo.branch",
     "extra_forbidden"),
    ("repo-url", manifest(repo={"url": "file:///srv/repo"}), "repo.url", "value_error"),
    ("naive-deadline", manifest(deadline="2026-03-01T00:00:00"), "deadline", "value_error"),
    ("reserved-arg", manifest(agent={"profile": "echo", "args": {"task": "x"}}), "agent.args", "value_error"),
    ("arg-type", manifest(agent={"profile": "echo", "args": {"n": 1}}), "agent.args.n", "string_type"),
    ("too-many-labels", manifest(labels={f"k{i}": "v" for i in range(33)}), "labels", "too_long"),
    ("schema-version", manifest(schema_version=2), "schema_version", "literal_error"),
    ("not-an-object", [MANIFEST], "(body)", "object"),
    ("null", None, "(body)", "object"),
    ("unroutable", manifest(requirements={"capabilities": ["gpu"]}), "requirements.capabilities", "routable"),
]


@pytest.mark.parametrize(("data", "field", "rule"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_422_naming_field_and_rule(client: TestClient, auth: dict[str, str], rows: Any,
                                                       data: Any, field: str, rule: str) -> None:
    submit(client, auth)
    before = rows()
    r = client.post("/api/jobs", content=json.dumps(data), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request"
    assert {"field": field, "rule": rule} in [{"field": e["field"], "rule": e["rule"]} for e in body["errors"]]
    assert field in body["message"]
    assert rows() == before


def test_unroutable_capability_lists_the_pools(client: TestClient, auth: dict[str, str], svc: Services) -> None:
    r = client.post("/api/jobs", json=manifest(requirements={"capabilities": ["gpu", "linux"]}), headers=auth)
    assert r.status_code == 422
    message = r.json()["errors"][0]["message"]
    assert "gpu" in message
    for pool in svc.pools.pools:
        assert pool.name in message
        for cap in pool.capabilities:
            assert cap in message


def test_profile_no_pool_offers_is_422_on_agent_profile(client: TestClient, auth: dict[str, str],
                                                        rows: Any) -> None:
    r = client.post("/api/jobs", json=manifest(agent={"profile": "nonesuch"}), headers=auth)
    assert r.status_code == 422
    error = r.json()["errors"][0]
    assert error["field"] == "agent.profile" and "nonesuch" in error["message"] and "local" in error["message"]
    assert rows() == []


def test_several_errors_reported_together(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/api/jobs", json=manifest(title="", retry={"backoff_multiplier": 0.5}), headers=auth)
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"title", "retry.backoff_multiplier"}


def test_empty_body_is_422_for_the_missing_fields(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    r = client.post("/api/jobs", headers=auth)
    assert r.status_code == 422
    assert {"product", "title", "task"} <= {e["field"] for e in r.json()["errors"]}
    assert rows() == []


# -- idempotency -------------------------------------------------------------------------------------------------


def test_idempotency_key_header_deduplicates(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    headers = {**auth, "Idempotency-Key": "order-42"}
    first = client.post("/api/jobs", json=manifest(), headers=headers)
    assert first.status_code == 202
    again = client.post("/api/jobs", json=manifest(), headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert len(rows()) == 1
    stored = client.get(f"/api/jobs/{first.json()['id']}", headers=auth).json()
    assert stored["idempotency_key"] == "order-42"


def test_idempotency_key_field_deduplicates(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    first = client.post("/api/jobs", json=manifest(idempotency_key="k-1"), headers=auth)
    again = client.post("/api/jobs", json=manifest(idempotency_key="k-1"), headers=auth)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(rows()) == 1


def test_header_and_field_name_the_same_job(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    by_field = client.post("/api/jobs", json=manifest(idempotency_key="same"), headers=auth)
    by_header = client.post("/api/jobs", json=manifest(), headers={**auth, "Idempotency-Key": "same"})
    both = client.post("/api/jobs", json=manifest(idempotency_key="same"), headers={**auth, "Idempotency-Key": "same"})
    assert by_field.status_code == 202 and by_header.status_code == 200 and both.status_code == 200
    assert by_field.json()["id"] == by_header.json()["id"] == both.json()["id"]
    assert len(rows()) == 1


def test_different_keys_are_different_jobs(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    a = client.post("/api/jobs", json=manifest(), headers={**auth, "Idempotency-Key": "a"}).json()["id"]
    b = client.post("/api/jobs", json=manifest(), headers={**auth, "Idempotency-Key": "b"}).json()["id"]
    assert a != b and len(rows()) == 2


def test_header_differing_from_field_is_422(client: TestClient, auth: dict[str, str], rows: Any) -> None:
    r = client.post("/api/jobs", json=manifest(idempotency_key="one"), headers={**auth, "Idempotency-Key": "two"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "idempotency_key"
    assert "Idempotency-Key" in r.json()["message"]
    assert rows() == []


@pytest.mark.parametrize("key", ["k" * 201, "has space"])
def test_invalid_idempotency_key_header_is_422(client: TestClient, auth: dict[str, str], rows: Any,
                                               key: str) -> None:
    r = client.post("/api/jobs", json=manifest(), headers={**auth, "Idempotency-Key": key})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] in ("Idempotency-Key", "idempotency_key")
    assert rows() == []


def test_a_repeat_after_cancel_returns_the_cancelled_job(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Idempotency-Key": "once"}
    job_id = client.post("/api/jobs", json=manifest(), headers=headers).json()["id"]
    client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    again = client.post("/api/jobs", json=manifest(), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == job_id and again.json()["status"] == "cancelled"


def test_twenty_concurrent_duplicates_make_one_job(live_url: str, auth: dict[str, str], rows: Any) -> None:
    n = 20
    barrier = threading.Barrier(n)
    answers: list[tuple[int, str]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            with httpx.Client(base_url=live_url, timeout=30) as http:
                barrier.wait(timeout=10)
                r = http.post("/api/jobs", json=manifest(), headers={**auth, "Idempotency-Key": "burst-1"})
            with lock:
                answers.append((r.status_code, r.json()["id"]))
        except BaseException as exc:  # reported below, not swallowed
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures
    assert len(answers) == n
    assert len({job_id for _, job_id in answers}) == 1
    statuses = sorted(code for code, _ in answers)
    assert statuses == [200] * (n - 1) + [202]
    assert len(rows()) == 1 and rows()[0][0] == answers[0][1]


def test_twenty_concurrent_duplicates_through_the_service(svc: Services, rows: Any) -> None:
    """The same race without the event loop in between: threads straight into submit."""
    from gigafactory.services import submit as submit_service

    n = 20
    barrier = threading.Barrier(n)
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait(timeout=10)
        job, created = submit_service.submit(svc, manifest(), "burst-2")
        with lock:
            results.append((job.id, created))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == n
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(rows()) == 1


# -- auth on every route ----------------------------------------------------------------------------------------


def _route_table(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, however routers were included."""
    try:
        from fastapi.routing import iter_route_contexts  # newer FastAPI includes routers lazily
    except ImportError:  # pragma: no cover - older FastAPI
        routes: list[Any] = list(app.routes)
    else:
        routes = list(iter_route_contexts(app.routes))
    table = []
    for route in routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                table.append((method, route.path))
    return table


def _no_services() -> Services:
    raise AssertionError("listing routes needs no services")


ROUTES = _route_table(create_app(_no_services, api_token="x", extra_routers=[attempts.router]))
OPERATOR_ROUTES = [(m, p) for m, p in ROUTES if p not in PUBLIC_PATHS and not p.startswith(ATTEMPT_PREFIX)]
ATTEMPT_ROUTES = [(m, p) for m, p in ROUTES if p.startswith(ATTEMPT_PREFIX)]


def _fill(path: str, job_id: str, attempt: int = 1) -> str:
    return path.replace("{job_id}", job_id).replace("{attempt}", str(attempt)).replace("{pool}", "local").replace(
        "{factory_id}", "f-nope")


def test_route_table_is_complete() -> None:
    assert {("POST", "/api/jobs"), ("GET", "/api/jobs"), ("GET", "/api/jobs/{job_id}"),
            ("POST", "/api/jobs/{job_id}/cancel"), ("POST", "/api/jobs/{job_id}/retry"),
            ("GET", "/api/pools")} <= set(OPERATOR_ROUTES)
    assert {p for _, p in ATTEMPT_ROUTES} >= {f"/api/attempts/{{job_id}}/{{attempt}}/{s}"
                                              for s in ("claim", "heartbeat", "complete")}
    public = {p for _, p in ROUTES if p in PUBLIC_PATHS}
    assert public >= {"/api/health", "/api/openapi.json"}


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES, ids=[f"{m} {p}" for m, p in OPERATOR_ROUTES])
@pytest.mark.parametrize("credentials", [None, "Bearer wrong", "Bearer t0k0", "Bearer ", "Basic dDBrOnQwaw==", "t0k"],
                         ids=["none", "wrong", "prefix", "empty", "basic", "no-scheme"])
def test_operator_route_needs_the_token(client: TestClient, auth: dict[str, str], rows: Any, method: str,
                                        path: str, credentials: str | None) -> None:
    job_id = submit(client, auth)["id"]
    before = rows()
    headers = {"Authorization": credentials} if credentials is not None else {}
    r = client.request(method, _fill(path, job_id), headers=headers, json=manifest() if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthorized"
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert rows() == before, "a refused request must change nothing"


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES, ids=[f"{m} {p}" for m, p in OPERATOR_ROUTES])
def test_operator_route_admits_the_token(client: TestClient, auth: dict[str, str], method: str, path: str) -> None:
    r = client.request(method, _fill(path, "j-nope"), headers=auth, json=manifest() if method == "POST" else None)
    assert r.status_code not in (401, 403), r.text


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS & {p for _, p in ROUTES}))
def test_public_routes_need_no_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(("method", "path"), ATTEMPT_ROUTES, ids=[f"{m} {p}" for m, p in ATTEMPT_ROUTES])
def test_attempt_routes_refuse_missing_operator_and_foreign_tokens(client: TestClient, auth: dict[str, str],
                                                                   svc: Services, clock: FakeClock, rows: Any,
                                                                   method: str, path: str) -> None:
    job_id = submit(client, auth)["id"]
    release(svc, job_id)
    before = rows()
    url = _fill(path, job_id)
    body = {"holder": "f-1"} if path.endswith("/claim") else {"exit_code": 0} if path.endswith("/complete") else None
    expires = int(clock.now().timestamp()) + 3600
    cases: list[tuple[dict[str, str], set[int]]] = [
        ({}, {401}),
        (auth, {401, 403}),
        ({"Authorization": "Bearer " + tokens.issue(svc.token_secret, job_id, 2, expires)}, {403}),
        ({"Authorization": "Bearer " + tokens.issue(svc.token_secret, "j-other", 1, expires)}, {403}),
        ({"Authorization": "Bearer " + tokens.issue(b"y" * 32, job_id, 1, expires)}, {403}),
        ({"Authorization": "Bearer " + tokens.issue(svc.token_secret, job_id, 1, expires - 7200)}, {403}),
    ]
    for headers, expected in cases:
        r = client.request(method, url, headers=headers, json=body)
        assert r.status_code in expected, (headers, r.status_code, r.text)
    assert rows() == before


def test_attempt_token_is_not_an_operator_token(client: TestClient, auth: dict[str, str], svc: Services,
                                                clock: FakeClock) -> None:
    job_id = submit(client, auth)["id"]
    token = tokens.issue(svc.token_secret, job_id, 1, int(clock.now().timestamp()) + 3600)
    r = client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


# -- OpenAPI ------------------------------------------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_lists_every_route_and_the_manifest(client: TestClient, app: FastAPI) -> None:
    r = client.get("/api/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(m, p) for m, p in _route_table(app) if p not in PUBLIC_PATHS - {"/api/health"}}
    assert served <= documented, served - documented
    schemas = doc["components"]["schemas"]
    man = schemas["Manifest"]
    assert {"product", "title", "task"} <= set(man["required"])
    assert {"schema_version", "repo", "agent", "requirements", "priority", "deadline", "retry", "timeouts",
            "labels", "idempotency_key"} <= set(man["properties"])
    assert man.get("additionalProperties") is False
    body = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Manifest"}
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    retry = schemas["Retry"]["properties"]["backoff_seconds"]
    assert retry["minimum"] == 0
    assert schemas["Timeouts"]["properties"]["heartbeat_seconds"]["minimum"] == 5


def test_openapi_declares_bearer_auth(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


# -- no stack traces ------------------------------------------------------------------------------------------------


def test_unknown_route_is_a_json_404(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/api/nothing-here", headers=auth)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")


def test_wrong_method_is_a_json_405(client: TestClient, auth: dict[str, str]) -> None:
    r = client.delete("/api/jobs", headers=auth)
    assert r.status_code == 405
    assert r.json()["error"] == "http_error"


def test_internal_error_is_a_500_without_a_trace(api_token: str, auth: dict[str, str]) -> None:
    def broken() -> Services:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    app = create_app(broken, api_token=api_token)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/api/pools", headers=auth)
    assert r.status_code == 500
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert r.json()["error"] == "internal"

