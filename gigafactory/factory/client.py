"""The factory's HTTP client for the attempt endpoints, with retries that outlast a
coordinator restart: a report is retried until it is accepted or refused (409)."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

log = logging.getLogger("gigafactory.factory")


class Refused(Exception):
    """The coordinator answered 4xx: this attempt is stale, cancelled or not ours."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class AttemptClient:
    def __init__(self, base_url: str, job_id: str, attempt: int, token: str, *, patience_seconds: float = 600) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=30,
                                  headers={"Authorization": f"Bearer {token}"})
        self._path = f"/api/attempts/{job_id}/{attempt}"
        self._patience = patience_seconds

    def close(self) -> None:
        self._http.close()

    def call(self, verb: str, body: dict[str, Any] | None = None, *, patience: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (self._patience if patience is None else patience)
        delay = 0.2
        while True:
            try:
                response = self._http.post(f"{self._path}/{verb}", json=body or {})
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("coordinator unreachable; retrying", extra={"verb": verb, "error": str(exc)})
            else:
                if response.status_code < 300:
                    result: dict[str, Any] = response.json()
                    return result
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise Refused(response.status_code, response.text)
                if time.monotonic() > deadline:
                    response.raise_for_status()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
