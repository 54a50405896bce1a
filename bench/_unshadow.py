"""Imported first by the benchmarks named like packages they use (lime.py, onnx.py): running a
script puts its folder first on sys.path, where those files would shadow the real packages."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
