"""Generate the Python gRPC stubs for protos/ into service/layermask_service/proto/.

    python protos/generate.py [--check]

protoc names modules after the proto path (``layermask.v1``), which is the core package's
name; the stubs live in ``layermask_service.proto`` instead, so the imports in the generated
modules are rewritten. ``torchserve/inference.proto`` is the subset of TorchServe's gRPC API that
the TorchServe backend calls. ``--check`` exits 1 if the committed stubs are stale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "service" / "layermask_service" / "proto"
SOURCES = ["layermask/v1/explain.proto", "layermask/v1/backend.proto", "torchserve/inference.proto"]


def generate(out: Path) -> dict[str, str]:
    """Generated files by name, with imports pointing at ``layermask_service.proto``."""
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")
        status = protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp}",
                              f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *SOURCES])
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        files = {}
        generated = [*(Path(tmp) / "layermask" / "v1").glob("*.py*"), *(Path(tmp) / "torchserve").glob("*.py*")]
        for path in sorted(generated):
            text = path.read_text()
            for package in ("layermask.v1", "torchserve"):
                text = text.replace(f"from {package} import", "from layermask_service.proto import")
            files[path.name] = text
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    files = generate(TARGET)
    if args.check:
        stale = [name for name, text in files.items()
                 if not (TARGET / name).is_file() or (TARGET / name).read_text() != text]
        if stale:
            print(f"stale gRPC stubs: {', '.join(stale)}; run `make stubs`", file=sys.stderr)
            return 1
        return 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (TARGET / name).write_text(text)
    (TARGET / "__init__.py").write_text('"""Generated protobuf and gRPC modules (protos/generate.py)."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
