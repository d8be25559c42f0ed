"""The Container Apps launcher's exact REST calls, against a loopback stand-in for ARM.

The real ``azure-mgmt-appcontainers`` client runs its whole pipeline (serialization, bearer
token policy, retries, the long-running-operation poller) against an HTTPS server on 127.0.0.1
that answers the way Azure Resource Manager does and records every request. HTTPS because the
SDK's bearer-token policy refuses to send a token over plain HTTP; the certificate is generated
here and trusted through the client's ``connection_verify``. The only stand-in for Azure itself
is the credential: Entra ID cannot run here, so a fixed token is handed out and the test checks
it arrives as ``Authorization: Bearer``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gigafactory.azure.container_apps import (
    ENDPOINT_SETTING,
    IMAGE_SETTING,
    RESOURCE_GROUP_SETTING,
    SUBSCRIPTION_SETTING,
    ContainerAppsLauncher,
)
from gigafactory.domain import job as J
from gigafactory.domain import tokens
from gigafactory.domain.manifest import Manifest
from gigafactory.domain.states import Status
from gigafactory.local.clock import FakeClock
from gigafactory.local.store import SqliteJobStore
from gigafactory.services.context import Services
from gigafactory.services.launch import factory_env, handle_dispatch
from tests.integration.gpu_fleet import gpu_fleet_pools

SUBSCRIPTION = "3f2c9a1e-7b4d-4e8a-9c11-0d5e6f7a8b9c"
RESOURCE_GROUP = "rg-gigafactory-test"
TOKEN = "static-arm-token"
SECRET = b"test-signing-secret"
NOW = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)

POOLS = gpu_fleet_pools(cpu=1.5, memory="3Gi")

JOB_PATH = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.App/jobs"


# -- the loopback ARM endpoint -----------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    api_version: str | None
    body: Any
    authorization: str | None


@dataclass
class FakeArm:
    """Answers the start, stop and execution-read operations of ``Microsoft.App/jobs``."""

    base_url: str = ""
    start_mode: str = "accepted"  # "accepted": 202 + Location; "ok": 200 with the execution; "error": 500
    requests: list[Recorded] = field(default_factory=list)
    executions: dict[str, str] = field(default_factory=dict)  # execution name -> status
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, handler: BaseHTTPRequestHandler) -> Recorded:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        entry = Recorded(
            method=handler.command,
            path=url.path,
            api_version=(parse_qs(url.query).get("api-version") or [None])[0],
            body=json.loads(raw) if raw else None,
            authorization=handler.headers.get("Authorization"),
        )
        with self._lock:
            self.requests.append(entry)
        return entry

    def calls(self, method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def answer(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        parts = request.path.strip("/").split("/")
        # .../providers/Microsoft.App/jobs/{job}[/executions/{execution}][/start|/stop]
        if request.path.startswith(JOB_PATH + "/"):
            rest = request.path[len(JOB_PATH) + 1 :].split("/")
        else:
            return 404, {}, _error("InvalidResourceType", f"no route for {request.path}")
        job = rest[0]
        if request.method == "POST" and rest[1:] == ["start"]:
            return self._start(job)
        if request.method == "POST" and len(rest) == 4 and rest[1] == "executions" and rest[3] == "stop":
            return self._stop(job, rest[2])
        if request.method == "GET" and len(rest) == 3 and rest[1] == "executions":
            return self._execution(job, rest[2])
        return 404, {}, _error("NotFound", f"{request.method} {'/'.join(parts)}")

    def _resource(self, job: str, execution: str) -> dict[str, Any]:
        return {
            "id": f"{JOB_PATH}/{job}/executions/{execution}",
            "name": execution,
            "type": "Microsoft.App/jobs/executions",
            "properties": {"status": self.executions.get(execution, "Unknown")},
        }

    def _location(self, job: str, execution: str) -> str:
        return f"{self.base_url}{JOB_PATH}/{job}/executions/{execution}?api-version=2026-07-01"

    def _start(self, job: str) -> tuple[int, dict[str, str], Any]:
        if self.start_mode == "error":
            return 500, {}, _error("InternalServerError", "the platform could not start the job")
        with self._lock:
            execution = f"{job}-exec{len(self.executions) + 1:03d}"
            self.executions[execution] = "Running"
        resource = {"id": f"{JOB_PATH}/{job}/executions/{execution}", "name": execution}
        if self.start_mode == "ok":
            return 200, {}, resource
        return 202, {"Location": self._location(job, execution), "Retry-After": "0"}, resource

    def _stop(self, job: str, execution: str) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            if execution not in self.executions:
                return 404, {}, _error("ResourceNotFound", f"execution {execution} of job {job} was not found")
            self.executions[execution] = "Stopped"
        return 202, {"Location": self._location(job, execution), "Retry-After": "0"}, None

    def _execution(self, job: str, execution: str) -> tuple[int, dict[str, str], Any]:
        if execution not in self.executions:
            return 404, {}, _error("ResourceNotFound", f"execution {execution} was not found")
        return 200, {}, self._resource(job, execution)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _handler(arm: FakeArm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            status, headers, body = arm.answer(arm.record(self))
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("x-ms-request-id", "test")
            for name, value in headers.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, so the client verifies it for real."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "arm.crt", directory / "arm.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("arm-tls"))


@pytest.fixture
def arm(tls_files: tuple[Path, Path]) -> Iterator[FakeArm]:
    fake = FakeArm()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    fake.base_url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


class StaticCredential:
    """A ``TokenCredential`` with a fixed token: the stand-in for Entra ID."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)


def _launcher(
    arm: FakeArm, tls_files: tuple[Path, Path], extra: dict[str, str] | None = None, **options: Any
) -> tuple[ContainerAppsLauncher, StaticCredential]:
    credential = StaticCredential()
    settings = {
        SUBSCRIPTION_SETTING: SUBSCRIPTION,
        RESOURCE_GROUP_SETTING: RESOURCE_GROUP,
        ENDPOINT_SETTING: arm.base_url,
        **(extra or {}),
    }
    launcher = ContainerAppsLauncher.from_settings(
        settings, POOLS, credential=credential, connection_verify=str(tls_files[0]), **options
    )
    return launcher, credential


def _services(store: SqliteJobStore | None = None) -> Services:
    return Services(
        store=store,  # type: ignore[arg-type]
        pools=POOLS,
        clock=FakeClock(NOW),
        token_secret=SECRET,
        coordinator_url="https://gigafactory.example.net",
    )


def _job(job_id: str = "j-00c0ffee", attempt_failures: int = 0) -> J.Job:
    manifest = Manifest.model_validate(
        {"product": "billing", "title": "t", "task": "do it", "requirements": {"capabilities": ["linux", "gpu"]}}
    )
    job = J.release(J.new_job(job_id=job_id, manifest=manifest, pool="gpu", now=NOW), NOW)
    for _ in range(attempt_failures):
        job = J.expire(job, job.attempt, "schedule_to_start", NOW)
        job = J.release(J.requeue(job, delay_seconds=0, now=NOW, reason="schedule_to_start"), NOW)
    return J.mark_launching(job, job.attempt, "", NOW)


def _env_of(body: Any) -> dict[str, str]:
    return {item["name"]: item["value"] for item in body["containers"][0]["env"]}


# -- start -------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_mode", ["accepted", "ok"])
def test_start_posts_the_full_container_template_and_returns_the_execution(
    arm: FakeArm, tls_files: tuple[Path, Path], start_mode: str
) -> None:
    arm.start_mode = start_mode
    launcher, credential = _launcher(arm, tls_files)
    job = _job(attempt_failures=1)
    env = factory_env(_services(), job)

    execution = launcher.start(job, env)

    assert execution == "factory-gpu/factory-gpu-exec001"
    posts = arm.calls("POST")
    assert len(posts) == 1
    start = posts[0]
    assert start.path == (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.App/jobs/factory-gpu/start"
    )
    assert start.api_version == "2026-07-01"
    assert start.authorization == f"Bearer {TOKEN}"
    assert credential.scopes and credential.scopes[0] == ("https://management.azure.com/.default",)

    assert list(start.body) == ["containers"]
    [container] = start.body["containers"]
    assert container["name"] == "factory"
    assert container["image"] == "example.azurecr.io/factory:1.2.3"
    assert container["resources"] == {"cpu": 1.5, "memory": "3Gi"}
    assert "command" not in container and "args" not in container  # the image's entrypoint runs

    sent = _env_of(start.body)
    assert {name: sent[name] for name in env} == env  # every factory_env variable, values intact
    assert sent["GIGAFACTORY_JOB_ID"] == job.id
    assert sent["GIGAFACTORY_ATTEMPT"] == "2"
    assert sent["GIGAFACTORY_POOL"] == "gpu"
    assert sent["GIGAFACTORY_URL"] == "https://gigafactory.example.net"
    assert sent["GIGAFACTORY_EXECUTION"] == f"factory-gpu:{job.id}:2"
    assert set(sent) == {*env, "GIGAFACTORY_EXECUTION"}  # nothing else: no key, no connection string
    assert all("secretRef" not in item for item in container["env"])
    claim = tokens.verify(SECRET, sent["GIGAFACTORY_ATTEMPT_TOKEN"], job_id=job.id, attempt=2, now=NOW.timestamp())
    assert claim.attempt == 2  # the token sent is scoped to this attempt

    gets = arm.calls("GET")
    if start_mode == "accepted":  # the poller followed Location until the execution was reported
        assert [g.path for g in gets] == [f"{JOB_PATH}/factory-gpu/executions/factory-gpu-exec001"]
        assert gets[0].authorization == f"Bearer {TOKEN}"
    else:
        assert gets == []


def test_image_override_setting_replaces_the_pool_image(arm: FakeArm, tls_files: tuple[Path, Path]) -> None:
    launcher, _ = _launcher(arm, tls_files, {IMAGE_SETTING: "example.azurecr.io/factory:canary"})
    job = _job()

    launcher.start(job, factory_env(_services(), job))

    [container] = arm.calls("POST")[0].body["containers"]
    assert container["image"] == "example.azurecr.io/factory:canary"
    assert container["resources"] == {"cpu": 1.5, "memory": "3Gi"}


def test_a_server_error_on_start_raises_after_the_sdk_retries(arm: FakeArm, tls_files: tuple[Path, Path]) -> None:
    arm.start_mode = "error"
    launcher, _ = _launcher(arm, tls_files, retry_total=2, retry_backoff_factor=0.01)
    job = _job()

    with pytest.raises(HttpResponseError) as failed:
        launcher.start(job, factory_env(_services(), job))

    assert failed.value.status_code == 500
    assert "InternalServerError" in str(failed.value)
    assert [r.path.rsplit("/", 1)[-1] for r in arm.calls()] == ["start", "start", "start"]
    assert arm.executions == {}


def test_a_standing_pool_is_never_launched(arm: FakeArm, tls_files: tuple[Path, Path]) -> None:
    launcher, _ = _launcher(arm, tls_files)
    manifest = Manifest.model_validate({"product": "billing", "title": "t", "task": "do it"})
    job = J.release(J.new_job(job_id="j-standing", manifest=manifest, pool="fleet", now=NOW), NOW)

    with pytest.raises(ValueError, match="fleet"):
        launcher.start(job, {})

    assert arm.calls() == []


# -- stop --------------------------------------------------------------------------------------


def test_stop_posts_to_the_execution(arm: FakeArm, tls_files: tuple[Path, Path]) -> None:
    launcher, _ = _launcher(arm, tls_files)
    job = _job()
    execution = launcher.start(job, factory_env(_services(), job))

    launcher.stop(execution)

    stop = arm.calls("POST")[-1]
    assert stop.path == f"{JOB_PATH}/factory-gpu/executions/factory-gpu-exec001/stop"
    assert stop.api_version == "2026-07-01"
    assert stop.body is None
    assert stop.authorization == f"Bearer {TOKEN}"
    assert arm.executions["factory-gpu-exec001"] == "Stopped"


def test_stopping_an_execution_arm_no_longer_knows_is_not_an_error(
    arm: FakeArm, tls_files: tuple[Path, Path]
) -> None:
    launcher, _ = _launcher(arm, tls_files)

    launcher.stop("factory-gpu/factory-gpu-gone")

    [stop] = arm.calls()
    assert stop.path == f"{JOB_PATH}/factory-gpu/executions/factory-gpu-gone/stop"


def test_stopping_a_name_that_is_not_a_container_apps_execution_calls_nothing(
    arm: FakeArm, tls_files: tuple[Path, Path]
) -> None:
    launcher, _ = _launcher(arm, tls_files)

    launcher.stop("local-12345")
    launcher.stop("")

    assert arm.calls() == []


# -- through the launch handler ------------------------------------------------------------------


def test_the_launch_handler_records_the_execution_arm_reported(
    arm: FakeArm, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    svc = _services(store)
    launcher, _ = _launcher(arm, tls_files)
    svc.launcher = launcher
    manifest = Manifest.model_validate(
        {"product": "billing", "title": "t", "task": "do it", "requirements": {"capabilities": ["linux", "gpu"]}}
    )
    job, _ = store.create(J.new_job(job_id="j-handler", manifest=manifest, pool="gpu", now=NOW))
    store.replace(J.release(job, NOW))
    dispatch = {"job_id": "j-handler", "attempt": 1, "pool": "gpu"}

    assert handle_dispatch(svc, dispatch) == "launched"
    assert handle_dispatch(svc, dispatch) == "duplicate"  # a redelivery starts nothing

    stored = store.get("j-handler", "gpu")
    assert stored is not None and stored.status is Status.LAUNCHING
    assert stored.execution == "factory-gpu/factory-gpu-exec001"
    assert len([r for r in arm.calls("POST") if r.path.endswith("/start")]) == 1


# -- settings ----------------------------------------------------------------------------------


def test_from_settings_names_what_is_missing() -> None:
    with pytest.raises(ValueError) as missing:
        ContainerAppsLauncher.from_settings({}, POOLS, credential=StaticCredential())
    assert SUBSCRIPTION_SETTING in str(missing.value) and RESOURCE_GROUP_SETTING in str(missing.value)


def test_from_settings_defaults_to_public_arm_with_a_managed_identity() -> None:
    launcher = ContainerAppsLauncher.from_settings(
        {SUBSCRIPTION_SETTING: SUBSCRIPTION, RESOURCE_GROUP_SETTING: RESOURCE_GROUP,
         "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001"},
        POOLS,
    )
    assert launcher._client._config.base_url == "https://management.azure.com"
    assert launcher._client._config.subscription_id == SUBSCRIPTION
