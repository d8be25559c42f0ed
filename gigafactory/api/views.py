"""What the API shows of a job: everything an operator needs, never a token fingerprint."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gigafactory.domain.job import Job


def job_view(job: Job, now: datetime, *, include_manifest: bool = True) -> dict[str, Any]:
    doc = job.to_doc()
    doc.pop("type", None)
    if doc.get("lease"):
        doc["lease"].pop("token_sha256", None)
    if not include_manifest:
        doc.pop("manifest", None)
    doc["score"] = job.score_at(now).as_dict()
    doc["status_url"] = f"/api/jobs/{job.id}"
    return doc


def summary_view(job: Job, now: datetime) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status.value,
        "attempt": job.attempt,
        "pool": job.pool,
        "product": job.product,
        "priority": job.priority,
        "title": job.title,
        "submitted_at": job.to_doc()["submitted_at"],
        "score": round(job.score_at(now).total, 3),
        "status_url": f"/api/jobs/{job.id}",
    }
