#!/usr/bin/env bash
# One prepared command for a single NVIDIA GPU (issue #6): parity on CUDA and ResNet-50 throughput.
# Runs with the project's .venv, or with the python on PATH where the machine provides torch with
# CUDA (set PYTHON). Writes the report to $1 (default gpu_report.md). Meant to finish within 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 env PYTHONPATH="$PWD:$PWD/service" "$PYTHON" bench/gpu_check.py "${1:-gpu_report.md}"
