"""Telemetry is on only with its setting, and job-scoped spans carry the job id and attempt."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gigafactory.azure import telemetry


def test_without_a_connection_string_nothing_is_configured() -> None:
    assert telemetry.configure_telemetry({}) is False


def test_job_spans_carry_job_id_and_attempt() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.tracer = provider.get_tracer("gigafactory-test")
    try:
        with telemetry.job_span("launch_dispatch", "j-1", 3):
            pass
        with telemetry.job_span("relay", None):
            pass
    finally:
        telemetry.tracer = trace.get_tracer("gigafactory")
    first, second = exporter.get_finished_spans()
    assert first.name == "launch_dispatch"
    assert dict(first.attributes or {}) == {"gigafactory.job_id": "j-1", "gigafactory.attempt": 3}
    assert dict(second.attributes or {}) == {}
