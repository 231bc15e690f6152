#!/usr/bin/env bash
# Proves the GPU path on a machine with an NVIDIA GPU, TensorRT and a driver:
#   pip install -e '.[gpu,dev]'   (not together with the [cpu] extra)
#   scripts/gpu_check.sh [CHECKPOINT]
# Builds FP32, FP16 and INT8 engines of the demo model (or CHECKPOINT), checks each against ONNX Runtime,
# runs the tests marked gpu/trt, benchmarks the FP16 engine against PyTorch, and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT_DIR:-gpu_check}
CKPT=${1:-demo/gapcnn.pt}
mkdir -p "$OUT"

$PY - <<'PYCHECK'
import sys
missing = []
for name in ("tensorrt", "onnxruntime", "torch"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
try:
    from cuda.bindings import runtime  # noqa: F401
except ImportError:
    missing.append("cuda-python")
if missing:
    sys.exit(f"gpu_check: missing {', '.join(missing)}. Install with: pip install -e '.[gpu,dev]'")
from runtime.backends.trt import trt_works
works, why = trt_works()
if not works:
    sys.exit(f"gpu_check: no usable GPU: {why}")
PYCHECK
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader

if [ ! -f "$CKPT" ]; then
  echo "No $CKPT: using a freshly initialized reference GAP CNN (run 'make demo' for the trained one)."
  CKPT="$OUT/gapcnn.pt"
  $PY -c "import torch; from exporter.model import GapCNN; torch.manual_seed(0); torch.save(GapCNN().state_dict(), '$CKPT')"
fi
CALIB="$OUT/calib.npy"
$PY -c "
import numpy as np
from pathlib import Path
d = Path('demo/calib')
if d.is_dir():
    from exporter.precision import load_calibration
    from runtime.metadata import ModelMetadata
    arr = load_calibration(d, ModelMetadata(in_channels=3), size=(64, 64))
else:
    arr = np.random.default_rng(0).standard_normal((64, 3, 64, 64)).astype(np.float32)
np.save('$CALIB', arr)"

gap-export "$CKPT" --dynamic --imgsz 64 -o "$OUT/model.onnx"
PROFILE=(--min 1x3x4x4 --opt 1x3x64x64 --max 8x3x512x512 --timing-cache "$OUT/timing.cache")
gap-build "$OUT/model.onnx" -o "$OUT/model.fp32.plan" "${PROFILE[@]}"
gap-build "$OUT/model.onnx" --precision fp16 -o "$OUT/model.fp16.plan" "${PROFILE[@]}"
gap-build "$OUT/model.onnx" --precision int8 --calib "$CALIB" -o "$OUT/model.int8.plan" "${PROFILE[@]}" || \
  echo "INT8 engine not built (see the message above: on an untrained model top-1 agreement is low)."
gap-run "$OUT/model.fp16.plan" tests 2>/dev/null | head -3 || true

$PY -m pytest -q -m "gpu or trt" -rs tests
gap-bench "$OUT/model.fp16.plan" --shape 1x3x224x224 --shape 8x3x128x128 --torch "$CKPT" --json "$OUT/bench.json"

echo
echo "=== gpu_check summary"
for p in fp32 fp16 int8; do
  if [ -f "$OUT/model.$p.plan.json" ]; then
    $PY -c "import json; m = json.load(open('$OUT/model.$p.plan.json')); print(f\"$p: built {m['precision']} on {m['gpu_name']} (sm {m['compute_capability']}), TensorRT {m['tensorrt_version']}\")"
  else
    echo "$p: not built"
  fi
done
$PY -c "
import json
r = json.load(open('$OUT/bench.json'))
for row in r['results']:
    print(f\"{row['backend']:>10} {'x'.join(map(str, row['shape'])):>14}  median {row['latency_ms']['median']:.3f} ms  {row['throughput_ips']:.0f} img/s\")"
