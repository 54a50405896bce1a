"""The deployment checks' tools, installed by ``make deploy-tools`` into a venv of their own.

``.venv-deploy`` at the repository root (deploy/tools-requirements.txt): kubectl (with
kustomize), kubernetes-validate, checkov, hadolint, and a Python with the Prometheus Operator's
typed models (cloudcoil). Tests call them by path; a missing tool fails the test, naming
``make deploy-tools`` (CI installs them, so a skip would hide a broken setup).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_VENV = REPO_ROOT / ".venv-deploy"


def deploy_tool(name: str) -> Path:
    """The executable ``name`` of the deployment-tools venv (e.g. ``kubectl``, ``checkov``, ``python``)."""
    path = DEPLOY_VENV / "bin" / name
    if not path.is_file():
        pytest.fail(f"{path.relative_to(REPO_ROOT)} is missing: run `make deploy-tools`", pytrace=False)
    return path


def run_deploy_tool(name: str, *args: str | Path, stdin: str | None = None, timeout: float = 120,
                    cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``name`` with ``args`` (no check of the exit status), its output captured as text."""
    return subprocess.run([deploy_tool(name), *map(str, args)], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, check=False)


def latest_kubernetes_schema_version() -> str:
    """The newest Kubernetes version kubernetes-validate has strict schemas for, e.g. ``1.37.0``."""
    schemas = sorted(DEPLOY_VENV.glob("lib/python*/site-packages/kubernetes_validate/kubernetes-json-schema/"
                                      "v*-local-strict"))
    versions = [tuple(int(part) for part in match.groups()) for path in schemas
                if (match := re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", path.name))]
    if not versions:
        deploy_tool("kubernetes-validate")  # fails first when the venv is missing altogether
        pytest.fail("kubernetes-validate has no strict schemas in .venv-deploy: run `make deploy-tools`",
                    pytrace=False)
    return ".".join(map(str, max(versions)))
