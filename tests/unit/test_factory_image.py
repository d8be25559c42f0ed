"""The factory image definition: its entry point, how agent CLIs get in, and what stays out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "factory" / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def test_the_entry_point_is_the_factory_runner() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["gigafactory", "factory", "run"]


def test_agent_clis_are_build_arguments() -> None:
    args = {a.split("=")[0] for a in instructions("ARG")}
    assert {"AGENT_NPM_PACKAGES", "AGENT_PIP_PACKAGES", "AGENT_APT_PACKAGES"} <= args
    assert "${AGENT_NPM_PACKAGES}" in DOCKERFILE and "${AGENT_PIP_PACKAGES}" in DOCKERFILE


def test_it_runs_unprivileged_and_bakes_in_no_secret() -> None:
    assert instructions("USER") == ["factory"]
    for env in instructions("ENV"):
        assert not re.search(r"TOKEN|SECRET|KEY|PASSWORD|CONNECTION", env, re.I), env


def test_the_runner_needs_only_what_the_image_installs(tmp_path: Path) -> None:
    """The image installs the package without its dependencies plus httpx and the JSON logger;
    importing the runner must not reach for anything else (an Azure SDK, FastAPI, pydantic)."""
    probe = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'azure', 'fastapi', 'pydantic', 'uvicorn', 'opentelemetry'}:\n"
        "            raise ImportError('not in the factory image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import gigafactory.cli as cli\n"
        "cli.build_parser().parse_args(['factory', 'run'])\n"
        "import gigafactory.factory.runner, gigafactory.logs\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("path", ["gigafactory", "pyproject.toml", "requirements.txt"])
def test_what_the_image_copies_exists(path: str) -> None:
    assert (ROOT / path).exists()
    assert path.split("/")[0] in DOCKERFILE
