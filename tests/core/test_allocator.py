"""The allocator switch: on at the first explanation or masked forward pass, unless the process opts out.

Each case runs in a fresh interpreter, since the switch lasts for the life of a process. Besides
``freed_memory_kept()``, each checks the effect itself: with glibc's defaults a 64 MiB array is
``mmap``ed (``mallinfo2().hblkhd`` grows by its size); with freed memory kept it comes from the heap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layermask import allocator

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import ctypes, json, sys
import numpy as np
import layermask
from layermask.allocator import freed_memory_kept
from tests.helpers.tiny_model import tiny_model

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_by_a_64_mib_array():
    before = libc.mallinfo2().hblkhd
    block = np.ones(64 * 2**20, dtype=np.uint8)
    grown = libc.mallinfo2().hblkhd - before
    del block
    return grown >= 64 * 2**20

state = {"after_import": freed_memory_kept()}
model, image = tiny_model(), np.full((300, 400, 3), 200, dtype=np.uint8)
action = sys.argv[1]
if action == "explain":
    layermask.explain(model, image, segmentation="grid", num_samples=8, masking="grey")
elif action == "explain-opt-out":
    layermask.explain(model, image, segmentation="grid", num_samples=8, masking="grey", keep_freed_memory=False)
    layermask.explain(model, image, segmentation="grid", num_samples=8)  # later ones do not switch it on
elif action == "explain-force":
    layermask.explain(model, image, segmentation="grid", num_samples=8, keep_freed_memory=True)
elif action == "forward":
    import torch
    masked = layermask.layer_mask(model.network)
    masked(torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
state["after"] = freed_memory_kept()
state["mmapped"] = mmapped_by_a_64_mib_array()
print(json.dumps(state))
"""


def probe(action: str, **environment: str) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if k != "LAYERMASK_KEEP_FREED_MEMORY"} | environment
    result = subprocess.run([sys.executable, "-c", PROBE, action], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def test_import_changes_nothing_and_the_first_explain_switches_it_on() -> None:
    assert probe("nothing") == {"after_import": False, "after": False, "mmapped": True}
    assert probe("explain") == {"after_import": False, "after": True, "mmapped": False}


def test_the_first_masked_forward_switches_it_on() -> None:
    assert probe("forward") == {"after_import": False, "after": True, "mmapped": False}


def test_the_environment_opts_the_process_out() -> None:
    assert probe("explain", LAYERMASK_KEEP_FREED_MEMORY="0") == {"after_import": False, "after": False,
                                                                  "mmapped": True}


@pytest.mark.parametrize(("value", "opted_out"), [("0", True), ("false", True), (" OFF ", True), ("no", True),
                                                  ("1", False), ("", False), ("yes", False)])
def test_the_environment_values(monkeypatch: pytest.MonkeyPatch, value: str, opted_out: bool) -> None:
    monkeypatch.setenv("LAYERMASK_KEEP_FREED_MEMORY", value)
    assert allocator._opted_out_by_environment() is opted_out


def test_the_argument_opts_out_or_forces() -> None:
    assert probe("explain-opt-out") == {"after_import": False, "after": False, "mmapped": True}
    assert probe("explain-force", LAYERMASK_KEEP_FREED_MEMORY="0")["after"] is True
