"""The HTTP API over a real SQLite store on a fake clock, driven through FastAPI's test client,
and the same app on a real uvicorn socket for the tests that need true concurrency."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gigafactory.api import attempts
from gigafactory.api.app import create_app
from gigafactory.domain.pools import load_pools
from gigafactory.local.clock import FakeClock
from gigafactory.local.store import SqliteJobStore
from gigafactory.services.context import Services

Rows = list[tuple[str, int, str, str]]


@pytest.fixture
def api_token() -> str:
    return "t0k"


@pytest.fixture
def auth(api_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 2, 2, 10, 0, tzinfo=UTC))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteJobStore]:
    s = SqliteJobStore(db_path)
    yield s
    s.close()


@pytest.fixture
def svc(store: SqliteJobStore, clock: FakeClock) -> Services:
    return Services(store=store, pools=load_pools(), clock=clock, token_secret=b"x" * 32)


@pytest.fixture
def app(svc: Services, api_token: str) -> FastAPI:
    return create_app(lambda: svc, api_token=api_token, extra_routers=[attempts.router])


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def rows(db_path: Path) -> Callable[[], Rows]:
    """Every stored job as (id, change sequence, ETag, status), read on a connection of its own."""

    def read() -> Rows:
        with sqlite3.connect(db_path) as db:
            return [tuple(r) for r in db.execute("SELECT id, seq, etag, status FROM jobs ORDER BY id")]

    return read


@pytest.fixture
def live_url(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on 127.0.0.1 (a port the kernel picked), in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
