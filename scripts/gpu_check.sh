#!/usr/bin/env bash
# Proves the GPU path on a machine with an NVIDIA GPU, the full TensorRT, cuda-python and PyTorch CUDA:
#   pip install -e '.[gpu-cu13,test]'   (or gpu-cu12,test; never together with the [cpu] extra)
#   scripts/gpu_check.sh [CHECKPOINT] [--json FILE] [--out DIR]
# Every step must pass: the exit code is 0 only then. Without a GPU it stops at once (exit 2).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"
