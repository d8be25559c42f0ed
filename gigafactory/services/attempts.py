"""The factory side: claim, heartbeat, complete — each fenced on (job, attempt, status).

Callers are authenticated by an attempt token that names exactly this job and attempt; the
job keeps only the token's fingerprint. A report for any other attempt is refused (409), so a
zombie factory whose lease expired cannot overwrite a newer attempt.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gigafactory.domain import job as J
from gigafactory.domain import tokens
from gigafactory.domain.job import Job, Result, StaleAttempt
from gigafactory.domain.states import Status
from gigafactory.logs import job_fields
from gigafactory.services.context import Services
from gigafactory.services.mutate import update_job
from gigafactory.services.submit import load_manifest

log = logging.getLogger("gigafactory.attempts")


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    holder: str = Field(min_length=1, max_length=200)


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exit_code: int = Field(ge=-255, le=255)
    cancelled: bool = False
    summary: str | None = Field(default=None, max_length=20_000)
    pr_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    artifacts: list[str] = Field(default_factory=list, max_length=100)
    log_ref: str | None = Field(default=None, max_length=2048)
    log_tail: str | None = Field(default=None, max_length=8192)


def authorize(svc: Services, token: str | None, job_id: str, attempt: int) -> str:
    if not token:
        raise tokens.TokenError("missing attempt token")
    tokens.verify(svc.token_secret, token, job_id=job_id, attempt=attempt, now=svc.clock.now().timestamp())
    return tokens.fingerprint(token)


def claim(svc: Services, job_id: str, attempt: int, token: str | None, req: ClaimRequest) -> dict[str, Any]:
    fingerprint = authorize(svc, token, job_id, attempt)

    def change(job: Job) -> Job | None:
        if job.status is Status.RUNNING and job.attempt == attempt and job.lease is not None:
            if job.lease.holder == req.holder and job.lease.token_sha256 == fingerprint:
                return None  # the same factory claiming again: idempotent
            raise StaleAttempt(f"job {job_id}: attempt {attempt} is already claimed by another holder")
        if job.attempt == attempt and job.status not in (Status.DISPATCHED, Status.LAUNCHING):
            raise StaleAttempt(f"job {job_id}: attempt {attempt} is {job.status}; nothing to claim")
        claimed = J.claim(job, attempt, holder=req.holder, token_sha256=fingerprint,
                          lease_seconds=job.timeouts.heartbeat_seconds, now=svc.clock.now())
        if req.holder.startswith("f-") and claimed.factory_id is None:
            claimed = claimed.model_copy(update={"factory_id": req.holder})
            claimed.etag = job.etag
        return claimed

    job = update_job(svc.store, job_id, change)
    manifest = load_manifest(svc, job)
    pool = svc.pools.get(job.pool)
    profile = pool.profiles[manifest.agent.profile]
    log.info("attempt claimed", extra=job_fields(job_id, attempt, holder=req.holder))
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "argv": profile.render(manifest.task, manifest.agent.args),
        "task": manifest.task,
        "repo": manifest.repo.model_dump() if manifest.repo else None,
        "heartbeat_seconds": manifest.timeouts.heartbeat_seconds,
        "lease_expires_at": job.to_doc()["lease"]["expires_at"],
    }


def _holds_lease(job: Job, attempt: int, fingerprint: str) -> None:
    """Only the token that claimed the attempt may speak for it."""
    if job.attempt == attempt and job.lease is not None and job.lease.token_sha256 != fingerprint:
        raise StaleAttempt(f"job {job.id}: attempt {attempt} was claimed with another token")


def heartbeat(svc: Services, job_id: str, attempt: int, token: str | None) -> dict[str, Any]:
    fingerprint = authorize(svc, token, job_id, attempt)
    current = svc.store.get(job_id)
    if current is not None and current.attempt == attempt and current.cancel_requested:
        return {"cancel": True, "status": current.status.value}

    def change(job: Job) -> Job:
        _holds_lease(job, attempt, fingerprint)
        return J.heartbeat(job, attempt, lease_seconds=job.timeouts.heartbeat_seconds, now=svc.clock.now())

    job = update_job(svc.store, job_id, change)
    return {"cancel": job.cancel_requested, "status": job.status.value,
            "lease_expires_at": job.to_doc()["lease"]["expires_at"]}


def complete(svc: Services, job_id: str, attempt: int, token: str | None, req: CompleteRequest) -> dict[str, Any]:
    fingerprint = authorize(svc, token, job_id, attempt)
    outcome = "succeeded" if req.exit_code == 0 and not req.cancelled else (
        "cancelled" if req.cancelled else "failed")
    result = Result(outcome=outcome, exit_code=req.exit_code, summary=req.summary or req.log_tail,
                    pr_url=req.pr_url, artifacts=req.artifacts, log_ref=req.log_ref,
                    reason="cancelled" if req.cancelled else None)

    def change(job: Job) -> Job | None:
        if (job.attempt == attempt and job.result is not None and job.result.exit_code == req.exit_code
                and job.status in (Status.SUCCEEDED, Status.ATTEMPT_FAILED, Status.FAILED)):
            return None  # a repeated report (the answer to the first was lost)
        _holds_lease(job, attempt, fingerprint)
        profile = svc.pools.get(job.pool).profiles.get(job.profile)
        retryable = profile.is_retryable(req.exit_code) if profile else False
        return J.complete(job, attempt, result, retryable=retryable, now=svc.clock.now())

    job = update_job(svc.store, job_id, change)
    log.info("attempt completed", extra=job_fields(job_id, attempt, exit_code=req.exit_code,
                                                  status=job.status.value))
    return {"job_id": job.id, "attempt": job.attempt, "status": job.status.value}


def manifest_of(svc: Services, job_id: str, attempt: int, token: str | None) -> dict[str, Any]:
    authorize(svc, token, job_id, attempt)
    job = svc.store.get(job_id)
    if job is None or job.attempt != attempt:
        raise StaleAttempt(f"job {job_id}: attempt {attempt} is not current")
    return load_manifest(svc, job).model_dump(mode="json")
