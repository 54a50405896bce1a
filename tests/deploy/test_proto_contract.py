"""The layermask.v1 API's contract: ``buf lint`` and ``buf breaking`` against the released API.

buf (PyPI ``buf-bin``) is one of the deployment tools (``make deploy-tools``); ``buf.yaml`` at the
repository root says which rules apply and why four lint findings on the shipped API are kept.
The baseline, ``protos/baseline/layermask-v1.binpb``, is the image of ``protos/layermask`` as it was
before issue #14 added ``method``; a change that breaks wire or JSON compatibility with it fails here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers.deploy_tools import REPO_ROOT, run_deploy_tool

BASELINE = REPO_ROOT / "protos" / "baseline" / "layermask-v1.binpb"
EXPLAIN_PROTO = Path("layermask") / "v1" / "explain.proto"


def _module_copy(tmp_path: Path, config: str = "version: v2\nbreaking:\n  use: [WIRE_JSON]\n") -> Path:
    """``protos/layermask`` copied to a module of its own (same file paths as the baseline's)."""
    shutil.copytree(REPO_ROOT / "protos" / "layermask", tmp_path / "layermask")
    (tmp_path / "buf.yaml").write_text(config)
    return tmp_path


def _edit(module: Path, old: str, new: str) -> None:
    path = module / EXPLAIN_PROTO
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in explain.proto exactly once"
    path.write_text(text.replace(old, new))


def test_buf_lint_passes() -> None:
    result = run_deploy_tool("buf", "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_lint_finding_is_still_there(tmp_path: Path) -> None:
    """The ``ignore_only`` entries of buf.yaml name findings the shipped API really has, and no others."""
    ignored = yaml.safe_load((REPO_ROOT / "buf.yaml").read_text())["lint"]["ignore_only"]
    module = _module_copy(tmp_path, "version: v2\nlint:\n  use: [STANDARD]\n")
    result = run_deploy_tool("buf", "lint", "--error-format", "config-ignore-yaml", cwd=module)
    assert result.returncode != 0
    found = yaml.safe_load(result.stdout)["lint"]["ignore_only"]
    assert found == {rule: [path.removeprefix("protos/") for path in paths] for rule, paths in ignored.items()}


def test_buf_breaking_passes_against_the_released_api() -> None:
    result = run_deploy_tool("buf", "breaking", "--against", BASELINE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_adding_a_field_is_not_breaking(tmp_path: Path) -> None:
    module = _module_copy(tmp_path)
    _edit(module, "  Adaptive adaptive = 15;", "  Adaptive adaptive = 15;\n  string note = 99;")
    result = run_deploy_tool("buf", "breaking", "--against", BASELINE, cwd=module)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("old", "new", "finding"), [
    ("optional int32 num_samples = 5;", "optional int32 sample_count = 5;",
     r'Field "5" on message "ExplainRequest" changed name from "num_samples" to "sample_count"'),
    ("optional int32 top_labels = 10;", "optional int32 top_labels = 16;",
     r'Previously present field "10" with name "top_labels" on message "ExplainRequest" was deleted'),
    ("MASKING_GREY = 2;", "MASKING_GRAY = 2;",
     r'Enum value "2" on enum "Masking" changed name from "MASKING_GREY" to "MASKING_GRAY"'),
    ("  int64 seed = 4;\n  int32 num_samples = 5;", "  string seed = 4;\n  int32 num_samples = 5;",
     r'Field "4" with name "seed" on message "ExplainResponse" changed type from "int64" to "string"'),
])
def test_a_breaking_change_fails(tmp_path: Path, old: str, new: str, finding: str) -> None:
    module = _module_copy(tmp_path)
    _edit(module, old, new)
    result = run_deploy_tool("buf", "breaking", "--against", BASELINE, cwd=module)
    assert result.returncode != 0
    assert re.search(finding, result.stdout), result.stdout
