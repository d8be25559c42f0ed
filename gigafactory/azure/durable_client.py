"""The LifecycleClient port over the Durable Functions client binding.

The client is async and bound to the invocation's event loop, while the services are plain
synchronous code run in a worker thread; each call hops back onto the loop and waits.
Starting a fixed instance id that is still running fails in Durable, and raising an event on
a missing instance raises — so both read the status first, as SPEC §7 requires.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

RUNNING = {"Running", "Pending", "ContinuedAsNew"}


class AsyncDurableClient(Protocol):
    async def get_status(self, instance_id: str) -> Any: ...

    async def start_new(self, orchestration_function_name: str, instance_id: str | None = None,
                        client_input: Any = None) -> str: ...

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None: ...


def _status_name(status: Any) -> str | None:
    runtime = getattr(status, "runtime_status", None)
    if runtime is None:
        return None
    return str(getattr(runtime, "value", runtime))


class DurableClientLifecycle:
    def __init__(self, client: AsyncDurableClient, loop: asyncio.AbstractEventLoop, orchestrator: str,
                 event: str) -> None:
        self._client = client
        self._loop = loop
        self._orchestrator = orchestrator
        self._event = event

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    async def _start(self, job_id: str, payload: dict[str, Any]) -> bool:
        if _status_name(await self._client.get_status(job_id)) in RUNNING:
            return False
        await self._client.start_new(self._orchestrator, job_id, payload)
        return True

    async def _signal(self, job_id: str, payload: dict[str, Any]) -> bool:
        if _status_name(await self._client.get_status(job_id)) not in RUNNING:
            return False
        try:
            await self._client.raise_event(job_id, self._event, payload)
        except Exception:  # finished between the read and the raise
            return False
        return True

    def start(self, job_id: str, payload: dict[str, Any]) -> bool:
        return bool(self._run(self._start(job_id, payload)))

    def signal(self, job_id: str, payload: dict[str, Any]) -> bool:
        return bool(self._run(self._signal(job_id, payload)))
