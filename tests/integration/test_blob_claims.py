"""Claim check against Azurite: what the submit path stores is exactly what the factory gets back,
and anything else (edited, truncated, missing) is refused instead of being run as a task."""

from __future__ import annotations

import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from gigafactory.azure.blob_claims import (
    ACCOUNT_URL_SETTING,
    CONNECTION_SETTING,
    CONTAINER_SETTING,
    BlobClaimStore,
)
from gigafactory.domain.job import ManifestRef
from gigafactory.domain.manifest import Manifest
from gigafactory.services.claim_check import ClaimCheckError, load_manifest, store_manifest


@pytest.fixture
def container_name() -> str:
    return f"claims-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def blobs(azurite_blob_connection_string: str, container_name: str) -> BlobClaimStore:
    return BlobClaimStore.from_settings({CONNECTION_SETTING: azurite_blob_connection_string,
                                         CONTAINER_SETTING: container_name})


def big_manifest_json(size: int = 2 * 1024 * 1024) -> bytes:
    task = "Refactor the billing module without changing behaviour.\n" * (size // 57 + 1)
    return Manifest(product="billing", title="large task", task=task[:size]).model_dump_json().encode()


def test_a_2_mb_manifest_round_trips(blobs: BlobClaimStore) -> None:
    raw = big_manifest_json()
    assert len(raw) > 2 * 1024 * 1024
    ref = store_manifest(blobs, "j-big", raw)
    assert ref.size == len(raw)
    assert ref.blob.startswith("manifests/j-big/") and ref.sha256 in ref.blob
    assert load_manifest(blobs, ref) == raw
    # Storing the same manifest again (a retried submission) names the same blob.
    assert store_manifest(blobs, "j-big", raw) == ref


def test_the_container_is_created_on_first_use_with_a_connection_string(
    azurite_blob_connection_string: str, container_name: str
) -> None:
    service = BlobServiceClient.from_connection_string(azurite_blob_connection_string)
    assert not service.get_container_client(container_name).exists()
    settings = {CONNECTION_SETTING: azurite_blob_connection_string, CONTAINER_SETTING: container_name}
    BlobClaimStore.from_settings(settings).put("a", b"1")
    assert BlobClaimStore.from_settings(settings).get("a") == b"1"  # existing container: no error


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), id="same-size-edit"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: raw + b" ", id="appended"),
    ],
)
def test_a_tampered_blob_is_refused(blobs: BlobClaimStore, tamper: object) -> None:
    raw = big_manifest_json(64 * 1024)
    ref = store_manifest(blobs, "j-1", raw)
    blobs.put(ref.blob, tamper(raw))  # type: ignore[operator]
    with pytest.raises(ClaimCheckError, match=ref.blob):
        load_manifest(blobs, ref)


def test_a_missing_blob_is_a_clear_error(blobs: BlobClaimStore) -> None:
    ref = ManifestRef(blob="manifests/j-gone/" + "0" * 64 + ".json", sha256="0" * 64, size=10)
    with pytest.raises(ClaimCheckError, match=r"manifests/j-gone/0+\.json is missing"):
        load_manifest(blobs, ref)
    with pytest.raises(KeyError, match="not found"):
        blobs.get(ref.blob)


def test_without_settings_both_ways_to_configure_are_named() -> None:
    with pytest.raises(ValueError) as info:
        BlobClaimStore.from_settings({})
    assert ACCOUNT_URL_SETTING in str(info.value) and CONNECTION_SETTING in str(info.value)
