"""Claim check for large manifests: the blob holds the bytes, the job holds where and what they hash to.

Service Bus messages and Cosmos documents are size-capped (256 KB, 2 MB), so a large manifest
travels by reference. The reference carries the SHA-256 and size so that whoever fetches the
blob can prove it is the manifest that was submitted, not a truncated, swapped or edited one.
"""

from __future__ import annotations

import hashlib

from gigafactory.domain.job import ManifestRef
from gigafactory.ports import BlobStore


class ClaimCheckError(Exception):
    """A referenced manifest is missing or does not match its recorded size and hash."""


def manifest_blob_name(job_id: str, sha256: str) -> str:
    """Content-addressed under the job, so storing the same manifest again is a harmless overwrite."""
    return f"manifests/{job_id}/{sha256}.json"


def store_manifest(blobs: BlobStore, job_id: str, manifest_json: bytes) -> ManifestRef:
    digest = hashlib.sha256(manifest_json).hexdigest()
    name = blobs.put(manifest_blob_name(job_id, digest), manifest_json)
    return ManifestRef(blob=name, sha256=digest, size=len(manifest_json))


def load_manifest(blobs: BlobStore, ref: ManifestRef) -> bytes:
    try:
        data = blobs.get(ref.blob)
    except KeyError as exc:
        raise ClaimCheckError(f"manifest blob {ref.blob} is missing") from exc
    if len(data) != ref.size:
        raise ClaimCheckError(f"manifest blob {ref.blob} is {len(data)} bytes; the job recorded {ref.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ClaimCheckError(f"manifest blob {ref.blob} has sha256 {digest}; the job recorded {ref.sha256}")
    return data
