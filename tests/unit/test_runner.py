"""The factory runner's own pieces: the shallow clone of a job's repo, the result file, the log tail."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gigafactory.factory import runner


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@example.invalid", "HOME": str(cwd), "PATH": os.environ["PATH"]})


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "README").write_text("main\n")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "one", cwd=repo)
    git("checkout", "-q", "-b", "feature", cwd=repo)
    (repo / "FEATURE").write_text("feature\n")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "two", cwd=repo)
    git("checkout", "-q", "main", cwd=repo)
    return repo


def test_clone_checks_out_the_requested_ref_shallowly(origin: Path, tmp_path: Path) -> None:
    into = tmp_path / "work" / "repo"
    runner.clone({"url": f"file://{origin}", "ref": "feature"}, into, tmp_path / "clone.log")
    assert (into / "FEATURE").read_text() == "feature\n"
    depth = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=into, capture_output=True, text=True)
    assert depth.stdout.strip() == "1"


def test_clone_of_a_missing_ref_fails_loudly(origin: Path, tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        runner.clone({"url": f"file://{origin}", "ref": "nope"}, tmp_path / "r", tmp_path / "clone.log")
    assert "nope" in (tmp_path / "clone.log").read_text()


def test_the_result_file_is_read_defensively(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    assert runner.read_result(result) == {}
    result.write_text("{not json")
    assert runner.read_result(result) == {}
    result.write_text(json.dumps({"summary": "ok", "pr_url": "javascript:alert(1)", "artifacts": ["a", 2],
                                  "extra": True}))
    assert runner.read_result(result) == {"summary": "ok", "artifacts": ["a", "2"]}


def test_the_log_tail_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b"x" * 10_000 + b"END")
    tail = runner.tail(log)
    assert tail.endswith("END") and len(tail) == runner.LOG_TAIL_BYTES
