"""Submission: validate, route, score, store as queued. Same for HTTP, queue and Event Grid."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from gigafactory.domain import ids
from gigafactory.domain.job import Job, new_job
from gigafactory.domain.manifest import Manifest
from gigafactory.logs import job_fields
from gigafactory.services.claim_check import load_manifest as load_blob
from gigafactory.services.claim_check import store_manifest
from gigafactory.services.context import Services

log = logging.getLogger("gigafactory.submit")


class InvalidRequest(ValueError):
    """A submission refused before anything was stored; ``errors`` name field and rule."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("body",)) or "(body)"
        out.append({"field": loc, "rule": err["type"], "message": err["msg"]})
    return out


def parse_manifest(data: Any, header_key: str | None = None) -> Manifest:
    if not isinstance(data, dict):
        raise InvalidRequest([{"field": "(body)", "rule": "object", "message": "the manifest must be a JSON object"}])
    if header_key is not None:
        if len(header_key) > 200 or not header_key.isprintable() or not header_key.strip():
            raise InvalidRequest([{"field": "Idempotency-Key", "rule": "string_pattern_mismatch",
                                   "message": "must be 1-200 printable characters"}])
        if data.get("idempotency_key") not in (None, header_key):
            raise InvalidRequest([{"field": "idempotency_key", "rule": "matches_header",
                                   "message": "differs from the Idempotency-Key header"}])
        data = {**data, "idempotency_key": header_key}
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_errors(exc)) from None


def submit(svc: Services, data: Any, header_key: str | None = None) -> tuple[Job, bool]:
    """Returns the job and whether this call created it (``False``: an idempotent repeat)."""
    manifest = parse_manifest(data, header_key)
    try:
        pool = svc.pools.route(manifest.requirements.capabilities, manifest.agent.profile)
    except ValueError as exc:
        # Name the field that is at fault: when some pool covers the capabilities, it is the profile.
        covered = any(p.covers(manifest.requirements.capabilities) for p in svc.pools.pools)
        field = "agent.profile" if covered else "requirements.capabilities"
        raise InvalidRequest([{"field": field, "rule": "routable", "message": str(exc)}]) from None
    profile = pool.profiles[manifest.agent.profile]
    try:
        profile.render(manifest.task, manifest.agent.args)
    except ValueError as exc:
        raise InvalidRequest([{"field": "agent.args", "rule": "profile_args", "message": str(exc)}]) from None
    job_id = ids.job_id_for_key(manifest.idempotency_key) if manifest.idempotency_key else ids.new_job_id()
    if manifest.idempotency_key:
        existing = svc.store.get(job_id)
        if existing is not None:
            return existing, False
    now = svc.clock.now()
    raw = manifest.model_dump_json().encode()
    ref = None
    if svc.blobs is not None and len(raw) > svc.claim_check_bytes:
        ref = store_manifest(svc.blobs, job_id, raw)
    job = new_job(job_id=job_id, manifest=manifest, pool=pool.name, now=now, store_manifest=ref is None,
                  manifest_ref=ref)
    stored, created = svc.store.create(job)
    if created:
        log.info("job submitted", extra=job_fields(job_id, 1, pool=pool.name, product=manifest.product,
                                                  sort_key=stored.sort_key))
    return stored, created


def load_manifest(svc: Services, job: Job) -> Manifest:
    """The manifest, inline or from its claim check (integrity verified)."""
    if job.manifest is not None:
        return job.manifest
    if job.manifest_ref is None or svc.blobs is None:
        raise LookupError(f"job {job.id}: manifest unavailable")
    return Manifest.model_validate(json.loads(load_blob(svc.blobs, job.manifest_ref)))
