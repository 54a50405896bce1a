"""Imported first by every benchmark that (even indirectly) imports ``lime`` or ``onnx``: running a
script puts its folder first on sys.path, where bench/lime.py and bench/onnx.py would shadow the
real packages."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
