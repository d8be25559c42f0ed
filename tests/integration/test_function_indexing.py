"""What the Functions host indexes must match what the settings document and infra provides:
every trigger's connection and %setting% exists in local.settings.example.json and in the
function app's app settings in Bicep, and every entity it names is provisioned."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import function_app
from gigafactory.azure.settings import SETTINGS
from tests.integration.indexed import FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra" / "app"
OPTIONAL = {"GIGAFACTORY_POOLS_FILE", "GIGAFACTORY_API_TOKEN"}

BINDINGS: dict[str, list[dict[str, Any]]] = {
    name: json.loads(fn.get_function_json())["bindings"] for name, fn in FUNCTIONS.items()
}


def example_settings() -> dict[str, str]:
    values: dict[str, str] = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    return values


def app_settings_bicep() -> str:
    text = (INFRA / "api.bicep").read_text()
    return text[text.index("resource appSettings"):]


def provisioned_setting_names() -> set[str]:
    return set(re.findall(r"^\s+([A-Za-z_][A-Za-z0-9_]*):", app_settings_bicep(), re.M))


def test_the_expected_functions_are_registered() -> None:
    assert set(BINDINGS) >= {"http_app", "relay_job_changes", "launch_dispatch", "submit_from_queue",
                             "submit_from_event_grid", "sweep", "job_lifecycle", "lifecycle_read",
                             "lifecycle_expire", "lifecycle_retry", "lifecycle_cancel", "lifecycle_release"}


def test_every_connection_is_identity_based_in_infra_and_documented_locally() -> None:
    example = example_settings()
    provisioned = provisioned_setting_names()
    connections = {b["connection"] for bindings in BINDINGS.values() for b in bindings if "connection" in b}
    assert connections == {"COSMOS", "SERVICEBUS"}
    for prefix in connections:
        identity = [s for s in provisioned if s.startswith(f"{prefix}__")]
        assert identity, f"infra sets no {prefix}__* setting for the {prefix} connection"
        assert f"{prefix}__credential" in provisioned and f"{prefix}__clientId" in provisioned
        assert any(k.startswith(f"{prefix}__") for k in example), f"local.settings.example.json lacks {prefix}__*"
        assert prefix not in provisioned, f"{prefix} would be a connection string: keys in app settings"


def test_every_percent_setting_is_provided() -> None:
    referenced = {m for bindings in BINDINGS.values() for b in bindings for v in b.values() if isinstance(v, str)
                  for m in re.findall(r"%([A-Za-z0-9_]+)%", v)}
    assert referenced, "expected %setting% expressions in the bindings"
    for name in referenced:
        assert name in example_settings()
        assert name in provisioned_setting_names()


def test_the_entities_the_triggers_name_are_provisioned() -> None:
    database = (INFRA / "database.bicep").read_text()
    messaging = (INFRA / "messaging.bicep").read_text()
    (cosmos,) = [b for b in BINDINGS["relay_job_changes"] if b["type"] == "cosmosDBTrigger"]
    for container in (cosmos["containerName"], cosmos["leaseContainerName"]):
        assert f"name: '{container}'" in database
    assert cosmos["createLeaseContainerIfNotExists"] is False  # infra creates it (Entra auth cannot)
    (launch,) = [b for b in BINDINGS["launch_dispatch"] if b["type"] == "serviceBusTrigger"]
    assert f"name: '{launch['topicName']}'" in messaging
    assert f"name: '{launch['subscriptionName']}'" in messaging
    (queue,) = [b for b in BINDINGS["submit_from_queue"] if b["type"] == "serviceBusTrigger"]
    assert f"name: '{queue['queueName']}'" in messaging
    assert "/functions/submit_from_event_grid'" in (INFRA / "eventgrid.bicep").read_text()


def test_every_setting_the_code_reads_is_documented_and_provisioned() -> None:
    documented = json.dumps(example_settings())
    provisioned = provisioned_setting_names()
    for name in SETTINGS:
        assert name in documented, f"{name} is not in local.settings.example.json"
        if name not in OPTIONAL:
            assert name in provisioned, f"{name} is not set by infra/app/api.bicep"


def test_no_secret_values_in_the_example_settings() -> None:
    for key, value in example_settings().items():
        assert "AccountKey=" not in value and "SharedAccessKey=" not in value, key


def test_importing_function_app_needs_no_settings(monkeypatch: Any) -> None:
    import importlib
    import os

    for name in list(os.environ):
        if name.startswith(("COSMOS", "SERVICEBUS", "GIGAFACTORY_", "CONTAINERAPPS_", "AzureWebJobs")):
            monkeypatch.delenv(name)
    importlib.reload(function_app)
