"""Claim-check blobs in an Azure Blob Storage container (``BlobStore`` port).

Keyless in Azure: ``GIGAFACTORY_BLOB_ACCOUNT_URL`` with ``DefaultAzureCredential`` (the app's
identity needs Storage Blob Data Contributor on the container, which infrastructure creates).
``GIGAFACTORY_BLOB_CONNECTION`` is for Azurite only; with it the container is created when
missing, because nothing else provisions an emulator.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from gigafactory.azure import identity

ACCOUNT_URL_SETTING = "GIGAFACTORY_BLOB_ACCOUNT_URL"
CONNECTION_SETTING = "GIGAFACTORY_BLOB_CONNECTION"
CONTAINER_SETTING = "GIGAFACTORY_BLOB_CONTAINER"
DEFAULT_CONTAINER = "artifacts"


class BlobClaimStore:
    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, str] | None = None, *, credential: TokenCredential | None = None
    ) -> BlobClaimStore:
        env = os.environ if settings is None else settings
        container_name = env.get(CONTAINER_SETTING) or DEFAULT_CONTAINER
        connection = env.get(CONNECTION_SETTING)
        if connection:
            container = BlobServiceClient.from_connection_string(connection).get_container_client(container_name)
            with contextlib.suppress(ResourceExistsError):
                container.create_container()
            return cls(container)
        account_url = env.get(ACCOUNT_URL_SETTING)
        if not account_url:
            raise identity.not_configured("Blob storage", ACCOUNT_URL_SETTING, CONNECTION_SETTING, "Azurite")
        if credential is None:
            credential = identity.credential(env)
        return cls(BlobServiceClient(account_url, credential=credential).get_container_client(container_name))

    def put(self, name: str, data: bytes) -> str:
        # Names are content-addressed by the callers, so overwriting repeats the same bytes.
        self._container.upload_blob(name, data, overwrite=True)
        return name

    def get(self, name: str) -> bytes:
        """Raises ``KeyError`` for a missing blob, like the embedded ``FileBlobStore``."""
        try:
            return self._container.download_blob(name).readall()
        except ResourceNotFoundError:
            raise KeyError(f"blob {name}: not found in container {self._container.container_name}") from None
