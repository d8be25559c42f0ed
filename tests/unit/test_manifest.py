"""Every rule of the job manifest: each bound accepted at its edge and refused one step past it,
with the error located at the field that broke the rule."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from gigafactory.domain.manifest import (
    MAX_ARG_CHARS,
    MAX_ARGS,
    MAX_CAPABILITIES,
    MAX_LABELS,
    MAX_TASK_CHARS,
    SCHEMA_VERSION,
    Manifest,
)

BASE: dict[str, Any] = {"product": "demo", "title": "a title", "task": "do the thing"}


def with_(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of the base manifest with ``value`` set at the dotted ``path``."""
    data = copy.deepcopy(base if base is not None else BASE)
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return data


def refused(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(data)
    return info.value.errors()


def assert_refused_at(data: dict[str, Any], loc: tuple[Any, ...], rule: str | None = None) -> None:
    errors = refused(data)
    locs = [tuple(e["loc"]) for e in errors]
    assert any(found[: len(loc)] == loc for found in locs), f"expected an error at {loc}, got {locs}"
    if rule is not None:
        rules = [e["type"] for e in errors if tuple(e["loc"])[: len(loc)] == loc]
        assert rule in rules, f"expected rule {rule} at {loc}, got {rules}"


# -- defaults -------------------------------------------------------------------------------------


def test_minimal_manifest_gets_every_default() -> None:
    m = Manifest.model_validate(BASE)
    assert m.schema_version == SCHEMA_VERSION == 1
    assert m.repo is None
    assert m.agent.profile == "echo"
    assert m.agent.args == {}
    assert m.requirements.capabilities == ["linux"]
    assert m.requirements.resource_class == "small"
    assert m.priority == "P2"
    assert m.deadline is None
    assert (m.retry.max_attempts, m.retry.backoff_seconds, m.retry.backoff_multiplier,
            m.retry.max_backoff_seconds) == (3, 30, 2.0, 3600)
    assert (m.timeouts.schedule_to_start_seconds, m.timeouts.start_to_close_seconds,
            m.timeouts.heartbeat_seconds) == (900, 14_400, 60)
    assert m.labels == {}
    assert m.idempotency_key is None


@pytest.mark.parametrize("part", ["agent", "requirements", "retry", "timeouts"])
def test_empty_nested_object_takes_that_parts_defaults(part: str) -> None:
    explicit = Manifest.model_validate({**BASE, part: {}})
    implicit = Manifest.model_validate(BASE)
    assert getattr(explicit, part) == getattr(implicit, part)


def test_repo_ref_defaults_to_none() -> None:
    m = Manifest.model_validate({**BASE, "repo": {"url": "https://github.com/org/repo.git"}})
    assert m.repo is not None and m.repo.ref is None


def test_defaults_are_not_shared_between_instances() -> None:
    a = Manifest.model_validate(BASE)
    b = Manifest.model_validate(BASE)
    a.labels["x"] = "y"
    a.requirements.capabilities.append("gpu")
    assert b.labels == {}
    assert b.requirements.capabilities == ["linux"]


# -- required fields and schema_version --------------------------------------------------------------


@pytest.mark.parametrize("field", ["product", "title", "task"])
def test_required_field_missing(field: str) -> None:
    data = {k: v for k, v in BASE.items() if k != field}
    assert_refused_at(data, (field,), "missing")


@pytest.mark.parametrize("version", [0, 2, "2", None, "v1"])
def test_schema_version_other_than_1_refused(version: Any) -> None:
    assert_refused_at(with_("schema_version", version), ("schema_version",))


def test_schema_version_1_accepted() -> None:
    assert Manifest.model_validate(with_("schema_version", 1)).schema_version == 1


# -- unknown fields at every level -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({**BASE, "colour": "red"}, ("colour",)),
        ({**BASE, "repo": {"url": "https://github.com/o/r", "branch": "main"}}, ("repo", "branch")),
        ({**BASE, "agent": {"profile": "echo", "model": "big"}}, ("agent", "model")),
        ({**BASE, "requirements": {"gpu": True}}, ("requirements", "gpu")),
        ({**BASE, "retry": {"jitter": 0.1}}, ("retry", "jitter")),
        ({**BASE, "timeouts": {"idle_seconds": 10}}, ("timeouts", "idle_seconds")),
    ],
    ids=["top", "repo", "agent", "requirements", "retry", "timeouts"],
)
def test_unknown_field_refused_at_every_level(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    assert_refused_at(data, loc, "extra_forbidden")


# -- scalar bounds -------------------------------------------------------------------------------------
# (path, value at the edge that is accepted, value just past it that is refused, rule)

EDGES: list[tuple[str, Any, Any, str]] = [
    ("product", "a", "", "string_pattern_mismatch"),
    ("product", "a" * 63, "a" * 64, "string_pattern_mismatch"),
    ("product", "my-prod_1.x", "My-prod", "string_pattern_mismatch"),
    ("product", "0abc", "-abc", "string_pattern_mismatch"),
    ("title", "t", "", "string_too_short"),
    ("title", "t" * 200, "t" * 201, "string_too_long"),
    ("task", "x", "", "string_too_short"),
    ("task", "x" * MAX_TASK_CHARS, "x" * (MAX_TASK_CHARS + 1), "string_too_long"),
    ("agent.profile", "a", "", "string_pattern_mismatch"),
    ("agent.profile", "a" * 63, "a" * 64, "string_pattern_mismatch"),
    ("agent.profile", "my_agent-2", "2agent", "string_pattern_mismatch"),
    ("requirements.resource_class", "large", "huge", "literal_error"),
    ("priority", "P0", "P4", "literal_error"),
    ("priority", "P3", "p1", "literal_error"),
    ("retry.max_attempts", 1, 0, "greater_than_equal"),
    ("retry.max_attempts", 20, 21, "less_than_equal"),
    ("retry.backoff_seconds", 0, -0.001, "greater_than_equal"),
    ("retry.backoff_seconds", 3600, 3600.5, "less_than_equal"),
    ("retry.backoff_multiplier", 1, 0.99, "greater_than_equal"),
    ("retry.backoff_multiplier", 10, 10.01, "less_than_equal"),
    ("retry.max_backoff_seconds", 0, -1, "greater_than_equal"),
    ("retry.max_backoff_seconds", 86_400, 86_401, "less_than_equal"),
    ("timeouts.schedule_to_start_seconds", 5, 4, "greater_than_equal"),
    ("timeouts.schedule_to_start_seconds", 86_400, 86_401, "less_than_equal"),
    ("timeouts.start_to_close_seconds", 5, 4, "greater_than_equal"),
    ("timeouts.start_to_close_seconds", 7 * 86_400, 7 * 86_400 + 1, "less_than_equal"),
    ("timeouts.heartbeat_seconds", 5, 4, "greater_than_equal"),
    ("timeouts.heartbeat_seconds", 3600, 3601, "less_than_equal"),
    ("repo.ref", "m", "", "string_too_short"),
    ("repo.ref", "r" * 255, "r" * 256, "string_too_long"),
    ("repo.ref", "release/1.2", "has space", "string_pattern_mismatch"),
    ("repo.ref", "v1.0", "HEAD~1", "string_pattern_mismatch"),
    ("repo.ref", "feature-x", "a:b", "string_pattern_mismatch"),
    ("idempotency_key", "k", "", "string_too_short"),
    ("idempotency_key", "k" * 200, "k" * 201, "string_too_long"),
    ("idempotency_key", "order-42/v2!", "has space", "string_pattern_mismatch"),
    ("idempotency_key", "abc", "caf\u00e9", "string_pattern_mismatch"),
]


def _base_for(path: str) -> dict[str, Any]:
    if path.startswith("repo."):
        return {**BASE, "repo": {"url": "https://github.com/org/repo.git"}}
    if path.startswith("timeouts.heartbeat"):
        return {**BASE, "timeouts": {"start_to_close_seconds": 7200}}
    if path.startswith("timeouts.start_to_close"):
        return {**BASE, "timeouts": {"heartbeat_seconds": 5}}
    return BASE


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) or len(value) < 12 else f"<{len(value)} chars>"


def _ids(case: tuple[str, Any, Any, str]) -> str:
    path, ok, bad, _ = case
    return f"{path}:{_show(ok)}/{_show(bad)}"


@pytest.mark.parametrize("case", EDGES, ids=[_ids(c) for c in EDGES])
def test_edge_value_accepted(case: tuple[str, Any, Any, str]) -> None:
    path, ok, _, _ = case
    m = Manifest.model_validate(with_(path, ok, _base_for(path)))
    node: Any = m
    for part in path.split("."):
        node = getattr(node, part)
    assert node == ok


@pytest.mark.parametrize("case", EDGES, ids=[_ids(c) for c in EDGES])
def test_value_past_edge_refused_at_its_field(case: tuple[str, Any, Any, str]) -> None:
    path, _, bad, rule = case
    assert_refused_at(with_(path, bad, _base_for(path)), tuple(path.split(".")), rule)


def test_backoff_seconds_zero_is_accepted() -> None:
    m = Manifest.model_validate(with_("retry.backoff_seconds", 0))
    assert m.retry.backoff_seconds == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_backoff_seconds_non_finite_refused(value: float) -> None:
    assert_refused_at(with_("retry.backoff_seconds", value), ("retry", "backoff_seconds"))


def test_heartbeat_5_accepted_and_4_refused() -> None:
    assert Manifest.model_validate(with_("timeouts.heartbeat_seconds", 5)).timeouts.heartbeat_seconds == 5
    assert_refused_at(with_("timeouts.heartbeat_seconds", 4), ("timeouts", "heartbeat_seconds"), "greater_than_equal")


def test_heartbeat_longer_than_the_run_refused() -> None:
    data = with_("timeouts", {"start_to_close_seconds": 30, "heartbeat_seconds": 31})
    errors = refused(data)
    assert [tuple(e["loc"]) for e in errors] == [("timeouts",)]
    assert "heartbeat_seconds" in errors[0]["msg"] and "start_to_close_seconds" in errors[0]["msg"]
    ok = with_("timeouts", {"start_to_close_seconds": 30, "heartbeat_seconds": 30})
    assert Manifest.model_validate(ok).timeouts.heartbeat_seconds == 30


@pytest.mark.parametrize("path", ["retry.max_attempts", "timeouts.heartbeat_seconds", "title", "task"])
def test_wrong_type_refused_at_its_field(path: str) -> None:
    value: Any = "many" if path.startswith(("retry", "timeouts")) else 42
    assert_refused_at(with_(path, value), tuple(path.split(".")))


# -- repo URL forms ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "https://github.com/org/repo",
        "https://git.example.com:8443/group/sub/repo.git",
        "ssh://git@github.com/org/repo.git",
        "ssh://git@git.example.com:2222/org/repo.git",
        "git@github.com:org/repo.git",
        "deploy_user@git.example.com:team/repo",
    ],
)
def test_git_url_forms_accepted(url: str) -> None:
    m = Manifest.model_validate(with_("repo", {"url": url, "ref": "main"}))
    assert m.repo is not None and m.repo.url == url


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/repo.git",
        "http://github.com/org/repo.git",
        "ftp://example.com/repo.git",
        "github.com/org/repo",
        "not a url",
        "",
        "https://github.com",
        "https://github.com/org/re po",
        "git@github.com:",
        "ext::sh -c touch% /tmp/x",
        "--upload-pack=touch@x:y",
        "/srv/repo.git",
        "https://" + "a" * 2048 + ".com/x",
    ],
)
def test_other_url_forms_refused(url: str) -> None:
    assert_refused_at(with_("repo", {"url": url}), ("repo", "url"))


def test_repo_url_required_when_repo_given() -> None:
    assert_refused_at(with_("repo", {"ref": "main"}), ("repo", "url"), "missing")


def test_url_error_message_says_what_is_allowed() -> None:
    msg = refused(with_("repo", {"url": "file:///srv/repo"}))[0]["msg"]
    assert "https://" in msg and "ssh" in msg


# -- deadline -----------------------------------------------------------------------------------------


def test_naive_deadline_refused() -> None:
    errors = refused(with_("deadline", "2026-01-31T12:00:00"))
    assert [tuple(e["loc"]) for e in errors] == [("deadline",)]
    assert "timezone" in errors[0]["msg"]


def test_naive_datetime_object_deadline_refused() -> None:
    assert_refused_at(with_("deadline", datetime(2026, 1, 31, 12, 0)), ("deadline",))


@pytest.mark.parametrize("text", ["2026-01-31T12:00:00Z", "2026-01-31T13:00:00+01:00", "2026-01-31T07:00:00-05:00"])
def test_aware_deadline_normalised_to_utc(text: str) -> None:
    m = Manifest.model_validate(with_("deadline", text))
    assert m.deadline == datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert m.deadline is not None and m.deadline.utcoffset() == timedelta(0)


def test_aware_datetime_object_deadline_normalised() -> None:
    tz = timezone(timedelta(hours=9))
    m = Manifest.model_validate(with_("deadline", datetime(2026, 2, 1, 9, 0, tzinfo=tz)))
    assert m.deadline is not None and m.deadline.tzinfo == UTC and m.deadline.hour == 0


def test_garbage_deadline_refused() -> None:
    assert_refused_at(with_("deadline", "next tuesday"), ("deadline",))


# -- agent args ---------------------------------------------------------------------------------------


def test_args_count_at_limit_accepted_and_past_it_refused() -> None:
    ok = {f"a{i}": "v" for i in range(MAX_ARGS)}
    assert len(Manifest.model_validate(with_("agent.args", ok)).agent.args) == MAX_ARGS
    bad = {f"a{i}": "v" for i in range(MAX_ARGS + 1)}
    assert_refused_at(with_("agent.args", bad), ("agent", "args"), "too_long")


def test_arg_value_size_at_limit_accepted_and_past_it_refused() -> None:
    ok = Manifest.model_validate(with_("agent.args", {"script": "x" * MAX_ARG_CHARS}))
    assert len(ok.agent.args["script"]) == MAX_ARG_CHARS
    errors = refused(with_("agent.args", {"script": "x" * (MAX_ARG_CHARS + 1)}))
    assert tuple(errors[0]["loc"]) == ("agent", "args")
    assert "script" in errors[0]["msg"] and str(MAX_ARG_CHARS) in errors[0]["msg"]


@pytest.mark.parametrize("key", ["Script", "1abc", "with-dash", "a b", "", "x" * 64, "dot.ted"])
def test_arg_key_pattern_refused(key: str) -> None:
    assert_refused_at(with_("agent.args", {key: "v"}), ("agent", "args"))


@pytest.mark.parametrize("key", ["script", "_private", "a1_b2", "x" * 63])
def test_arg_key_pattern_accepted(key: str) -> None:
    assert key in Manifest.model_validate(with_("agent.args", {key: "v"})).agent.args


def test_reserved_arg_task_refused() -> None:
    errors = refused(with_("agent.args", {"task": "override"}))
    assert tuple(errors[0]["loc"]) == ("agent", "args")
    assert "reserved" in errors[0]["msg"]


def test_arg_values_must_be_strings() -> None:
    assert_refused_at(with_("agent.args", {"n": 3}), ("agent", "args", "n"), "string_type")


def test_arg_value_with_shell_metacharacters_kept_verbatim() -> None:
    value = "echo 'hi'; rm -rf / && $(whoami)"
    assert Manifest.model_validate(with_("agent.args", {"script": value})).agent.args["script"] == value


# -- labels -------------------------------------------------------------------------------------------


def test_labels_count_at_limit_accepted_and_past_it_refused() -> None:
    ok = {f"k{i}": "v" for i in range(MAX_LABELS)}
    assert len(Manifest.model_validate(with_("labels", ok)).labels) == MAX_LABELS
    bad = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
    assert_refused_at(with_("labels", bad), ("labels",), "too_long")


def test_label_value_size_at_limit_accepted_and_past_it_refused() -> None:
    assert Manifest.model_validate(with_("labels", {"team": "v" * 256})).labels["team"] == "v" * 256
    errors = refused(with_("labels", {"team": "v" * 257}))
    assert tuple(errors[0]["loc"]) == ("labels",)
    assert "team" in errors[0]["msg"] and "256" in errors[0]["msg"]


@pytest.mark.parametrize("key", ["Team", "-team", "", "a" * 64, "a b"])
def test_label_key_pattern_refused(key: str) -> None:
    assert_refused_at(with_("labels", {key: "v"}), ("labels",))


@pytest.mark.parametrize("key", ["team", "a" * 63, "cost.center", "k8s_ns-1"])
def test_label_key_pattern_accepted(key: str) -> None:
    assert key in Manifest.model_validate(with_("labels", {key: "v"})).labels


def test_label_values_must_be_strings() -> None:
    assert_refused_at(with_("labels", {"team": None}), ("labels", "team"), "string_type")


# -- capabilities -------------------------------------------------------------------------------------


def test_capabilities_count_at_limit_accepted_and_past_it_refused() -> None:
    ok = [f"c{i}" for i in range(MAX_CAPABILITIES)]
    assert len(Manifest.model_validate(with_("requirements.capabilities", ok)).requirements.capabilities) == 16
    bad = [f"c{i}" for i in range(MAX_CAPABILITIES + 1)]
    assert_refused_at(with_("requirements.capabilities", bad), ("requirements", "capabilities"), "too_long")


@pytest.mark.parametrize("cap", ["GPU", "", "-x", "a" * 64, "has space"])
def test_capability_pattern_refused(cap: str) -> None:
    errors = refused(with_("requirements.capabilities", ["linux", cap]))
    assert tuple(errors[0]["loc"])[:2] == ("requirements", "capabilities")


def test_capabilities_deduplicated_and_sorted() -> None:
    m = Manifest.model_validate(with_("requirements.capabilities", ["local", "linux", "local"]))
    assert m.requirements.capabilities == ["linux", "local"]


def test_empty_capabilities_allowed() -> None:
    assert Manifest.model_validate(with_("requirements.capabilities", [])).requirements.capabilities == []


# -- several errors at once ---------------------------------------------------------------------------


def test_every_broken_field_is_reported() -> None:
    data = {**BASE, "title": "", "priority": "P9", "retry": {"max_attempts": 0}, "timeouts": {"heartbeat_seconds": 1}}
    locs = {tuple(e["loc"]) for e in refused(data)}
    assert {("title",), ("priority",), ("retry", "max_attempts"), ("timeouts", "heartbeat_seconds")} <= locs


def test_round_trip_through_json_is_stable() -> None:
    data = {**BASE, "repo": {"url": "git@github.com:o/r.git", "ref": "main"}, "agent": {"profile": "shell",
            "args": {"script": "make test"}}, "deadline": "2026-01-31T12:00:00Z", "labels": {"team": "core"},
            "idempotency_key": "abc-1"}
    m = Manifest.model_validate(data)
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m
