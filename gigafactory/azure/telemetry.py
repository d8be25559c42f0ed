"""OpenTelemetry to Application Insights, on only when its connection setting is present.

Log records keep their ``job_id`` / ``attempt`` fields (they become custom dimensions), and
``job_span`` puts the same two attributes on a span around each job-scoped function body.
With local auth disabled on Application Insights, the exporter authenticates with the app's
managed identity (``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` names its client id).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

_configured = False
tracer = trace.get_tracer("gigafactory")


def configure_telemetry(env: dict[str, str] | None = None) -> bool:
    global _configured
    settings = dict(os.environ if env is None else env)
    if _configured or not settings.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    kwargs: dict[str, Any] = {"logger_name": "gigafactory"}
    auth = settings.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    if "Authorization=AAD" in auth:
        from azure.identity import ManagedIdentityCredential

        client_id = dict(p.split("=", 1) for p in auth.split(";") if "=" in p).get("ClientId")
        kwargs["credential"] = ManagedIdentityCredential(client_id=client_id)
    configure_azure_monitor(**kwargs)
    _configured = True
    return True


@contextmanager
def job_span(name: str, job_id: str | None, attempt: int | None = None) -> Iterator[None]:
    attributes: dict[str, Any] = {}
    if job_id:
        attributes["gigafactory.job_id"] = job_id
    if attempt is not None:
        attributes["gigafactory.attempt"] = attempt
    with tracer.start_as_current_span(name, attributes=attributes):
        yield
