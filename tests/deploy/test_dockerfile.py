"""The Dockerfile and the image's lock, checked without building: hadolint, checkov, pins in sync."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.helpers.deploy_tools import REPO_ROOT, run_deploy_tool

pytestmark = pytest.mark.deploy
LOCK = REPO_ROOT / "deploy" / "image" / "requirements.lock"


def test_hadolint_clean() -> None:
    result = run_deploy_tool("hadolint", "--failure-threshold", "info", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_clean_on_dockerfile() -> None:
    result = run_deploy_tool("checkov", "--skip-download", "--quiet", "--compact", "--framework", "dockerfile",
                             "--file", "Dockerfile", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed checks" in result.stdout, result.stdout


def test_every_ignored_hadolint_rule_has_its_reason() -> None:
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("=", 1)[1].strip()
            assert rule in lines[number - 1] or rule in lines[number - 2], f"no reason given for {rule}"


def test_lock_pins_what_pyproject_pins() -> None:
    """`make image-lock` after a pin changes: the image must install the versions the project tests."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["torchserve"],
              *project["optional-dependencies"]["gpu"]]
    locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:[0-9a-f]{64}$", LOCK.read_text(), re.M))
    locked = {name.lower().replace("_", "-"): version for name, version in locked.items()}
    for requirement in wanted:
        name, version = requirement.split("==")
        assert locked.get(name.lower()) == version, f"{name}: pyproject {version}, lock {locked.get(name.lower())}"
