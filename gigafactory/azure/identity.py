"""One way to authenticate to Azure and one way to say a connection is missing.

Keyless everywhere: ``DefaultAzureCredential`` picks the user-assigned identity named the way
the Functions host's identity-based connections name it (``<PREFIX>__clientId``), falling back
to ``AZURE_CLIENT_ID``. Connection strings are accepted for local emulators only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


def credential(env: Mapping[str, str], client_id_setting: str | None = None) -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    client_id = (env.get(client_id_setting) if client_id_setting else None) or env.get("AZURE_CLIENT_ID") or None
    return DefaultAzureCredential(managed_identity_client_id=client_id)


def not_configured(what: str, keyless_setting: str, local_setting: str, local_use: str) -> ValueError:
    return ValueError(f"{what} is not configured: set {keyless_setting} (keyless, managed identity) "
                      f"or {local_setting} ({local_use} only)")
