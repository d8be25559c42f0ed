"""The Azure composition root: builds the services from app settings, lazily and once.

Importing ``function_app`` must need no settings (the host indexes functions before any are
read), so nothing here runs at import time. Tests swap the provider for embedded adapters.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping

from gigafactory.domain.pools import load_pools
from gigafactory.local.clock import SystemClock
from gigafactory.services.context import DISPATCH_MODES, Services

# Every app setting the code reads, with what it means (local.settings.example.json and infra
# provide exactly these; the indexing test checks all three agree).
SETTINGS: dict[str, str] = {
    "GIGAFACTORY_DISPATCH_MODE": "poll | shadow | broker (default broker)",
    "GIGAFACTORY_POOLS_FILE": "optional path of the pools JSON (default: the packaged gigafactory/pools.json)",
    "GIGAFACTORY_TOKEN_SECRET": "attempt-token signing secret (a Key Vault reference in Azure)",
    "GIGAFACTORY_ENROLLMENT_SECRET": "secret standing factories present to enroll; unset, enrollment is refused "
                                     "(a Key Vault reference in Azure)",
    "GIGAFACTORY_COORDINATOR_URL": "the public base URL factories call back (https://<app>.azurewebsites.net)",
    "GIGAFACTORY_API_TOKEN": "optional bearer token required on operator routes in addition to the function key",
    "COSMOS__accountEndpoint": "Cosmos DB account endpoint (identity-based connection)",
    "COSMOS_DATABASE": "Cosmos DB database name (default gigafactory)",
    "SERVICEBUS__fullyQualifiedNamespace": "Service Bus namespace host (identity-based connection)",
    "GIGAFACTORY_BLOB_ACCOUNT_URL": "blob endpoint for claim-checked manifests and factory logs",
    "GIGAFACTORY_BLOB_CONTAINER": "blob container for claim checks (default artifacts)",
    "CONTAINERAPPS_SUBSCRIPTION_ID": "subscription of the factory Container Apps Jobs",
    "CONTAINERAPPS_RESOURCE_GROUP": "resource group of the factory Container Apps Jobs",
    "AZURE_CLIENT_ID": "client id of the user-assigned managed identity (DefaultAzureCredential)",
    "AzureWebJobsStorage__blobServiceUri": "host storage (Durable Functions task hub, leases): blob endpoint",
    "AzureWebJobsStorage__queueServiceUri": "host storage: queue endpoint",
    "AzureWebJobsStorage__tableServiceUri": "host storage: table endpoint",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "Application Insights (telemetry on when present)",
}

_lock = threading.Lock()
_services: Services | None = None
_provider: Callable[[], Services] | None = None


def build_services(env: Mapping[str, str]) -> Services:
    from gigafactory.azure.blob_claims import BlobClaimStore
    from gigafactory.azure.container_apps import ContainerAppsLauncher
    from gigafactory.azure.cosmos_store import CosmosJobStore
    from gigafactory.azure.servicebus import ServiceBusPublisher

    mode = env.get("GIGAFACTORY_DISPATCH_MODE", "broker")
    if mode not in DISPATCH_MODES:
        raise ValueError(f"GIGAFACTORY_DISPATCH_MODE: must be one of {', '.join(DISPATCH_MODES)}, not {mode!r}")
    secret = env.get("GIGAFACTORY_TOKEN_SECRET")
    if not secret:
        raise ValueError("GIGAFACTORY_TOKEN_SECRET: required (a Key Vault reference in Azure)")
    pools = load_pools(env.get("GIGAFACTORY_POOLS_FILE") or None)
    store = CosmosJobStore.from_settings(env)
    return Services(
        store=store,
        pools=pools,
        clock=SystemClock(),
        token_secret=secret.encode(),
        coordinator_url=env.get("GIGAFACTORY_COORDINATOR_URL", ""),
        bus=ServiceBusPublisher.from_settings(env),
        launcher=ContainerAppsLauncher.from_settings(env, pools),
        blobs=BlobClaimStore.from_settings(env),
        dispatch_mode=mode,
        factories=store,
        shadow_log=store,
        enrollment_secret=env.get("GIGAFACTORY_ENROLLMENT_SECRET") or None,
    )


def use(provider: Callable[[], Services] | None) -> None:
    """Replace how services are obtained (tests wire the embedded adapters here)."""
    global _provider, _services
    with _lock:
        _provider = provider
        _services = None


def services() -> Services:
    global _services
    if _provider is not None:
        return _provider()
    with _lock:
        if _services is None:
            _services = build_services(os.environ)
        return _services
