"""Pools file and capability routing: covering pools, most specific then cheapest then by
name, clear errors, and argv templates that substitute whole elements only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gigafactory.domain.pools import DEFAULT_POOLS_FILE, PoolSet, Profile, RoutingError, load_pools, parse_pools

CONTAINER = {"job_name": "factory-x", "image": "img:1", "cpu": 0.5, "memory": "1Gi", "replica_timeout_seconds": 600}
PROFILES = {"echo": {"argv": ["echo", "{task}"]}}


def pool(name: str, caps: list[str], *, cost: int = 1, profiles: dict[str, Any] | None = None,
         mode: str = "standing", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "capabilities": caps, "launch_mode": mode, "max_parallel": 2,
                           "cost_rank": cost, "profiles": profiles or PROFILES, **extra}
    if mode == "on-demand" and "container" not in extra:
        doc["container"] = CONTAINER
    return doc


def pools(*docs: dict[str, Any]) -> PoolSet:
    return parse_pools(json.dumps({"pools": list(docs)}))


# -- the shipped file -----------------------------------------------------------------------------


def test_default_pools_file_loads() -> None:
    ps = load_pools()
    assert "local" in ps.names()
    local = ps.get("local")
    assert set(local.capabilities) == {"linux", "local"}
    assert local.launch_mode == "on-demand"
    assert local.container is not None
    assert {"shell", "echo"} <= set(local.profiles)


def test_default_pools_route_the_default_manifest() -> None:
    assert load_pools().route(["linux"], "echo").name == "local"


def test_shell_profile_runs_the_script_with_bash() -> None:
    shell = load_pools().get("local").profiles["shell"]
    assert shell.render("the task", {"script": "make test"}) == ["bash", "-c", "make test"]
    assert shell.render("the task", {})[0:2] == ["bash", "-c"]  # the script has a default


def test_echo_profile_echoes_the_task() -> None:
    assert load_pools().get("local").profiles["echo"].render("hello world", {}) == ["echo", "hello world"]


def test_load_pools_from_another_path(tmp_path: Path) -> None:
    path = tmp_path / "pools.json"
    path.write_text(json.dumps({"pools": [pool("gpu-box", ["linux", "gpu"])]}), encoding="utf-8")
    assert load_pools(path).names() == ["gpu-box"]
    assert load_pools(str(path)).names() == ["gpu-box"]


def test_default_path_is_the_package_file() -> None:
    assert DEFAULT_POOLS_FILE.name == "pools.json"
    assert os.path.exists(DEFAULT_POOLS_FILE)


def test_comment_key_allowed_at_top_level() -> None:
    ps = parse_pools(json.dumps({"$comment": "read by Bicep too", "pools": [pool("a1", ["linux"])]}))
    assert ps.names() == ["a1"]


# -- routing -------------------------------------------------------------------------------------------


def test_route_picks_a_covering_pool() -> None:
    ps = pools(pool("win", ["windows"]), pool("lin", ["linux", "docker"]))
    assert ps.route(["linux"], "echo").name == "lin"
    assert ps.route(["docker", "linux"], "echo").name == "lin"
    assert ps.route(["windows"], "echo").name == "win"


def test_no_capabilities_are_covered_by_any_pool() -> None:
    ps = pools(pool("bb", ["linux", "gpu"]), pool("aa", ["linux"]))
    assert ps.route([], "echo").name == "aa"  # fewest extra capabilities


def test_most_specific_pool_wins_even_when_dearer_or_later_by_name() -> None:
    ps = pools(pool("aaa-big", ["linux", "gpu", "docker"], cost=0), pool("zzz-exact", ["linux", "gpu"], cost=9))
    assert ps.route(["gpu", "linux"], "echo").name == "zzz-exact"


def test_then_lower_cost_rank() -> None:
    ps = pools(pool("aaa-dear", ["linux", "x"], cost=5), pool("zzz-cheap", ["linux", "y"], cost=2))
    assert ps.route(["linux"], "echo").name == "zzz-cheap"


def test_then_name() -> None:
    ps = pools(pool("pool-b", ["linux", "x"], cost=3), pool("pool-a", ["linux", "y"], cost=3))
    assert ps.route(["linux"], "echo").name == "pool-a"
    reversed_ps = pools(pool("pool-a", ["linux", "y"], cost=3), pool("pool-b", ["linux", "x"], cost=3))
    assert reversed_ps.route(["linux"], "echo").name == "pool-a"


def test_pool_must_cover_every_capability() -> None:
    ps = pools(pool("lin", ["linux"]), pool("gpu", ["gpu"]))
    with pytest.raises(RoutingError):
        ps.route(["gpu", "linux"], "echo")


def test_no_match_lists_every_pool() -> None:
    ps = pools(pool("lin", ["linux"]), pool("win", ["windows"], profiles={"ps": {"argv": ["pwsh", "{task}"]}}),
               pool("mac", ["macos"]))
    with pytest.raises(RoutingError) as info:
        ps.route(["gpu"], "echo")
    msg = str(info.value)
    for name in ("lin", "win", "mac"):
        assert name in msg
    assert "gpu" in msg and "windows" in msg and "ps" in msg
    assert "requirements.capabilities" in msg


def test_profile_not_offered_by_a_covering_pool_is_an_error() -> None:
    ps = pools(pool("lin", ["linux"]), pool("gpu", ["linux", "gpu"], profiles={"coder": {"argv": ["c", "{task}"]}}))
    assert ps.route(["linux"], "coder").name == "gpu"  # the only pool offering the profile
    with pytest.raises(RoutingError) as info:
        ps.route(["linux"], "codex")
    assert "codex" in str(info.value) and "agent.profile" in str(info.value)


def test_routing_error_is_a_value_error() -> None:
    assert issubclass(RoutingError, ValueError)


def test_get_unknown_pool_raises_key_error() -> None:
    with pytest.raises(KeyError):
        pools(pool("lin", ["linux"])).get("nope")


# -- invalid pools files ---------------------------------------------------------------------------------


def _refused(doc: Any) -> str:
    with pytest.raises((ValidationError, ValueError)) as info:
        parse_pools(json.dumps(doc))
    return str(info.value)


def test_duplicate_names_refused() -> None:
    assert "unique" in _refused({"pools": [pool("same", ["linux"]), pool("same", ["gpu"])]})


def test_on_demand_without_container_refused() -> None:
    doc = pool("od", ["linux"], mode="standing")
    doc["launch_mode"] = "on-demand"
    assert "container" in _refused({"pools": [doc]})


def test_standing_without_container_accepted() -> None:
    assert pools(pool("st", ["linux"], mode="standing")).get("st").container is None


@pytest.mark.parametrize("name", ["A-pool", "1pool", "pool-", "p", "x" * 33, "has_underscore", "has space", ""])
def test_bad_pool_names_refused(name: str) -> None:
    assert "name" in _refused({"pools": [pool(name, ["linux"])]})


@pytest.mark.parametrize("name", ["ab", "gpu-2", "x" * 32])
def test_good_pool_names_accepted(name: str) -> None:
    assert pools(pool(name, ["linux"])).names() == [name]


@pytest.mark.parametrize(
    ("mutate", "word"),
    [
        (lambda d: d.update(capabilities=[]), "capabilities"),
        (lambda d: d.update(max_parallel=0), "max_parallel"),
        (lambda d: d.update(max_parallel=1001), "max_parallel"),
        (lambda d: d.update(launch_mode="sometimes"), "launch_mode"),
        (lambda d: d.update(profiles={}), "profiles"),
        (lambda d: d.update(profiles={"e": {"argv": []}}), "argv"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d.update(profiles={"e": {"argv": ["x"], "shell": True}}), "shell"),
        (lambda d: d.update(container={**CONTAINER, "memory": "1GB"}), "memory"),
        (lambda d: d.update(container={**CONTAINER, "cpu": 0}), "cpu"),
        (lambda d: d.update(cost_rank=-1), "cost_rank"),
    ],
    ids=["no-caps", "parallel-0", "parallel-1001", "mode", "no-profiles", "empty-argv", "extra-pool-field",
         "extra-profile-field", "memory-unit", "cpu-zero", "negative-cost"],
)
def test_invalid_pool_fields_refused(mutate: Any, word: str) -> None:
    doc = pool("ok-pool", ["linux"], mode="on-demand")
    mutate(doc)
    assert word in _refused({"pools": [doc]})


def test_empty_pool_list_refused() -> None:
    assert "pools" in _refused({"pools": []})


def test_not_json_refused() -> None:
    with pytest.raises(ValueError):
        parse_pools("{not json")


# -- profile rendering ----------------------------------------------------------------------------------


def test_render_substitutes_whole_elements() -> None:
    prof = Profile(argv=["agent", "--repo", "{repo}", "--", "{task}"])
    assert prof.render("fix it", {"repo": "r"}) == ["agent", "--repo", "r", "--", "fix it"]


@pytest.mark.parametrize("element", ["--script={script}", "{script}.sh", "pre{script}", "{ script }", "{Script}",
                                     "{script}{script}", "{{script}}"])
def test_placeholder_inside_a_longer_string_stays_literal(element: str) -> None:
    prof = Profile(argv=["run", element])
    assert prof.render("t", {"script": "EVIL"}) == ["run", element]


@pytest.mark.parametrize("value", ["two words", "it's \"quoted\"", "a; rm -rf /", "$(id) `id` | cat > x", "",
                                   "line\nbreak", "{task}", "--flag"])
def test_a_value_stays_one_element_verbatim(value: str) -> None:
    prof = Profile(argv=["bash", "-c", "{script}", "tail"])
    out = prof.render("t", {"script": value})
    assert out == ["bash", "-c", value, "tail"]
    assert len(out) == 4


def test_task_is_always_available_and_cannot_be_shadowed_by_args_or_defaults() -> None:
    prof = Profile(argv=["echo", "{task}"], defaults={"task": "default"})
    assert prof.render("real task", {"task": "from args"}) == ["echo", "real task"]


def test_missing_arg_is_an_error_naming_it() -> None:
    prof = Profile(argv=["agent", "{model}", "{task}"])
    with pytest.raises(ValueError) as info:
        prof.render("t", {})
    assert "agent.args.model" in str(info.value)


def test_defaults_fill_missing_args_and_args_override_them() -> None:
    prof = Profile(argv=["agent", "{model}"], defaults={"model": "small"})
    assert prof.render("t", {}) == ["agent", "small"]
    assert prof.render("t", {"model": "large"}) == ["agent", "large"]


def test_extra_args_are_ignored() -> None:
    prof = Profile(argv=["echo", "{task}"])
    assert prof.render("t", {"unused": "x"}) == ["echo", "t"]


def test_render_does_not_mutate_the_template() -> None:
    prof = Profile(argv=["echo", "{task}"])
    prof.render("first", {})
    assert prof.argv == ["echo", "{task}"]
    assert prof.render("second", {}) == ["echo", "second"]


@pytest.mark.parametrize(
    ("codes", "exit_code", "retryable"),
    [(None, 1, True), (None, 0, False), (None, 137, True), ([75], 75, True), ([75], 1, False), ([], 1, False)],
)
def test_retryable_exit_codes(codes: list[int] | None, exit_code: int, retryable: bool) -> None:
    assert Profile(argv=["x"], retryable_exit_codes=codes).is_retryable(exit_code) is retryable
