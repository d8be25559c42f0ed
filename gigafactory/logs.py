"""JSON logs, one object per line, carrying job id and attempt whenever a line is about a job."""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

log = logging.getLogger("gigafactory")


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                                       rename_fields={"levelname": "level"}))
    handler.addFilter(_drop_color)
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _drop_color(record: logging.LogRecord) -> bool:
    record.__dict__.pop("color_message", None)
    return True


def job_fields(job_id: str, attempt: int | None = None, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"job_id": job_id, **extra}
    if attempt is not None:
        fields["attempt"] = attempt
    return fields
