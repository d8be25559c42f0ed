"""The ``job_lifecycle`` Durable orchestration and its activities.

One instance per job (instance id = job id). Each generation reads the job, acts if it must
(cancel, retry or fail), then waits for ``job_changed`` (raised by the relay) or the attempt's
current deadline, whichever is first, cancels the timer it stops waiting for, and continues
as new — so every attempt, and every re-armed heartbeat timer, starts from a short history.
The orchestrator only decides; activities read and write. Orchestrator code is replayed: no
I/O, no clock but the context's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from typing import Any

import azure.durable_functions as df

from gigafactory.domain.lifecycle import plan
from gigafactory.services import lifecycle_steps
from gigafactory.services.context import Services

# Several job_changed events may reach one generation before it waits; the SDK keeps the last
# and warns about the others. Each generation re-reads the job, so nothing is lost: not a fault.
warnings.filterwarnings("ignore", message="Potential duplicate Task completion", category=UserWarning)

ORCHESTRATOR = "job_lifecycle"
EVENT = "job_changed"

_provider: Callable[[], Services] | None = None


def use_services(provider: Callable[[], Services]) -> None:
    global _provider
    _provider = provider


def _svc() -> Services:
    if _provider is None:
        raise RuntimeError("lifecycle services not configured")
    return _provider()


def job_lifecycle(context: df.DurableOrchestrationContext) -> Generator[Any, Any, str]:
    state: dict[str, Any] = context.get_input() or {}
    job_id, attempt, pool = state["job_id"], int(state["attempt"]), state.get("pool")
    while True:
        snap = yield context.call_activity("lifecycle_read", {"job_id": job_id, "pool": pool})
        step = plan(snap, attempt, context.current_utc_datetime)
        if step.kind == "done":
            return str(snap.get("status", "missing"))
        if step.kind == "next_attempt":
            context.continue_as_new({"job_id": job_id, "pool": pool, "attempt": snap["attempt"]})
            return "next_attempt"
        if step.kind == "cancel":
            yield context.call_activity("lifecycle_cancel", {"job_id": job_id, "attempt": attempt})
        elif step.kind == "retry":
            yield context.call_activity("lifecycle_retry", {"job_id": job_id, "attempt": attempt})
        else:
            break
    changed = context.wait_for_external_event(EVENT)
    if step.until is None:
        yield changed
    else:
        timer = context.create_timer(step.until)
        winner = yield context.task_any([changed, timer])
        if winner is not timer:
            timer.cancel()
        elif step.kind == "release":
            yield context.call_activity("lifecycle_release", {"pool": pool})
        else:
            yield context.call_activity("lifecycle_expire", {"job_id": job_id, "attempt": attempt})
    # A fresh generation per wake-up: history stays short however long the job runs, and an
    # event the SDK keeps buffered is never mistaken for a new one.
    context.continue_as_new({"job_id": job_id, "pool": pool, "attempt": attempt})
    return "rearmed"


def lifecycle_read(payload: dict[str, Any]) -> dict[str, Any]:
    return lifecycle_steps.read(_svc(), payload["job_id"], payload.get("pool"))


def lifecycle_expire(payload: dict[str, Any]) -> dict[str, Any]:
    return lifecycle_steps.expire(_svc(), payload["job_id"], int(payload["attempt"]))


def lifecycle_retry(payload: dict[str, Any]) -> dict[str, Any]:
    return lifecycle_steps.retry_or_fail(_svc(), payload["job_id"], int(payload["attempt"]))


def lifecycle_cancel(payload: dict[str, Any]) -> dict[str, Any]:
    return lifecycle_steps.cancel(_svc(), payload["job_id"], int(payload["attempt"]))


def lifecycle_release(payload: dict[str, Any]) -> dict[str, Any]:
    return lifecycle_steps.release(_svc(), payload["pool"])


ORCHESTRATORS: dict[str, Callable[..., Any]] = {ORCHESTRATOR: job_lifecycle}
ACTIVITIES: dict[str, Callable[[Any], Any]] = {
    "lifecycle_read": lifecycle_read,
    "lifecycle_expire": lifecycle_expire,
    "lifecycle_retry": lifecycle_retry,
    "lifecycle_cancel": lifecycle_cancel,
    "lifecycle_release": lifecycle_release,
}


def blueprint() -> df.Blueprint:
    """The same functions, registered for the Functions host."""
    bp = df.Blueprint()
    bp.orchestration_trigger(context_name="context", orchestration=ORCHESTRATOR)(job_lifecycle)
    for name, fn in ACTIVITIES.items():
        bp.activity_trigger(input_name="payload", activity=name)(fn)
    return bp
