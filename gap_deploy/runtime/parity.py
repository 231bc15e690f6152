"""Compare a candidate artifact with a reference on the same inputs, shape by shape.

torch-free: the reference is any callable from an NCHW float32 array to logits (PyTorch eager, the
FP32 ONNX model, ...), so export, build and bench report parity the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gap_deploy.runtime.shapes import Shape, format_shape

Infer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """A shape passes when max|a-b| <= atol, ||a-b||/||b|| <= rtol and top-1 agreement >= min_top1.

    With ``atol_relative`` the absolute limit scales with the logits: max|a-b| <= atol * max|b|.
    """

    atol: float
    rtol: float
    min_top1: float = 0.0
    atol_relative: bool = False

    def describe(self) -> str:
        atol = f"atol {self.atol:g}" + (" x max|logit|" if self.atol_relative else "")
        return f"{atol}, rtol {self.rtol:g}" + (f", top-1 >= {self.min_top1:.0%}" if self.min_top1 else "")


#: Tight enough that a wrong graph (a missing layer, a transposed weight) fails by orders of magnitude,
#: loose enough for the summation-order differences between PyTorch and ONNX Runtime kernels.
FP32 = Tolerance(atol=1e-4, rtol=1e-4)
#: FP16 artifacts against FP32 or PyTorch where the model's depth is unknown (gap-bench); the variant gate
#: itself is derived from the model's depth (exporter.precision.fp16_tolerance).
FP16 = Tolerance(atol=0.1, rtol=1e-2, atol_relative=True)
#: INT8 is judged by top-1 agreement on real images (the threshold users set); errors are reported.
INT8 = Tolerance(atol=math.inf, rtol=math.inf, min_top1=0.9)
TOLERANCES = {"fp32": FP32, "fp16": FP16, "int8": INT8}
#: GPU kernels compute differently: other algorithms and summation orders for FP32; TF32 (TensorRT's and
#: cuDNN's default on Ampere and newer, 10-bit mantissa, ~1e-3 relative) only where asked for (gap-build
#: --tf32, recorded as precision "tf32"); gap-build clears it and ort-cuda passes use_tf32=0. FP16 engines
#: accumulate in half precision, and INT8 engines fuse and round Q/DQ differently from ONNX Runtime's CPU
#: kernels. Top-1 on random inputs is not required.
GPU_TOLERANCES = {"fp32": Tolerance(atol=1e-3, rtol=1e-3), "tf32": Tolerance(atol=1e-2, rtol=2e-3),
                  "fp16": Tolerance(atol=5e-2, rtol=5e-3), "int8": Tolerance(atol=math.inf, rtol=0.1)}


def tolerance_for(precision: str, backend: str = "ort-cpu") -> Tolerance:
    """The tolerance an artifact of ``precision`` running on ``backend`` is judged with."""
    from gap_deploy.runtime.backends.table import facts

    backend_facts = facts(backend)
    table = GPU_TOLERANCES if backend_facts.tolerances == "gpu" else TOLERANCES
    if backend_facts.fp32_is_tf32 and precision == "fp32":  # the TensorRT provider has no TF32 switch
        precision = "tf32"
    if precision not in table:  # never judge an artifact with a tolerance meant for another precision
        from gap_deploy.runtime.errors import UsageError

        raise UsageError(f"no tolerance for precision {precision!r}; known: {', '.join(table)}.")
    return table[precision]


@dataclass(frozen=True)
class ShapeParity:
    shape: Shape
    max_abs_err: float
    rel_err: float
    top1_agreement: float
    passed: bool


@dataclass(frozen=True)
class ParityReport:
    reference: str
    candidate: str
    tolerance: Tolerance
    rows: tuple[ShapeParity, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def failures(self) -> list[ShapeParity]:
        return [r for r in self.rows if not r.passed]

    def to_dict(self) -> dict:
        tol = {k: (None if math.isinf(v) else v) for k, v in asdict(self.tolerance).items()}
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "tolerance": tol,
            "passed": self.passed,
            "shapes": [{**asdict(r), "shape": list(r.shape)} for r in self.rows],
        }

    def format_table(self) -> str:
        head = f"{'shape':>16}  {'max abs err':>12}  {'rel err':>10}  {'top-1':>6}  result"
        lines = [f"Parity: {self.candidate} vs {self.reference} ({self.tolerance.describe()})",
                 head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{format_shape(r.shape):>16}  {r.max_abs_err:12.3e}  {r.rel_err:10.3e}  "
                         f"{r.top1_agreement:6.1%}  {'pass' if r.passed else 'FAIL'}")
        return "\n".join(lines)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance,
                    shape: Shape) -> ShapeParity:
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(candidate, dtype=np.float64)
    if ref.shape != out.shape:
        return ShapeParity(tuple(shape), math.inf, math.inf, 0.0, False)
    diff = out - ref
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    norm = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(diff) / norm) if norm > 0 else (0.0 if max_abs == 0 else math.inf)
    top1 = float(np.mean(ref.reshape(len(ref), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)))
    finite = bool(np.isfinite(out).all())
    atol = tolerance.atol * (float(np.max(np.abs(ref))) if ref.size else 0.0) if tolerance.atol_relative \
        else tolerance.atol
    passed = finite and max_abs <= atol and rel <= tolerance.rtol and top1 >= tolerance.min_top1
    return ShapeParity(tuple(int(d) for d in shape), max_abs, rel, top1, passed)


def random_input(shape: Sequence[int], seed: int) -> np.ndarray:
    """Seeded standard-normal NCHW input: the same seed and shape give the same array everywhere.

    Every check input is made here, so the memory a check at ``shape`` needs (the input, and the model's
    activations on it) is checked here first: a size no machine can run is a ResourceError with the numbers,
    not a NumPy allocation error halfway through a command."""
    from gap_deploy.runtime.limits import check_memory

    check_memory(tuple(shape), "a check input")
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


def compare(reference: Infer, candidate: Infer, shapes: Iterable[Shape], tolerance: Tolerance, *,
            reference_name: str, candidate_name: str, seed: int = 0,
            inputs: Callable[[Shape, int], np.ndarray] = random_input) -> ParityReport:
    """Run both callables on the same seeded input per shape and compare their outputs."""
    rows = []
    for i, shape in enumerate(shapes):
        x = inputs(shape, seed + i)
        rows.append(compare_outputs(reference(x), candidate(x), tolerance, shape))
    return ParityReport(reference_name, candidate_name, tolerance, tuple(rows))


def ort_cpu_infer(model) -> Infer:
    """ONNX Runtime on the CPU, for a model in memory (not yet written) or on disk.

    A model in memory that one protobuf cannot hold (2 GiB) is spilled to a temporary folder with external data
    first (runtime.onnx_file.save_onnx).
    """
    import tempfile

    from gap_deploy.runtime._lazy import require
    from gap_deploy.runtime.onnx_file import fits_one_protobuf, save_onnx

    ort = require("onnxruntime", purpose="to verify the exported model")
    if not hasattr(model, "SerializeToString"):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    elif fits_one_protobuf(model):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    else:
        with tempfile.TemporaryDirectory(prefix="gap-verify-") as folder:
            path = save_onnx(model, Path(folder) / "model.onnx")[-1]
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda x: session.run([out_name], {in_name: x})[0]


def default_verify_shapes(channels: int, imgsz: tuple[int, int], min_side: int, *, dynamic: bool,
                          batch: int = 1) -> list[Shape]:
    """The export size, the minimum, odd and non-square sizes, a large size, and batch > 1."""
    h, w = imgsz
    if not dynamic:
        return [(batch, channels, h, w)]

    def at_least_min(a: int, b: int) -> tuple[int, int]:
        return max(a, min_side), max(b, min_side)

    candidates = [
        (1, h, w),
        (1, min_side, min_side),
        (1, *at_least_min(37, 53)),
        (1, *at_least_min(min_side + 1, 2 * min_side + 3)),
        (3, *at_least_min(61, 45)),
        (2, h, w),
        (1, *at_least_min(384, 512)),
    ]
    shapes: list[Shape] = []
    for b, hh, ww in candidates:
        shape = (b, channels, hh, ww)
        if shape not in shapes:
            shapes.append(shape)
    return shapes
