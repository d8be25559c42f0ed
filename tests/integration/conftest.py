"""Real local servers for the adapter tests, started from the npm lockfile's ``node_modules/.bin``.

* ``@vercel/cosmosdb-server``: a Cosmos DB-compatible HTTPS server (self-signed certificate);
* Azurite, Blob service only, in memory.

Each is started once per session on a free loopback port and stopped at the end. Without
``node_modules`` the tests that need a server are skipped with the command that installs them,
except under CI (``CI`` set), where a missing server is a failure: CI must never go green by
skipping the adapters.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.cosmos import ContainerProxy, CosmosClient, DatabaseProxy, PartitionKey

from gigafactory.azure.cosmos_store import JOBS_INDEXING_POLICY, provision

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
STARTUP_SECONDS = 30.0

# The emulators' published, well-known development keys (cosmosdb-server accepts any key).
COSMOS_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def pytest_configure(config: pytest.Config) -> None:
    # The servers' self-signed certificate is expected; the warning for every request is noise.
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")


@dataclass
class Server:
    name: str
    port: int
    log: Path


def _node_bin(name: str) -> Path:
    if not NODE_MODULES.is_dir():
        reason = "node_modules is absent: run `npm ci` to install the local servers (Azurite, cosmosdb-server)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; CI is set, so a missing server fails instead of skipping")
        pytest.skip(reason)
    path = NODE_MODULES / ".bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing although node_modules exists: run `npm ci` again")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int, *, tls: bool, path: str) -> bool:
    """Any HTTP response at all means the server is up; refusals and resets mean not yet."""
    conn: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def _serve(
    name: str, argv: Callable[[int], list[str]], ready: str, probe: Callable[[int], bool], workdir: Path
) -> Iterator[Server]:
    """Ready means: the process logged ``ready`` for this port *and* answers on it (the log line
    alone can precede the listener; the answer alone could come from whoever took the port)."""
    log = workdir / f"{name}.log"
    for _ in range(3):  # a free port can be taken between choosing it and binding it
        port = _free_port()
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            proc = subprocess.Popen(argv(port), cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while proc.poll() is None and time.monotonic() < deadline:
                logged = log.read_bytes()[offset:].decode(errors="replace")
                if ready.format(port=port) in logged and probe(port):
                    yield Server(name, port, log)
                    return
                time.sleep(0.05)
            if proc.poll() is None:
                pytest.fail(f"{name} did not answer on 127.0.0.1:{port} within {STARTUP_SECONDS:.0f} s; log: {log}")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    tail = log.read_text(errors="replace")[-2000:]
    pytest.fail(f"{name} exited before answering (3 tries); log {log}:\n{tail}")


# -- Cosmos DB --------------------------------------------------------------------------------


# The package's CLI (``cosmosdb-server --host H --port P``) answers every request with
# ``Connection: close``, so each SDK call pays a new TLS handshake (about 20x slower here). The
# same server from the same package, with keep-alive on, is what the fixture runs.
_COSMOS_MAIN = """
const [pkg, port] = process.argv.slice(1);
const server = require(pkg).createHttpsServer({ keepAlive: true });
server.listen(Number(port), "127.0.0.1", () => console.log(`cosmosdb-server ready on 127.0.0.1:${port}`));
"""


@pytest.fixture(scope="session")
def cosmos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _node_bin("cosmosdb-server")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH although node_modules exists")
    package = str(NODE_MODULES / "@vercel" / "cosmosdb-server")
    workdir = tmp_path_factory.mktemp("cosmosdb-server")
    with _serve("cosmosdb-server", lambda port: [node, "-e", _COSMOS_MAIN, package, str(port)],
                "ready on 127.0.0.1:{port}", lambda port: _answers(port, tls=True, path="/"), workdir) as server:
        yield server


@pytest.fixture(scope="session")
def cosmos_connection_string(cosmos_server: Server) -> str:
    return f"AccountEndpoint=https://127.0.0.1:{cosmos_server.port}/;AccountKey={COSMOS_KEY};"


@pytest.fixture(scope="session")
def cosmos_client(cosmos_connection_string: str) -> Iterator[CosmosClient]:
    with CosmosClient.from_connection_string(cosmos_connection_string, connection_verify=False) as client:
        yield client


@pytest.fixture(scope="module")
def cosmos_database(cosmos_client: CosmosClient, request: pytest.FixtureRequest) -> Iterator[DatabaseProxy]:
    """A fresh database per test module, with ``jobs`` and ``pools`` provisioned as infra does."""
    name = f"test-{request.module.__name__.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:8]}"
    database = provision(cosmos_client, name)
    yield database
    cosmos_client.delete_database(name)


@pytest.fixture
def cosmos_containers(cosmos_database: DatabaseProxy) -> Iterator[tuple[ContainerProxy, ContainerProxy]]:
    """Fresh ``jobs`` / ``pools`` containers for one test, for tests that read whole containers."""
    suffix = uuid.uuid4().hex[:8]
    jobs = cosmos_database.create_container(f"jobs-{suffix}", partition_key=PartitionKey(path="/pool"),
                                            indexing_policy=JOBS_INDEXING_POLICY)
    pools = cosmos_database.create_container(f"pools-{suffix}", partition_key=PartitionKey(path="/id"))
    yield jobs, pools
    for container in (jobs, pools):
        cosmos_database.delete_container(container)


# -- Azurite (Blob) ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azurite_blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = _node_bin("azurite-blob")
    workdir = tmp_path_factory.mktemp("azurite")

    def argv(port: int) -> list[str]:
        return [str(binary), "--silent", "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
                "--blobHost", "127.0.0.1", "--blobPort", str(port)]

    with _serve("azurite-blob", argv, "listens on http://127.0.0.1:{port}",
                lambda port: _answers(port, tls=False, path=f"/{AZURITE_ACCOUNT}?comp=list"), workdir) as server:
        yield server


@pytest.fixture(scope="session")
def azurite_blob_connection_string(azurite_blob: Server) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{azurite_blob.port}/{AZURITE_ACCOUNT};")
