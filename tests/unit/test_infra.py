"""Invariants of the Bicep in infra/, checked on the parsed templates (pycep-parser).

There is no Bicep compiler here, so these tests read the parse trees: every file parses, nothing
uses keys, everything that can scale to zero does, the roles are exactly the ones the code needs,
and the pool-driven parts (Service Bus subscriptions, Container Apps jobs) really iterate over
gigafactory/pools.json. For those loops a small evaluator runs the Bicep expressions against the
pools file (or a modified copy) and the results are compared with what the Python routing code
loads from the same file.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser
from pycep.models import BicepElement

from gigafactory.domain.pools import DEFAULT_POOLS_FILE, load_pools, parse_pools

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
POOLS_FILE = ROOT / "gigafactory" / "pools.json"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# Azure built-in roles the code needs, by role definition id.
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
SERVICE_BUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
SERVICE_BUS_DATA_OWNER = "090c5cfd-751d-490a-894a-3ce6f1109419"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
# Cosmos DB data-plane role (sqlRoleDefinitions), not an Azure RBAC role.
COSMOS_DB_BUILT_IN_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"

EXPECTED_BUILT_IN_ROLES = {
    STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
    STORAGE_QUEUE_DATA_CONTRIBUTOR: "Storage Queue Data Contributor",
    STORAGE_TABLE_DATA_CONTRIBUTOR: "Storage Table Data Contributor",
    SERVICE_BUS_DATA_SENDER: "Azure Service Bus Data Sender",
    SERVICE_BUS_DATA_RECEIVER: "Azure Service Bus Data Receiver",
    SERVICE_BUS_DATA_OWNER: "Azure Service Bus Data Owner",
    KEY_VAULT_SECRETS_USER: "Key Vault Secrets User",
    MONITORING_METRICS_PUBLISHER: "Monitoring Metrics Publisher",
    ACR_PULL: "AcrPull",
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
}
FORBIDDEN_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
}
JOB_OPERATOR_ACTIONS = {
    "Microsoft.App/jobs/read",
    "Microsoft.App/jobs/start/action",
    "Microsoft.App/jobs/stop/action",
    "Microsoft.App/jobs/stop/execution/action",
    "Microsoft.App/jobs/executions/read",
    "Microsoft.App/jobs/execution/read",
}

# Settings function_app.py and the gigafactory package read; all must be set, none may carry a key.
REQUIRED_APP_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "COSMOS__accountEndpoint",
    "COSMOS__credential",
    "COSMOS__clientId",
    "COSMOS_DATABASE",
    "SERVICEBUS__fullyQualifiedNamespace",
    "SERVICEBUS__credential",
    "SERVICEBUS__clientId",
    "AZURE_CLIENT_ID",
    "GIGAFACTORY_DISPATCH_MODE",
    "GIGAFACTORY_BLOB_ACCOUNT_URL",
    "GIGAFACTORY_BLOB_CONTAINER",
    "GIGAFACTORY_TOKEN_SECRET",
    "GIGAFACTORY_ENROLLMENT_SECRET",
    "GIGAFACTORY_COORDINATOR_URL",
    "CONTAINERAPPS_SUBSCRIPTION_ID",
    "CONTAINERAPPS_RESOURCE_GROUP",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}


# --- parsing ------------------------------------------------------------------------------------


@cache
def _parser() -> BicepParser:
    return BicepParser()


@cache
def parse(path: Path) -> dict[str, Any]:
    return _parser().parse(file_path=path)


def module_tree(name: str) -> dict[str, Any]:
    return parse(INFRA / "app" / f"{name}.bicep")


def source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def strip_comments(text: str) -> str:
    """Drop `//` comments (outside of '...' strings, which may hold URLs)."""
    kept = []
    for line in text.splitlines():
        in_string, i, cut = False, 0, len(line)
        while i < len(line):
            if in_string and line[i] == "\\":
                i += 2
                continue
            if line[i] == "'":
                in_string = not in_string
            elif not in_string and line.startswith("//", i):
                cut = i
                break
            i += 1
        kept.append(line[:cut])
    return "\n".join(kept)


class Resource:
    """One `resource` declaration, with the loop or condition wrapper peeled off."""

    def __init__(self, file: Path, symbol: str, node: dict[str, Any]) -> None:
        self.file = file
        self.symbol = symbol
        self.type: str = node["type"]
        self.api_version: str = node["api_version"]
        self.existing: bool = node["existing"]
        config = node["config"]
        self.loop: dict[str, Any] | None = None
        self.condition: Any = None
        if "loop_type" in config or set(config) == {"condition", "config"}:
            self.loop = config.get("loop_type")
            self.condition = config.get("condition")
            config = config["config"]
        self.body: dict[str, Any] = config

    @property
    def properties(self) -> dict[str, Any]:
        props = self.body.get("properties", {})
        assert isinstance(props, dict), f"{self.symbol}: properties is not an object"
        return props


def resources(path: Path) -> list[Resource]:
    return [Resource(path, symbol, node) for symbol, node in parse(path).get("resources", {}).items()]


def all_resources() -> list[Resource]:
    return [r for path in BICEP_FILES for r in resources(path)]


def declared(type_: str) -> list[Resource]:
    """Resources of a type that the templates create (not `existing` references)."""
    return [r for r in all_resources() if r.type == type_ and not r.existing]


def one(type_: str) -> Resource:
    found = declared(type_)
    assert len(found) == 1, f"expected exactly one {type_}, found {[r.symbol for r in found]}"
    return found[0]


def get_ci(mapping: dict[str, Any], key: str) -> Any:
    """Property lookup ignoring case (Application Insights spells it DisableLocalAuth)."""
    matches = [v for k, v in mapping.items() if k.lower() == key.lower()]
    assert matches, f"{key} not set (keys: {sorted(mapping)})"
    return matches[0]


def keys_in(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            found |= keys_in(value)
    elif isinstance(node, list):
        for item in node:
            found |= keys_in(item)
    return found


def render(node: Any) -> str:
    """A parse tree back to Bicep-like text, for asserting on expressions that are not values."""
    if isinstance(node, BicepElement):
        return str(node)
    if isinstance(node, str):
        return f"'{node}'"
    if isinstance(node, bool):
        return "true" if node else "false"
    if node is None:
        return "null"
    if isinstance(node, int | float):
        return str(node)
    if isinstance(node, list):
        return "[" + " ".join(render(item) for item in node) + "]"
    if "operator" in node and len(node) == 1:
        op = node["operator"]
        ops = op["operands"]
        symbol = {
            "property_accessor": ".",
            "equals": " == ",
            "not_equals": " != ",
            "and_op": " && ",
            "or_op": " || ",
            "add": " + ",
        }.get(op["type"])
        if symbol is not None:
            return f"{render(ops['operand_1'])}{symbol}{render(ops['operand_2'])}"
        if op["type"] == "index_accessor":
            return f"{render(ops['operand_1'])}[{render(ops['operand_2'])}]"
        if op["type"] == "conditional":
            return f"{render(ops['condition'])} ? {render(ops['true_value'])} : {render(ops['false_value'])}"
        return f"<{op['type']} " + " ".join(render(v) for v in ops.values()) + ">"
    if "function" in node and len(node) == 1:
        fn = node["function"]
        args = fn.get("parameters") or {}
        return f"{fn['type']}(" + ", ".join(render(v) for v in args.values() if v is not None) + ")"
    return "{" + " ".join(f"{k}: {render(v)}" for k, v in node.items()) + "}"


# --- a small evaluator for the pool-driven loops -------------------------------------------------


class Unresolved(Exception):
    """An expression the evaluator does not know (resource ids, runtime values...)."""


JsonLoader = Callable[[Path], Any]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class Scope:
    """Names visible to an expression in one Bicep file: loop variables, then parameters passed
    in (for a module), then the file's variables, then parameter defaults."""

    def __init__(
        self,
        path: Path,
        loader: JsonLoader = read_json,
        params: dict[str, Any] | None = None,
        local: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.tree = parse(path)
        self.loader = loader
        self.params = params or {}
        self.local = local or {}

    def child(self, **local: Any) -> Scope:
        return Scope(self.path, self.loader, self.params, {**self.local, **local})

    def lookup(self, name: str) -> Any:
        if name in self.local:
            return self.local[name]
        if name in self.params:
            return self.params[name]
        variables = self.tree.get("variables", {})
        if name in variables:
            return self.eval(variables[name]["value"])
        parameters = self.tree.get("parameters", {})
        if name in parameters and parameters[name].get("default") is not None:
            return self.eval(parameters[name]["default"])
        raise Unresolved(name)

    def eval(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float):
            return node
        if isinstance(node, BicepElement):
            return self.lookup(node)
        if isinstance(node, str):
            return self._interpolate(node)
        if isinstance(node, list):
            return [self.eval(item) for item in node]
        if "operator" in node and len(node) == 1:
            return self._operator(node["operator"])
        if "function" in node and len(node) == 1:
            return self._function(node["function"])
        return {key: self.eval(value) for key, value in node.items()}

    def _interpolate(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            expression = match.group(1).strip()
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", expression):
                raise Unresolved(expression)
            head, *path = expression.split(".")
            value = self.lookup(head)
            for part in path:
                value = value[part]
            return str(value)

        return re.sub(r"\$\{([^}]*)\}", replace, text).replace("\\'", "'")

    def _relative(self, base: Any, node: Any) -> Any:
        """Apply the right-hand side of `base.<node>`; pycep nests comparisons under the accessor."""
        if isinstance(node, BicepElement):
            if not isinstance(base, dict) or node not in base:
                raise Unresolved(f"property {node}")
            return base[node]
        if isinstance(node, dict) and "operator" in node:
            op = node["operator"]
            ops = op["operands"]
            if op["type"] == "property_accessor":
                return self._relative(self._relative(base, ops["operand_1"]), ops["operand_2"])
            if op["type"] == "equals":
                return self._relative(base, ops["operand_1"]) == self.eval(ops["operand_2"])
            if op["type"] == "not_equals":
                return self._relative(base, ops["operand_1"]) != self.eval(ops["operand_2"])
            if op["type"] == "index_accessor":
                return self._relative(base, ops["operand_1"])[self.eval(ops["operand_2"])]
        raise Unresolved(render(node))

    def _operator(self, op: dict[str, Any]) -> Any:
        ops = op["operands"]
        kind = op["type"]
        if kind == "property_accessor":
            return self._relative(self.eval(ops["operand_1"]), ops["operand_2"])
        if kind == "index_accessor":
            return self.eval(ops["operand_1"])[self.eval(ops["operand_2"])]
        if kind == "equals":
            return self.eval(ops["operand_1"]) == self.eval(ops["operand_2"])
        if kind == "not_equals":
            return self.eval(ops["operand_1"]) != self.eval(ops["operand_2"])
        if kind == "conditional":
            branch = "true_value" if self.eval(ops["condition"]) else "false_value"
            return self.eval(ops[branch])
        raise Unresolved(kind)

    def _function(self, fn: dict[str, Any]) -> Any:
        kind = fn["type"]
        args = fn.get("parameters") or {}
        if kind == "load_json_content":
            return self.loader((self.path.parent / args["file_path"]).resolve())
        if kind == "filter":
            items = self.eval(args["input_array"])
            lam = args["expression"]["detail"]
            return [item for item in items if self.child(**{lam["var_1"]: item}).eval(lam["expression"])]
        if kind == "empty":
            return not self.eval(args["item_to_test"])
        if kind == "string":
            value = self.eval(args["value_to_convert"])
            return value if isinstance(value, str) else json.dumps(value)
        if kind == "json":
            return json.loads(self.eval(args["arg_1"]))
        if kind == "subscription_resource_id":
            return self.eval(args["resource_name_1"])
        raise Unresolved(kind)

    def loop(self, resource: Resource) -> Iterator[Scope]:
        """The scopes of each iteration of a `[for ...]` resource."""
        assert resource.loop is not None, f"{resource.symbol} is not a loop"
        detail = resource.loop["detail"]
        for index, item in enumerate(self.lookup(detail["array_name"])):
            names = {detail["item_name"]: item}
            if detail.get("index_name"):
                names[detail["index_name"]] = index
            yield self.child(**names)


def main_scope(loader: JsonLoader = read_json, **overrides: Any) -> Scope:
    return Scope(MAIN, loader, params=overrides)


def module_scope(module: str, loader: JsonLoader = read_json, **main_overrides: Any) -> Scope:
    """The scope of infra/app/<module>.bicep with the values main.bicep passes to it (only those
    the evaluator can compute; the rest stay unresolved)."""
    main = main_scope(loader, **main_overrides)
    call = parse(MAIN)["modules"][module]["config"]
    passed: dict[str, Any] = {}
    for name, expression in call["params"].items():
        try:
            passed[name] = main.eval(expression)
        except (Unresolved, KeyError, TypeError):
            continue
    return Scope(INFRA / "app" / f"{module}.bicep", loader, params=passed)


def resource_named(path: Path, symbol: str) -> Resource:
    return Resource(path, symbol, parse(path)["resources"][symbol])


def evaluated_subscriptions(loader: JsonLoader = read_json) -> dict[str, dict[str, Any]]:
    """Pool subscription name -> its properties and its rule's SQL filter, as Bicep would expand them."""
    scope = module_scope("messaging", loader)
    path = INFRA / "app" / "messaging.bicep"
    subs = resource_named(path, "poolSubscriptions")
    rules = resource_named(path, "poolRules")
    expanded: dict[str, dict[str, Any]] = {}
    for iteration in scope.loop(subs):
        name = iteration.eval(subs.body["name"])
        expanded[name] = dict(iteration.eval(subs.body["properties"]))
    for iteration in scope.loop(rules):
        parent = rules.body["parent"]["operator"]
        assert parent["type"] == "index_accessor" and parent["operands"]["operand_1"] == "poolSubscriptions"
        index = iteration.eval(parent["operands"]["operand_2"])
        name = list(expanded)[index]
        expanded[name]["filter"] = iteration.eval(rules.body["properties"]["sqlFilter"]["sqlExpression"])
        expanded[name]["filterType"] = rules.body["properties"]["filterType"]
    return expanded


def evaluated_jobs(loader: JsonLoader = read_json, **main_overrides: Any) -> dict[str, dict[str, Any]]:
    """Container Apps job name -> the pool-derived parts of its definition."""
    scope = module_scope("containers", loader, **main_overrides)
    job = resource_named(INFRA / "app" / "containers.bicep", "jobs")
    expanded: dict[str, dict[str, Any]] = {}
    for iteration in scope.loop(job):
        container = job.body["properties"]["template"]["containers"][0]
        expanded[iteration.eval(job.body["name"])] = {
            "image": iteration.eval(container["image"]),
            "cpu": iteration.eval(container["resources"]["cpu"]),
            "memory": iteration.eval(container["resources"]["memory"]),
            "replica_timeout_seconds": iteration.eval(job.body["properties"]["configuration"]["replicaTimeout"]),
        }
    return expanded


def pools_loader(document: dict[str, Any]) -> JsonLoader:
    """Serve `document` in place of gigafactory/pools.json, every other file from disk."""

    def load(path: Path) -> Any:
        if path == POOLS_FILE.resolve():
            return copy.deepcopy(document)
        return read_json(path)

    return load


def with_extra_pools() -> dict[str, Any]:
    document = read_json(POOLS_FILE)
    template = next(p for p in document["pools"] if p["launch_mode"] == "on-demand")
    gpu = copy.deepcopy(template)
    gpu.update(name="gpu", capabilities=["linux", "gpu"], cost_rank=5)
    gpu["container"].update(job_name="factory-gpu", image="example.azurecr.io/factory-gpu:1", cpu=2.0, memory="8Gi")
    gpu["container"]["replica_timeout_seconds"] = 7200
    standing = copy.deepcopy(template)
    standing.update(name="mac-lab", capabilities=["macos"], launch_mode="standing")
    del standing["container"]
    document["pools"] += [gpu, standing]
    parse_pools(json.dumps(document))  # still a valid pools file for the Python side
    return document


def role_assignments() -> list[tuple[Resource, Any]]:
    """Every Azure role assignment with its role id resolved (a GUID, or `custom:<symbol>`)."""
    found = []
    for resource in declared("Microsoft.Authorization/roleAssignments"):
        expression = resource.properties["roleDefinitionId"]
        try:
            role = Scope(resource.file).eval(expression)
        except Unresolved:
            rendered = render(expression)
            match = re.fullmatch(r"(\w+)\.id", rendered)
            assert match, f"{resource.symbol}: cannot resolve role {rendered}"
            target = resource_named(resource.file, match.group(1))
            assert target.type == "Microsoft.Authorization/roleDefinitions"
            role = f"custom:{target.symbol}"
        found.append((resource, role))
    return found


# --- every file ----------------------------------------------------------------------------------


def test_the_expected_modules_exist() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert {
        "main.bicep",
        "app/api.bicep",
        "app/rbac.bicep",
        "app/storage.bicep",
        "app/messaging.bicep",
        "app/database.bicep",
        "app/containers.bicep",
        "app/monitoring.bicep",
        "app/keyvault.bicep",
        "app/eventgrid.bicep",
    } <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path.name} declares nothing"
    for resource in resources(path):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", resource.api_version), resource.symbol


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_no_keys_are_ever_read(path: Path) -> None:
    code = strip_comments(source(path))
    assert not re.search(r"\.list\w*\(", code), "list*() reads keys or secrets"
    for forbidden in (
        "listKeys",
        "listConnectionStrings",
        "listSecrets",
        "getSharedKeys",
        "sharedKey",
        "AccountKey=",
        "SharedAccessKey",
        "primaryKey",
        "InstrumentationKey=",
    ):
        assert forbidden not in code, forbidden
    tree_text = json.dumps(parse(path))
    assert "list_keys" not in tree_text and "listKeys" not in tree_text


def test_main_is_subscription_scoped_and_modules_exist() -> None:
    tree = parse(MAIN)
    assert tree["globals"]["scope"]["value"] == "subscription"
    rg = one("Microsoft.Resources/resourceGroups")
    assert rg.file == MAIN
    assert "abbrs.resourcesResourceGroups" in render(rg.body["name"])
    for name, module in tree["modules"].items():
        assert (INFRA / module["detail"]["path"]).is_file(), name
        assert module["config"]["scope"] == "rg", f"{name} must deploy into the resource group"


def test_module_calls_match_module_parameters_and_outputs() -> None:
    tree = parse(MAIN)
    for name, module in tree["modules"].items():
        target = parse(INFRA / module["detail"]["path"])
        declared_params = target.get("parameters", {})
        passed = set(module["config"]["params"])
        assert passed <= set(declared_params), f"{name}: unknown params {passed - set(declared_params)}"
        required = {p for p, spec in declared_params.items() if spec.get("default") is None}
        assert required <= passed, f"{name}: missing params {required - passed}"
    outputs_of = {
        name: set(parse(INFRA / m["detail"]["path"]).get("outputs", {})) for name, m in tree["modules"].items()
    }
    for module, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", source(MAIN)):
        assert output in outputs_of[module], f"{module}.outputs.{output} does not exist"


def test_parameters_file_matches_main() -> None:
    params = parse(MAIN)["parameters"]
    mapped = read_json(INFRA / "main.parameters.json")["parameters"]
    assert set(mapped) <= set(params), set(mapped) - set(params)
    required = {name for name, spec in params.items() if spec.get("default") is None}
    assert required <= set(mapped), required - set(mapped)
    assert mapped["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert mapped["location"]["value"] == "${AZURE_LOCATION}"
    for secret in ("tokenSecret", "enrollmentSecret"):
        assert secret not in mapped, f"{secret} is generated, never written down"


def test_abbreviations_cover_every_use() -> None:
    abbreviations = read_json(INFRA / "abbreviations.json")
    for path in BICEP_FILES:
        for key in re.findall(r"abbrs\.(\w+)", source(path)):
            assert key in abbreviations, key


def test_outputs_for_azd() -> None:
    outputs = parse(MAIN)["outputs"]
    for name in (
        "AZURE_LOCATION",
        "AZURE_TENANT_ID",
        "AZURE_RESOURCE_GROUP",
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_KEY_VAULT_NAME",
        "AZURE_CONTAINER_REGISTRY_ENDPOINT",
        "GIGAFACTORY_COORDINATOR_URL",
        "COSMOS__accountEndpoint",
        "SERVICEBUS__fullyQualifiedNamespace",
        "GIGAFACTORY_BLOB_ACCOUNT_URL",
        "CONTAINERAPPS_RESOURCE_GROUP",
    ):
        assert name in outputs, name


def test_azure_yaml_declares_the_function_service() -> None:
    text = source(ROOT / "azure.yaml")
    service = re.search(r"^services:\n  api:\n((?:    .*\n)+)", text, re.MULTILINE)
    assert service, "service `api` missing"
    body = service.group(1)
    assert re.search(r"^    project: \.$", body, re.MULTILINE)
    assert re.search(r"^    language: python$", body, re.MULTILINE)
    assert re.search(r"^    host: function$", body, re.MULTILINE)
    # The hooks flip exactly the flags main.parameters.json maps.
    mapped = json.dumps(read_json(INFRA / "main.parameters.json"))
    for flag in set(re.findall(r"azd env set (\w+)", text)):
        assert "${" + flag in mapped, flag


# --- keyless -------------------------------------------------------------------------------------


def test_storage_has_no_shared_keys() -> None:
    storage = one("Microsoft.Storage/storageAccounts")
    assert storage.properties["allowSharedKeyAccess"] is False
    assert storage.properties["allowBlobPublicAccess"] is False
    assert storage.properties["minimumTlsVersion"] == "TLS1_2"


@pytest.mark.parametrize(
    "type_",
    [
        "Microsoft.DocumentDB/databaseAccounts",
        "Microsoft.ServiceBus/namespaces",
        "Microsoft.Insights/components",
        "Microsoft.EventGrid/topics",
    ],
)
def test_local_auth_is_disabled(type_: str) -> None:
    found = declared(type_)
    assert found, f"no {type_}"
    for resource in found:
        assert get_ci(resource.properties, "disableLocalAuth") is True, resource.symbol


def test_other_resources_are_entra_only() -> None:
    assert one("Microsoft.KeyVault/vaults").properties["enableRbacAuthorization"] is True
    assert "accessPolicies" not in one("Microsoft.KeyVault/vaults").properties
    registry = one("Microsoft.ContainerRegistry/registries")
    assert registry.properties["adminUserEnabled"] is False
    assert registry.properties["anonymousPullEnabled"] is False
    workspace = one("Microsoft.OperationalInsights/workspaces")
    assert workspace.properties["features"]["disableLocalAuth"] is True
    environment = one("Microsoft.App/managedEnvironments")
    assert environment.properties["appLogsConfiguration"]["destination"] == "azure-monitor"
    assert "logAnalyticsConfiguration" not in environment.properties["appLogsConfiguration"]


def test_every_identity_is_user_assigned() -> None:
    for type_ in ("Microsoft.Web/sites", "Microsoft.App/jobs"):
        for resource in declared(type_):
            assert resource.body["identity"]["type"] == "UserAssigned", resource.symbol
    assert len(declared("Microsoft.ManagedIdentity/userAssignedIdentities")) == 2


# --- scale to zero -------------------------------------------------------------------------------


def test_function_app_runs_on_flex_consumption() -> None:
    plan = one("Microsoft.Web/serverfarms")
    assert plan.body["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan.properties["reserved"] is True
    app = one("Microsoft.Web/sites")
    assert app.body["kind"] == "functionapp,linux"
    assert render(app.properties["serverFarmId"]) == "plan.id"
    config = app.properties["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    scale = config["scaleAndConcurrency"]
    assert scale["maximumInstanceCount"] == "maximumInstanceCount"
    assert scale["instanceMemoryMB"] == "instanceMemoryMB"
    assert scale.get("alwaysReady", []) == [], "always-ready instances would bill around the clock"
    deployment = config["deployment"]["storage"]
    assert deployment["type"] == "blobContainer"
    assert deployment["authentication"]["type"] == "UserAssignedIdentity"
    api_params = module_tree("api")["parameters"]
    assert [d["argument"] for d in api_params["maximumInstanceCount"]["decorators"] if d["type"] == "min_value"] == [40]
    main_params = parse(MAIN)["parameters"]
    assert "functionAppMaximumInstanceCount" in main_params
    assert (
        parse(MAIN)["modules"]["api"]["config"]["params"]["maximumInstanceCount"] == "functionAppMaximumInstanceCount"
    )


def test_cosmos_is_serverless() -> None:
    account = one("Microsoft.DocumentDB/databaseAccounts")
    assert {"name": "EnableServerless"} in account.properties["capabilities"]
    keys = keys_in(module_tree("database"))
    assert not keys & {"throughput", "autoscaleSettings"}, "serverless accounts take no provisioned throughput"


def test_container_apps_jobs_run_only_when_started() -> None:
    assert not [r for r in all_resources() if r.type == "Microsoft.App/containerApps"], "no always-on apps"
    environment = one("Microsoft.App/managedEnvironments")
    assert environment.properties["workloadProfiles"] == [{"name": "Consumption", "workloadProfileType": "Consumption"}]
    jobs = declared("Microsoft.App/jobs")
    assert jobs
    for job in jobs:
        configuration = job.properties["configuration"]
        assert configuration["triggerType"] == "Manual"
        assert configuration["manualTriggerConfig"] == {"parallelism": 1, "replicaCompletionCount": 1}
        assert "scheduleTriggerConfig" not in configuration and "eventTriggerConfig" not in configuration
        assert not keys_in(job.body) & {"minReplicas", "minExecutions", "scale"}
        assert job.properties["workloadProfileName"] == "Consumption"
        assert configuration["registries"][0]["identity"] == "factoryIdentityId"


def test_dispatch_topic_has_duplicate_detection() -> None:
    topics = {r.body["name"]: r for r in declared("Microsoft.ServiceBus/namespaces/topics")}
    dispatch = topics["dispatch"].properties
    assert dispatch["requiresDuplicateDetection"] is True
    assert dispatch["duplicateDetectionHistoryTimeWindow"] == "PT10M"
    assert "job-events" in topics
    namespace = one("Microsoft.ServiceBus/namespaces")
    assert namespace.body["sku"]["name"] == "Standard"


def test_queue_and_subscriptions_retry_then_dead_letter() -> None:
    queues = {r.body["name"]: r for r in declared("Microsoft.ServiceBus/namespaces/queues")}
    assert set(queues) == {"job-requests"}
    scope = Scope(INFRA / "app" / "messaging.bicep")
    entities = [
        queues["job-requests"],
        resource_named(scope.path, "launcher"),
        resource_named(scope.path, "poolSubscriptions"),
    ]
    for entity in entities:
        assert scope.eval(entity.properties["maxDeliveryCount"]) == 10, entity.symbol
        assert scope.eval(entity.properties["lockDuration"]) == "PT1M", entity.symbol
    for entity in entities[:2]:
        assert entity.properties["deadLetteringOnMessageExpiration"] is True


def test_launcher_subscription_takes_on_demand_dispatches() -> None:
    rule = resource_named(INFRA / "app" / "messaging.bicep", "launcherRule")
    assert rule.body["parent"] == "launcher"
    assert resource_named(INFRA / "app" / "messaging.bicep", "launcher").body["name"] == "launcher"
    sql = Scope(rule.file).eval(rule.properties["sqlFilter"]["sqlExpression"])
    assert sql == "launch_mode = 'on-demand'"


# --- one file drives Python routing and Bicep ----------------------------------------------------


def test_bicep_loads_the_pools_file_python_routes_with() -> None:
    variables = parse(MAIN)["variables"]
    loaded = variables["pools"]["value"]["operator"]
    assert loaded["type"] == "property_accessor" and loaded["operands"]["operand_2"] == "pools"
    load = loaded["operands"]["operand_1"]["function"]
    assert load["type"] == "load_json_content"
    assert load["parameters"]["file_path"] == "../gigafactory/pools.json"
    assert (MAIN.parent / load["parameters"]["file_path"]).resolve() == DEFAULT_POOLS_FILE.resolve()
    assert render(variables["onDemandPools"]["value"]).startswith("filter(pools, ")
    calls = parse(MAIN)["modules"]
    assert calls["messaging"]["config"]["params"]["pools"] == "pools"
    assert calls["containers"]["config"]["params"]["onDemandPools"] == "onDemandPools"
    # The module loops iterate over exactly those parameters.
    assert (
        resource_named(INFRA / "app" / "messaging.bicep", "poolSubscriptions").loop["detail"]["array_name"] == "pools"
    )
    assert resource_named(INFRA / "app" / "messaging.bicep", "poolRules").loop["detail"]["array_name"] == "pools"
    assert resource_named(INFRA / "app" / "containers.bicep", "jobs").loop["detail"]["array_name"] == "onDemandPools"
    assert "launch_mode == 'on-demand'" in render(variables["onDemandPools"]["value"])


def test_one_subscription_per_pool_with_its_filter() -> None:
    pools = load_pools()
    subscriptions = evaluated_subscriptions()
    assert set(subscriptions) == {f"pool-{name}" for name in pools.names()}
    for pool in pools.pools:
        sub = subscriptions[f"pool-{pool.name}"]
        assert sub["filterType"] == "SqlFilter"
        assert sub["filter"] == f"pool = '{pool.name}'"
        if pool.launch_mode == "on-demand":
            # Shadow-comparison copies only: expire quickly, never pile up in the dead-letter queue.
            assert sub["defaultMessageTimeToLive"] == "PT1H"
            assert sub["deadLetteringOnMessageExpiration"] is False
        else:
            assert sub["deadLetteringOnMessageExpiration"] is True


def test_one_job_per_on_demand_pool_with_its_container() -> None:
    pools = load_pools()
    expected = {
        pool.container.job_name: {
            "image": pool.container.image,
            "cpu": pool.container.cpu,
            "memory": pool.container.memory,
            "replica_timeout_seconds": pool.container.replica_timeout_seconds,
        }
        for pool in pools.pools
        if pool.launch_mode == "on-demand" and pool.container is not None
    }
    assert expected, "pools.json has no on-demand pool"
    assert evaluated_jobs() == expected


def test_factory_image_parameter_overrides_every_pool_image() -> None:
    jobs = evaluated_jobs(factoryImage="registry.example/factory:2")
    assert jobs and {job["image"] for job in jobs.values()} == {"registry.example/factory:2"}
    assert parse(MAIN)["modules"]["containers"]["config"]["params"]["factoryImage"] == "factoryImage"


def test_an_extra_pool_in_the_json_yields_an_extra_subscription_and_job() -> None:
    document = with_extra_pools()
    loader = pools_loader(document)
    subscriptions = evaluated_subscriptions(loader)
    assert set(subscriptions) == {f"pool-{p['name']}" for p in document["pools"]}
    assert len(subscriptions) == len(evaluated_subscriptions()) + 2
    assert subscriptions["pool-gpu"]["filter"] == "pool = 'gpu'"
    assert subscriptions["pool-mac-lab"]["deadLetteringOnMessageExpiration"] is True
    jobs = evaluated_jobs(loader)
    assert set(jobs) == set(evaluated_jobs()) | {"factory-gpu"}, "a standing pool gets no job"
    assert jobs["factory-gpu"] == {
        "image": "example.azurecr.io/factory-gpu:1",
        "cpu": 2.0,
        "memory": "8Gi",
        "replica_timeout_seconds": 7200,
    }
    # And the Python side routes to the same pools.
    assert {f"pool-{name}" for name in parse_pools(json.dumps(document)).names()} == set(subscriptions)


def test_no_pool_or_job_name_is_hard_coded() -> None:
    document = read_json(POOLS_FILE)
    for pool in document["pools"]:
        for path in (INFRA / "app" / "messaging.bicep", INFRA / "app" / "containers.bicep", MAIN):
            text = source(path)
            assert f"pool-{pool['name']}" not in text
            if "container" in pool:
                assert pool["container"]["job_name"] not in text
                assert pool["container"]["image"] not in text


# --- Cosmos DB containers ------------------------------------------------------------------------


def test_cosmos_containers_partition_keys_and_indexes() -> None:
    databases = declared("Microsoft.DocumentDB/databaseAccounts/sqlDatabases")
    assert [Scope(d.file).eval(d.body["name"]) for d in databases] == ["gigafactory"]
    containers = {
        r.body["name"]: r.properties["resource"]
        for r in declared("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    }
    partition_keys = {name: spec["partitionKey"]["paths"] for name, spec in containers.items()}
    assert partition_keys == {"jobs": ["/pool"], "pools": ["/id"], "factories": ["/pool"], "leases": ["/id"]}
    composites = [
        [(part["path"], part["order"]) for part in index]
        for index in containers["jobs"]["indexingPolicy"]["compositeIndexes"]
    ]
    assert composites == [
        [("/status", "ascending"), ("/sort_key", "descending")],
        [("/status", "ascending"), ("/submitted_at", "descending")],
        [("/product", "ascending"), ("/submitted_at", "descending")],
        [("/pool", "ascending"), ("/submitted_at", "descending")],
    ]


def test_jobs_indexing_policy_is_the_one_the_store_expects() -> None:
    # Imported here: the store module needs the Azure SDK, the other infra tests do not.
    from gigafactory.azure.cosmos_store import JOBS_CONTAINER, JOBS_INDEXING_POLICY, POOLS_CONTAINER

    containers = {
        r.body["name"]: r.properties["resource"]
        for r in declared("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    }
    assert {JOBS_CONTAINER, POOLS_CONTAINER} <= set(containers)
    assert containers[JOBS_CONTAINER]["indexingPolicy"] == JOBS_INDEXING_POLICY


def test_settings_named_by_the_azure_adapters_are_set() -> None:
    from gigafactory.azure import blob_claims, cosmos_store

    names = {
        cosmos_store.ENDPOINT_SETTING,
        cosmos_store.DATABASE_SETTING,
        blob_claims.ACCOUNT_URL_SETTING,
        blob_claims.CONTAINER_SETTING,
    }
    settings = app_settings()
    assert names <= set(settings)
    assert not {cosmos_store.CONNECTION_SETTING, blob_claims.CONNECTION_SETTING} & set(settings), "emulators only"


def test_cosmos_data_contributor_is_granted_to_the_function_identity() -> None:
    (assignment,) = declared("Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    scope = Scope(
        assignment.file,
        params={"principalId": "<function>", "databaseName": "gigafactory"},
        local={"cosmos": {"id": "<account>"}},
    )
    assert scope.eval(assignment.properties["roleDefinitionId"]) == (
        f"<account>/sqlRoleDefinitions/{COSMOS_DB_BUILT_IN_DATA_CONTRIBUTOR}"
    )
    assert scope.eval(assignment.properties["scope"]) == "<account>/dbs/gigafactory"
    assert assignment.properties["principalId"] == "principalId"
    passed = parse(MAIN)["modules"]["rbac"]["config"]["params"]
    assert render(passed["principalId"]) == "identities.outputs.functionPrincipalId"


# --- the function app's settings -----------------------------------------------------------------


def app_settings() -> dict[str, Any]:
    (settings,) = [r for r in declared("Microsoft.Web/sites/config") if r.body["name"] == "appsettings"]
    assert settings.file.name == "api.bicep"
    assert settings.body["parent"] == "functionApp"
    return settings.properties


def test_every_setting_the_code_reads_is_set() -> None:
    settings = app_settings()
    assert set(settings) >= REQUIRED_APP_SETTINGS, REQUIRED_APP_SETTINGS - set(settings)
    for name in ("AzureWebJobsStorage__credential", "COSMOS__credential", "SERVICEBUS__credential"):
        assert settings[name] == "managedidentity", name
    for name in ("AzureWebJobsStorage__clientId", "COSMOS__clientId", "SERVICEBUS__clientId", "AZURE_CLIENT_ID"):
        assert settings[name] == "identityClientId", name
    assert settings["COSMOS_DATABASE"] == "databaseName"
    assert settings["GIGAFACTORY_BLOB_CONTAINER"] == "artifactsContainerName"
    assert settings["GIGAFACTORY_DISPATCH_MODE"] == "dispatchMode"
    assert settings["GIGAFACTORY_TOKEN_SECRET"] == "@Microsoft.KeyVault(SecretUri=${tokenSecretUri})"
    assert settings["GIGAFACTORY_ENROLLMENT_SECRET"] == "@Microsoft.KeyVault(SecretUri=${enrollmentSecretUri})"
    assert settings["GIGAFACTORY_COORDINATOR_URL"] == "https://${functionApp.properties.defaultHostName}"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    api = parse(INFRA / "app" / "api.bicep")["parameters"]
    assert api["databaseName"]["default"] == "gigafactory"
    assert api["artifactsContainerName"]["default"] == "artifacts"
    assert api["dispatchMode"]["default"] == "broker"
    assert parse(MAIN)["parameters"]["dispatchMode"]["default"] == "broker"
    assert source(MAIN).count("var artifactsContainerName = 'artifacts'") == 1
    assert source(MAIN).count("var databaseName = 'gigafactory'") == 1


def test_no_setting_carries_a_secret() -> None:
    settings = app_settings()
    for name, value in settings.items():
        text = render(value)
        for marker in ("AccountKey", "SharedAccessKey", "DefaultEndpointsProtocol", "InstrumentationKey", "listKeys"):
            assert marker not in text, f"{name} contains {marker}"
    # FUNCTIONS_WORKER_RUNTIME and friends are not allowed on Flex Consumption (runtime is in functionAppConfig).
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "AzureWebJobsStorage"} & set(settings)
    app = one("Microsoft.Web/sites")
    assert app.properties["keyVaultReferenceIdentity"] == "identityId"
    assert app.properties["httpsOnly"] is True


# Each Key Vault secret: (main.bicep parameter, keyvault.bicep write flag, its output, app setting).
KEY_VAULT_SECRETS = {
    "tokenSecretName": ("tokenSecret", "writeTokenSecret", "tokenSecretUri", "GIGAFACTORY_TOKEN_SECRET"),
    "enrollmentSecretName": ("enrollmentSecret", "writeEnrollmentSecret", "enrollmentSecretUri",
                             "GIGAFACTORY_ENROLLMENT_SECRET"),
}


def test_the_secrets_are_generated_and_kept_in_key_vault() -> None:
    secrets = {r.body["name"]: r for r in declared("Microsoft.KeyVault/vaults/secrets")}
    assert set(secrets) == set(KEY_VAULT_SECRETS)
    main = parse(MAIN)
    passed = main["modules"]["keyvault"]["config"]["params"]
    to_api = main["modules"]["api"]["config"]["params"]
    outputs = parse(INFRA / "app" / "keyvault.bicep")["outputs"]
    settings = app_settings()
    for name, (param, flag, output, setting) in KEY_VAULT_SECRETS.items():
        generated = main["parameters"][param]
        assert {"type": "secure"} in generated["decorators"], param
        assert "newGuid()" in render(generated["default"]), param
        assert not re.fullmatch(r"'[^$]*'", render(generated["default"])), f"{param}: never a literal"
        secret = secrets[name]
        assert secret.properties["value"] == param
        assert secret.condition == flag
        assert render(passed[param]) == param
        # One flag for both: the azd hooks turn it off after the first provision, so later
        # provisions rotate neither the signing key nor the enrollment secret.
        assert render(passed[flag]) == "writeTokenSecret", flag
        assert outputs[output]["value"] == f"${{vault.properties.vaultUri}}secrets/${{{name}}}"
        assert render(to_api[output]) == f"keyvault.outputs.{output}"
        assert settings[setting] == f"@Microsoft.KeyVault(SecretUri=${{{output}}})", setting


# --- roles ---------------------------------------------------------------------------------------


def test_role_assignments_are_exactly_the_needed_ones() -> None:
    assigned = role_assignments()
    built_in = {role for _, role in assigned if not str(role).startswith("custom:")}
    assert built_in == set(EXPECTED_BUILT_IN_ROLES), {
        "missing": [EXPECTED_BUILT_IN_ROLES[r] for r in set(EXPECTED_BUILT_IN_ROLES) - built_in],
        "unexpected": sorted(built_in - set(EXPECTED_BUILT_IN_ROLES)),
    }
    custom = {role for _, role in assigned if str(role).startswith("custom:")}
    assert custom == {"custom:jobOperatorRole"}
    for resource, _ in assigned:
        assert resource.properties["principalType"] == "ServicePrincipal", resource.symbol
        assert "scope" in resource.body, f"{resource.symbol} would be assigned on the whole resource group"


def test_no_broad_role_anywhere() -> None:
    for path in BICEP_FILES:
        text = source(path).lower()
        for role_id, name in FORBIDDEN_ROLES.items():
            assert role_id not in text, f"{path.name} assigns {name}"
    for resource, role in role_assignments():
        assert role not in FORBIDDEN_ROLES, resource.symbol


def test_roles_sit_at_the_narrowest_scope() -> None:
    by_symbol = {(r.file, r.symbol): r for r in all_resources()}
    scopes: dict[str, set[str]] = {}
    for assignment, role in role_assignments():
        target = render(assignment.body["scope"])
        symbol = target.split("[", 1)[0]
        resource = by_symbol[(assignment.file, symbol)]
        scopes.setdefault(str(role), set()).add(
            f"{resource.type}/{resource.body['name'] if resource.existing else symbol}"
        )
    assert scopes[SERVICE_BUS_DATA_OWNER] == {
        "Microsoft.ServiceBus/namespaces/topics/subscriptions/launcher",
        "Microsoft.ServiceBus/namespaces/queues/job-requests",
    }, "Data Owner only on the trigger entities (scale controller reads their counts)"
    assert scopes[SERVICE_BUS_DATA_SENDER] == {
        "Microsoft.ServiceBus/namespaces/topics/dispatch",
        "Microsoft.ServiceBus/namespaces/topics/job-events",
    }
    assert scopes[SERVICE_BUS_DATA_RECEIVER] == {"Microsoft.ServiceBus/namespaces/topics/dispatch"}
    assert scopes["custom:jobOperatorRole"] == {"Microsoft.App/jobs/jobs"}
    assert scopes[ACR_PULL] == {"Microsoft.ContainerRegistry/registries/registry"}
    assert scopes[STORAGE_BLOB_DATA_CONTRIBUTOR] == {
        "Microsoft.Storage/storageAccounts/blobServices/containers/deadLetterContainerName"
    }


def test_job_operator_role_allows_only_job_executions() -> None:
    role = one("Microsoft.Authorization/roleDefinitions")
    scope = Scope(role.file)
    permissions = role.properties["permissions"]
    assert len(permissions) == 1
    actions = scope.eval(permissions[0]["actions"])
    assert set(actions) == JOB_OPERATOR_ACTIONS
    assert not any("*" in action for action in actions)
    assert permissions[0]["dataActions"] == [] and permissions[0]["notActions"] == []
    assert render(role.properties["assignableScopes"]) == "[resource_group().id]"
    (assignment,) = [r for r, role_ in role_assignments() if role_ == "custom:jobOperatorRole"]
    assert assignment.loop is not None and assignment.loop["detail"]["array_name"] == "onDemandPools"
    assert render(assignment.body["scope"]) == f"jobs[{assignment.loop['detail']['index_name']}]"
    assert assignment.properties["principalId"] == "functionPrincipalId"


def test_factories_only_pull_images() -> None:
    factory_roles = {
        role
        for resource, role in role_assignments()
        if render(resource.properties["principalId"]) == "factoryPrincipalId"
    }
    assert factory_roles == {ACR_PULL}
    passed = parse(MAIN)["modules"]["containers"]["config"]["params"]
    assert render(passed["factoryPrincipalId"]) == "identities.outputs.factoryPrincipalId"
    assert render(passed["functionPrincipalId"]) == "identities.outputs.functionPrincipalId"


def test_deploy_doc_explains_every_role() -> None:
    doc = source(ROOT / "docs" / "deploy.md")
    for name in [*EXPECTED_BUILT_IN_ROLES.values(), "Cosmos DB Built-in Data Contributor"]:
        assert name in doc, name
    for action in JOB_OPERATOR_ACTIONS:
        assert action in doc, action


# --- Event Grid ----------------------------------------------------------------------------------


def test_event_grid_delivers_cloud_events_to_the_submit_function() -> None:
    topic = one("Microsoft.EventGrid/topics")
    assert topic.properties["inputSchema"] == "CloudEventSchemaV1_0"
    subscription = one("Microsoft.EventGrid/topics/eventSubscriptions")
    assert subscription.body["parent"] == "topic"
    destination = subscription.properties["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["resourceId"] == "${functionApp.id}/functions/submit_from_event_grid"
    assert subscription.properties["eventDeliverySchema"] == "CloudEventSchemaV1_0"
    assert subscription.properties["deadLetterWithResourceIdentity"]["identity"]["type"] == "SystemAssigned"
    function_app = resource_named(subscription.file, "functionApp")
    assert function_app.existing and function_app.type == "Microsoft.Web/sites"
