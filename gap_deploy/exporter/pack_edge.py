"""gap-pack's phone and board targets: ncnn (from the ONNX, by pnnx), LiteRT, ExecuTorch and Core ML (from the
PyTorch model, by litert-torch, ExecuTorch's exporter and coremltools).

Every target is FP32 unless FP16 is asked for, whatever its converter's default (pnnx stores FP16 weights and
ncnn computes in FP16 unless told not to; coremltools' ML programs compute in FP16 by default). Each bundle is
opened by gap-deploy's runtime the way an app's code would open it (``runtime.load(bundle)``: its own runtime,
its model.json) and compared with the FP32 ONNX at the sweep's shapes, the smallest and the largest accepted
included, before it is published; a Core ML bundle cannot be executed on Linux, so its reloaded program is
checked instead (inputs, shape ranges, the precision of every op) and its report says it was not executed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from gap_deploy.runtime.artifact import ArtifactSpec
from gap_deploy.runtime.errors import ExportError, UsageError, first_line
from gap_deploy.runtime.files import sha256_file
from gap_deploy.runtime.parity import ParityReport, compare, ort_cpu_infer, tolerance_for
from gap_deploy.runtime.shapes import Shape, format_shape

#: targets converted from the PyTorch model (the ONNX cannot feed their converters)
TORCH_TARGETS = ("litert", "executorch", "coreml")
#: targets with a --precision fp16 choice (LiteRT bundles are FP32 only here: litert-torch has no FP16 option
#: without TensorFlow's converter)
FP16_TARGETS = ("openvino", "ncnn", "executorch", "coreml")
PNNX_TIMEOUT_S = 600
DEFAULT_MAX_SIDE = 640
DEFAULT_MAX_BATCH = 4
#: the backend that runs each target's bundle here
BACKEND = {"ncnn": "ncnn-cpu", "litert": "litert-cpu", "executorch": "et-xnnpack"}


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Send what a converter prints (Python and C++, file descriptors 1 and 2) to a temporary file; the list
    yielded gets its last lines, for an error message."""
    tail: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sys.stdout), contextlib.redirect_stderr(sys.stderr):
                yield tail
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            log.seek(0)
            text = log.read().decode("utf-8", "replace").splitlines()
            tail += [line for line in text if line.strip()][-8:]


def _converter_failed(what: str, exc: BaseException, tail: list[str]) -> ExportError:
    return ExportError(f"{what} failed: {first_line(exc)}", note="\n".join(tail[-8:]) or None,
                       hint="gap-pack --target ort (ONNX Runtime Mobile) takes every model gap-export writes.")


def static_hint(spec: ArtifactSpec) -> str:
    """The next step where a converter cannot keep the sides dynamic: a static program of the export size."""
    meta = spec.metadata
    h, w = meta.export_height or 224, meta.export_width or 224
    return (f"a static program of one size packs: add --fixed 1x{spec.channels}x{h}x{w} (the export size; one bundle "
            "per size you serve, gap-tune --buckets chooses them) to this gap-pack command; --target ort, openvino or "
            "ncnn take any size.")


def _dynamic_failed(what: str, exc: BaseException, tail: list[str], spec: ArtifactSpec) -> ExportError:
    """A conversion with dynamic sides that failed: its cause in the user's terms where it is a known class
    (torch.export's guards on the sides, litert-torch's missing lowering of size arithmetic), and the static
    program that packs instead."""
    text = str(exc)
    cause = first_line(exc)
    if "Constraints violated" in text:
        cause = ("torch.export cannot keep height and width dynamic for every size: the model's output size depends "
                 "on a side's remainder (guards such as a ceil-mode pool or an odd-size crop make)")
        accepted = _accepted_sides(text)
        if accepted:
            cause += f"; it would accept only sides {accepted}"
    elif "Lowering not found" in text:
        op = text.split("Lowering not found:", 1)[1].strip().splitlines()[0]
        cause = (f"litert-torch cannot lower the size arithmetic of a dynamic input ({op}: an output size computed "
                 "from the input's side, as a strided patchify stem or a pool makes)")
    return ExportError(f"{what} failed: {cause}.", note="\n".join([first_line(exc), *tail[-8:]]),
                       hint=static_hint(spec))


def _accepted_sides(text: str) -> str | None:
    """torch.export's "Suggested fixes" for the sides (e.g. ``height = 16*_height - 1`` with
    ``_height = Dim('_height', min=1, max=40)``) as the sides they allow: "16k-1 (15 to 639)"."""
    import re

    fix = re.search(r"height = (\d+)\*_height( [-+] \d+)?", text)
    bounds = re.search(r"_height = Dim\('_height', min=(\d+), max=(\d+)\)", text)
    if not (fix and bounds):
        return None
    step, offset = int(fix.group(1)), int((fix.group(2) or "0").replace(" ", ""))
    low, high = int(bounds.group(1)), int(bounds.group(2))
    return (f"{step}k{offset:+d}" if offset else f"{step}k") + f" ({step * low + offset} to {step * high + offset})"


def _dims(spec: ArtifactSpec, max_side: int, max_batch: int):
    """torch.export's dynamic dims: batch 1..max_batch, height and width from the model's minimum to max_side."""
    import torch

    meta = spec.metadata
    low_h, low_w = max(2, meta.min_height), max(2, meta.min_width)  # torch.export specializes sizes 0 and 1
    if max_side < max(low_h, low_w) + 2:
        raise UsageError(f"--max-side {max_side} is not above the model's minimum input size "
                         f"{meta.min_height}x{meta.min_width} (it must exceed it by 2 or more).")
    return {0: torch.export.Dim("batch", min=1, max=max_batch), 2: torch.export.Dim("height", min=low_h, max=max_side),
            3: torch.export.Dim("width", min=low_w, max=max_side)}


#: the smallest batch bound torch.export keeps dynamic: with the example's batch 2 as the bound, a batch of 1
#: is refused by the lowered program (measured with ExecuTorch 1.5.1: execute() fails with error 0x10)
MIN_BATCH_BOUND = 3


def _example(spec: ArtifactSpec, batch: int, max_side: int = DEFAULT_MAX_SIDE):
    """A sample input for the converters: batch 2 (a batch of 1 is specialized away), the export size, kept
    strictly inside the dynamic range (a sample on a bound fixes the program to it)."""
    import torch

    meta = spec.metadata
    side_h = min(max(meta.export_height or 64, meta.min_height + 1), max_side - 1)
    side_w = min(max(meta.export_width or 64, meta.min_width + 1), max_side - 1)
    return torch.zeros(batch, spec.channels, side_h, side_w)


#: targets whose --fixed shape makes a static program (one shape, no dynamic dim): one per gap-tune bucket
STATIC_TARGETS = ("litert", "executorch")

#: the largest size an unbounded target (ncnn, LiteRT) is checked at, written in model.json ("largest_checked")
UNBOUNDED_CHECK_SIDE = 640


def check_shapes(spec: ArtifactSpec, base: list[Shape], max_side: int | None, max_batch: int | None) -> list[Shape]:
    """The sweep, plus the largest input a bounded target accepts (its bound is measured, not assumed); an
    unbounded one is checked up to UNBOUNDED_CHECK_SIDE."""
    meta = spec.metadata
    shapes = [(1, spec.channels, meta.min_height, meta.min_width)]  # the smallest the model accepts
    shapes += [s for s in base if (max_side is None or max(s[2], s[3]) <= max_side)
               and s[2] >= meta.min_height and s[3] >= meta.min_width]
    side = UNBOUNDED_CHECK_SIDE if max_side is None else max_side
    shapes.append((1, spec.channels, max(side, meta.min_height), max(side, meta.min_width)))
    if max_batch is not None:
        side = max(spec.metadata.min_height, spec.metadata.min_width)
        shapes.append((max_batch, spec.channels, max(side, 32), max(side, 32)))
    return list(dict.fromkeys(shapes))


# --- conversion, one function per target: each writes its files into ``out`` and returns their names -------------

def convert_ncnn(source: Path, out: Path, spec: ArtifactSpec, precision: str, log) -> tuple[list[str], dict]:
    """pnnx (its executable, from the pnnx package) converts the ONNX; two input shapes make H and W dynamic.
    ``fp16=0`` keeps FP32 weights (pnnx's default is fp16=1)."""
    from gap_deploy.runtime._lazy import require

    pnnx = require("pnnx", purpose="for gap-pack --target ncnn", hint="pip install 'gap-deploy[ncnn]'")
    meta, c = spec.metadata, spec.channels
    h, w = max(64, meta.min_height), max(64, meta.min_width)
    h2, w2 = max(37, meta.min_height + 1), max(53, meta.min_width + 3)
    work = out / ".pnnx"
    work.mkdir()
    onnx_copy = work / "model.onnx"
    shutil.copyfile(source, onnx_copy)
    command = [pnnx.EXEC_PATH, onnx_copy.name, f"inputshape=[1,{c},{h},{w}]", f"inputshape2=[1,{c},{h2},{w2}]",
               "device=cpu", f"fp16={int(precision == 'fp16')}"]
    log(f"Converting {source.name} to ncnn with pnnx ({precision}) ...")
    try:
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"pnnx did not finish converting {source.name} in {PNNX_TIMEOUT_S} s.") from None
    param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-8:]
        raise ExportError(f"pnnx could not convert {source.name} to ncnn (exit {done.returncode}).",
                          note="\n".join(tail) or None,
                          hint="gap-pack --target ort takes every model gap-export writes.")
    shutil.move(param, out / "model.param")
    shutil.move(weights, out / "model.bin")
    shutil.rmtree(work)
    return ["model.param", "model.bin"], {"pnnx": getattr(pnnx, "__version__", "unknown")}


def convert_litert(module, out: Path, spec: ArtifactSpec, precision: str, log,
                   static: Shape | None = None) -> tuple[list[str], dict]:
    """litert-torch, with dynamic batch, height and width; a model whose dynamic batch it cannot lower (it fails
    on ``torch.flatten(x, 1)`` with one) is converted with batch 1, which the runtime feeds image by image.
    ``static``: one shape, no dynamic dim (gap-pack --fixed: a static program, what LiteRT runs fastest and what
    gap-tune --buckets ships one of per bucket)."""
    from gap_deploy.runtime._lazy import require

    with captured_output():  # its imports print absl, oneDNN and torchao start-up lines
        litert_torch = require("litert_torch", purpose="for gap-pack --target litert",
                               hint="pip install 'gap-deploy[litert]' -c constraints/cpu.txt")
    dims = _dims(spec, 4096, 1024)  # torch.export's bounds only: the .tflite's signature has none
    path, notes = out / "model.tflite", {}
    log("Converting the PyTorch model to LiteRT with litert-torch"
        + (f" (static, {format_shape(static)})" if static else "") + " ...")
    import torch.fx.experimental._config as fx_config  # its patch() is installed when it is imported

    # a static program needs none of torch.export's dynamic-shape settings
    dynamic = contextlib.nullcontext() if static else cast(Any, fx_config).patch(backed_size_oblivious=True)
    with captured_output() as tail, dynamic:
        if static:
            import torch

            try:
                converted = litert_torch.convert(module, (torch.zeros(tuple(static)),))
            except Exception as exc:
                raise _converter_failed("litert-torch's static conversion", exc, tail) from None
        else:
            converted = _convert_litert_dynamic(litert_torch, module, spec, dims, notes, tail)
        try:
            converted.export(str(path))
        except Exception as exc:
            raise _converter_failed("writing the LiteRT model", exc, tail) from None
    import litert_torch as lt

    return ["model.tflite"], {"litert_torch": getattr(lt, "__version__", "unknown"), **notes}


def _convert_litert_dynamic(litert_torch, module, spec: ArtifactSpec, dims, notes: dict, tail: list[str]):
    """Dynamic batch, height and width; where litert-torch cannot lower a dynamic batch, batch 1 (said in
    ``notes``)."""
    try:
        return litert_torch.convert(module, (_example(spec, 2),), dynamic_shapes=(dims,))
    except Exception as exc:
        notes["fixed_batch"] = ("litert-torch could not lower a dynamic batch (it fails on torch.flatten(x, 1) "
                                f"with one: {first_line(exc)[:120]}); batch 1, fed image by image")
    try:
        return litert_torch.convert(module, (_example(spec, 1),), dynamic_shapes=({2: dims[2], 3: dims[3]},))
    except Exception as exc2:
        raise _dynamic_failed("litert-torch's conversion", exc2, tail, spec) from None


def convert_executorch(module, out: Path, spec: ArtifactSpec, precision: str, log, *, max_side: int,
                       max_batch: int, static: Shape | None = None) -> tuple[list[str], dict]:
    """torch.export with dynamic batch (1..max_batch), height and width (minimum..max_side), lowered to XNNPACK.
    The example has batch 2 and the export runs with ``backed_size_oblivious`` (a batch-1 example fixes the
    batch, and torch.export otherwise adds a guard excluding sizes of 4 to 7 after two 2x2 pools). FP16 is a
    half-precision copy of the module, exported with a half example: XNNPACK runs it in FP16 and the program
    takes and gives float16 (the runtime converts). ``static``: one shape and no dynamic dim (gap-pack --fixed):
    the program ExecuTorch plans exactly, one per gap-tune bucket."""
    from gap_deploy.runtime._lazy import require

    require("executorch.exir", purpose="for gap-pack --target executorch",
            hint="pip install 'gap-deploy[executorch]' -c constraints/cpu.txt")
    import torch
    import torch.fx.experimental._config as fx_config
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    dims = None if static else _dims(spec, max_side, max_batch)
    example = torch.zeros(tuple(static)) if static else _example(spec, 2, max_side)
    if precision == "fp16":
        import copy

        module, example = copy.deepcopy(module).half(), example.half()
    log(f"Exporting the PyTorch model for ExecuTorch (XNNPACK, {precision}; "
        + (f"static, {format_shape(static)}" if static else f"batch <= {max_batch}, sides <= {max_side}") + ") ...")
    with captured_output() as tail:
        try:
            if static:
                program = torch.export.export(module, (example,))
            else:
                with cast(Any, fx_config).patch(backed_size_oblivious=True):
                    program = torch.export.export(module, (example,), dynamic_shapes=(dims,))
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        except Exception as exc:
            if static:
                raise _converter_failed("ExecuTorch's export", exc, tail) from None
            raise _dynamic_failed("ExecuTorch's export", exc, tail, spec) from None
    (out / "model.pte").write_bytes(lowered.buffer)
    import executorch

    versions: dict[str, Any] = {"executorch": getattr(executorch, "__version__", "unknown")}
    side = min(max_side, DEBUG_MAX_SIDE)
    try:
        with captured_output(), cast(Any, fx_config).patch(backed_size_oblivious=True):
            if static:
                debug, paths = every_output_program(module, example, None)
            else:
                debug, paths = every_output_program(module, _example(spec, 2, side).to(example.dtype),
                                                    _dims(spec, side, MIN_BATCH_BOUND))
    except Exception as exc:  # the bundle is whole without it; gap-debug then says it cannot compare its layers
        log(f"note: no debug program for gap-debug (every module's output): {first_line(exc)}")
        return ["model.pte"], versions
    (out / DEBUG_PROGRAM).write_bytes(debug)
    versions["debug_program"] = {"file": DEBUG_PROGRAM, "outputs": paths, "max_side": None if static else side}
    return ["model.pte", DEBUG_PROGRAM], versions


#: the ExecuTorch bundle's program for gap-debug: the same module, every module's output a program output
DEBUG_PROGRAM = "model.debug.pte"
#: the largest side model.debug.pte is planned for: ExecuTorch plans memory for every output it returns at once
#: (at the largest input), so its bound is kept below the bundle's
DEBUG_MAX_SIDE = 256


def every_output_program(module, example, dims) -> tuple[bytes, list[str]]:
    """``module`` exported with every module's output as an output of the program (forward hooks, which
    torch.export traces), lowered to XNNPACK like model.pte, and the module path of each output after the
    model's own (the first). A module called more than once gives its last call. ExecuTorch returns a program's
    outputs, so gap-debug reads each module's output from ExecuTorch's own run; an output that is returned is
    not fused into what reads it (a convolution's BatchNorm is not folded in), which gap-debug's report says."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    paths = [path for path, _ in module.named_modules() if path]

    class EveryOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, x):
            seen: dict[str, Any] = {}
            hooks = [sub.register_forward_hook(lambda _m, _i, out, path=path: seen.__setitem__(path, out))
                     for path, sub in self.model.named_modules() if path]
            try:
                logits = self.model(x)
            finally:
                for hook in hooks:
                    hook.remove()
            return (logits, *[seen[path] for path in paths if isinstance(seen.get(path), torch.Tensor)])

    wrapper = EveryOutput()
    with torch.no_grad():
        tensors = _outputs_of(module, example)
    found = [path for path in paths if path in tensors]
    program = torch.export.export(wrapper, (example,), dynamic_shapes=None if dims is None else (dims,))
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer, found


def _outputs_of(module, example) -> set[str]:
    """The module paths whose output is one tensor on ``example``."""
    import torch

    found: set[str] = set()
    hooks = [sub.register_forward_hook(lambda _m, _i, out, path=path: found.add(path) if isinstance(
        out, torch.Tensor) else None) for path, sub in module.named_modules() if path]
    try:
        module(example)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def convert_coreml(module, out: Path, spec: ArtifactSpec, precision: str, log, *, max_side: int,
                   max_batch: int, enumerated: Sequence[Shape] = ()) -> tuple[list[str], dict]:
    """coremltools from a trace, as an ML program (iOS 16+) with RangeDim batch, height and width, or with
    ``enumerated`` shapes (coremltools' EnumeratedShapes: a few fixed shapes, the first the default, which Core ML
    can keep on the Neural Engine where ranged shapes fall back to the GPU or CPU); its compute precision is set
    (FLOAT32 unless fp16 is asked: coremltools' own default for ML programs is FP16)."""
    from gap_deploy.runtime._lazy import require

    with captured_output():
        ct = require("coremltools", purpose="for gap-pack --target coreml", hint="pip install 'gap-deploy[coreml]'")
    import numpy as np
    import torch

    meta = spec.metadata
    if len(enumerated) == 1:  # one shape: a static input (coremltools' EnumeratedShapes takes two or more)
        example = torch.zeros(tuple(enumerated[0]), dtype=torch.float32)
        shape = ct.Shape(shape=list(enumerated[0]))
    elif enumerated:
        example = torch.zeros(tuple(enumerated[0]), dtype=torch.float32)
        shape = ct.EnumeratedShapes(shapes=[list(s) for s in enumerated], default=list(enumerated[0]))
    else:
        example = _example(spec, 1, max_side)
        shape = ct.Shape(shape=(ct.RangeDim(1, max_batch, 1), spec.channels,
                                ct.RangeDim(meta.min_height, max_side, example.shape[2]),
                                ct.RangeDim(meta.min_width, max_side, example.shape[3])))
    log(f"Converting the PyTorch model to Core ML ({precision}) with coremltools ...")
    with captured_output() as tail:
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, example)
            model = ct.convert(traced, inputs=[ct.TensorType(name=spec.input_name, shape=shape, dtype=np.float32)],
                               outputs=[ct.TensorType(name=spec.output_name)], convert_to="mlprogram",
                               compute_precision=(ct.precision.FLOAT16 if precision == "fp16"
                                                  else ct.precision.FLOAT32),
                               minimum_deployment_target=ct.target.iOS16)
            model.save(str(out / "model.mlpackage"))
        except Exception as exc:
            raise _converter_failed("coremltools' conversion", exc, tail) from None
    return ["model.mlpackage"], {"coremltools": ct.__version__}


def inspect_coreml(package: Path, model=None) -> dict:
    """What can be checked of a saved Core ML program without Apple's runtime: it reloads, its input and output
    (names, shape ranges), the ops it uses, and the element type every op produces. ``model``: the package
    already reloaded (coremltools' MLModel), so that it is read once."""
    from coremltools.proto import MIL_pb2

    with captured_output():
        import coremltools as ct

        if model is None:
            model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ExportError(f"{package.name} is not an ML program ({spec.WhichOneof('Type')}).")
    desc = spec.description.input[0]
    ranges = [[r.lowerBound, r.upperBound] for r in desc.type.multiArrayType.shapeRange.sizeRanges]
    enumerated = [list(s.shape) for s in desc.type.multiArrayType.enumeratedShapes.shapes]
    if not enumerated and not ranges:  # a static input (gap-pack --fixed with one shape)
        enumerated = [list(desc.type.multiArrayType.shape)]
    ops: dict[str, int] = {}
    types: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for op in function.block_specializations[function.opset].operations:
            ops[op.type] = ops.get(op.type, 0) + 1
            for output in op.outputs:
                if output.type.WhichOneof("type") == "tensorType":
                    name = MIL_pb2.DataType.Name(output.type.tensorType.dataType)
                    types[name] = types.get(name, 0) + 1
    return {"input": desc.name, "input_dtype": cast(Any, ct.proto.FeatureTypes_pb2.ArrayFeatureType).ArrayDataType.Name(
        desc.type.multiArrayType.dataType), "input_ranges": ranges, "input_shapes": enumerated,
        "output": spec.description.output[0].name, "spec_version": spec.specificationVersion,
        "ops": dict(sorted(ops.items())),
        "op_output_types": dict(sorted(types.items()))}


class MismatchError(ExportError):
    """A converted model that departs from the ONNX; ``min_side`` is the smallest side from which it matches,
    where it departs only below that (scripts/edge_matrix.py retries with --min-side)."""

    min_side: int | None = None


class Recording:
    """A candidate for runtime.parity.compare that turns a runtime's failure at one shape into a failed row (NaN
    logits) and keeps its message, so the report shows every shape and the hint can name the sizes that work."""

    def __init__(self, infer, num_classes: int | None):
        self.infer, self.num_classes, self.errors = infer, num_classes, []

    def __call__(self, x):
        import numpy as np

        from gap_deploy.runtime.errors import BackendError

        try:
            return self.infer(x)
        except BackendError as exc:
            self.errors.append(f"{format_shape(x.shape)}: {first_line(exc)}")
            return np.full((x.shape[0], self.num_classes or 1), np.nan, np.float32)  # a failed row either way

    def note(self, report: ParityReport) -> str:
        return "\n".join([report.format_table(), *self.errors])


def verify(reference, infer, shapes, tolerance, *, num_classes: int | None, source: Path, candidate: str,
           what: str, otherwise: str | None = None) -> ParityReport:
    """Compare ``infer`` with ``reference`` at ``shapes``; ExportError (no bundle) with the table, the runtime's
    own errors and the next step: where only small sizes fail, the smallest side from which it matches (probed
    side by side) as --min-side; else ``otherwise`` (a static program, for the targets that have one)."""
    recording = Recording(infer, num_classes)
    report = compare(reference, recording, shapes, tolerance, reference_name=f"source {source.name}",
                     candidate_name=candidate)
    if not report.passed:
        failing = suggested_min_side(report)
        side = None
        if failing is not None:
            side = _smallest_matching_side(reference, recording, shapes, failing, tolerance, source, candidate)
        if side is not None:
            bad = sorted({format_shape(r.shape) for r in report.rows if not r.passed})
            hint = (f"it fails or differs only at the smallest sizes ({', '.join(bad)}) and matches from side {side} "
                    f"up: --min-side {side} packs a bundle that refuses smaller images (and is checked from there "
                    "up).")
        else:
            hint = otherwise
        error = MismatchError(f"the {what} model does not match {source.name}; no bundle was written.",
                              note=recording.note(report), hint=hint)
        error.min_side = side  # for callers that retry (scripts/edge_matrix.py)
        raise error
    return report


def _smallest_matching_side(reference, recording, shapes, failing, tolerance, source: Path, candidate: str):
    """The smallest side s above every failing one from which square inputs s x s match (each side probed up to
    the smallest passing one), or None."""
    worst, good = failing
    channels = shapes[0][1]
    quiet = Recording(recording.infer, recording.num_classes)  # the probes' own failures stay out of the note
    for side in range(worst + 1, good + 1):
        probe = compare(reference, quiet, [(1, channels, side, side)], tolerance,
                        reference_name=f"source {source.name}", candidate_name=candidate)
        if probe.passed:
            return side
    return None


def suggested_min_side(report: ParityReport) -> tuple[int, int] | None:
    """When only sizes below some that pass fail: (the largest failing side, the smallest passing side, the
    --min-side that packs the rest). None when a failing size is as large as a passing one."""
    failed = [r.shape for r in report.rows if not r.passed]
    passed = [r.shape for r in report.rows if r.passed]
    if not failed or not passed:
        return None
    worst = max(max(s[2], s[3]) for s in failed)
    smallest_good = min(min(s[2], s[3]) for s in passed)
    return (worst, smallest_good) if worst < smallest_good else None


# --- the bundle -------------------------------------------------------------------------------------------------

def _convert(target: str, module, source: Path, out: Path, spec: ArtifactSpec, precision: str, log, *,
             max_side: int, max_batch: int, static, enumerated) -> tuple[list[str], dict, tuple]:
    """The target's converter: (file names, versions, (max side, max batch) bounds the program has, or None)."""
    if target == "ncnn":
        return (*convert_ncnn(source, out, spec, precision, log), (None, None))
    if target == "litert":
        return (*convert_litert(module, out, spec, precision, log, static=static), (None, None))
    if target == "executorch" and static:
        return (*convert_executorch(module, out, spec, precision, log, max_side=max_side, max_batch=max_batch,
                                    static=static), (None, None))
    if target == "executorch":
        if max_batch < MIN_BATCH_BOUND:
            log(f"note: ExecuTorch's batch bound is {MIN_BATCH_BOUND} (torch.export keeps no smaller one dynamic); "
                f"--max-batch {max_batch} raised to it.")
            max_batch = MIN_BATCH_BOUND
        return (*convert_executorch(module, out, spec, precision, log, max_side=max_side, max_batch=max_batch),
                (max_side, max_batch))
    return (*convert_coreml(module, out, spec, precision, log, max_side=max_side, max_batch=max_batch,
                            enumerated=enumerated), (None, None) if enumerated else (max_side, max_batch))


def build_edge(target: str, model, source: Path, out: Path, spec: ArtifactSpec, precision: str, log, *,
               module=None, max_side: int = DEFAULT_MAX_SIDE, max_batch: int = DEFAULT_MAX_BATCH,
               base_shapes: list[Shape], describe_bundle, enumerated: Sequence[Shape] = ()) \
        -> tuple[dict, ParityReport | None]:
    """Convert, write model.json, then open the staged bundle with the runtime and compare it with the ONNX.
    Returns (model.json's content, the parity report: None for Core ML, which is inspected, not run)."""
    import json
    from dataclasses import replace

    # LiteRT and ExecuTorch with --fixed: a static program of that one shape (gap-pack checked there is one)
    static = tuple(enumerated[0]) if enumerated and target in STATIC_TARGETS else None
    names, versions, bounds = _convert(target, module, source, out, spec, precision, log, max_side=max_side,
                                       max_batch=max_batch, static=static, enumerated=enumerated)
    fixed_batch = versions.pop("fixed_batch", None)
    debug_program = versions.pop("debug_program", None)
    meta = spec.metadata
    if static:  # the contract at the program's one size: every reader prepares images at the size it takes
        sized = meta.preprocessing(channels=spec.channels).sized((static[2], static[3]))
        meta = replace(meta, preprocess=sized.to_json())
    # the model's own gap.* description only: the ONNX's other props (its signed lineage among them) stay in the
    # ONNX, which model.json names by SHA-256 as the bundle's source
    props = {k: v for k, v in replace(meta, precision="fp16" if precision == "fp16" else meta.precision)
             .to_props().items() if k.startswith("gap.")}
    if bounds[0]:
        props["gap.max_side"] = str(bounds[0])  # read by the ExecuTorch runner
    if static:
        props["gap.static_shape"] = format_shape(static)  # read by the ExecuTorch runner (its method does not say)
    accepts = {"batch": [1, 1 if fixed_batch else bounds[1]], "height": [meta.min_height, bounds[0]],
               "width": [meta.min_width, bounds[0]]}
    if enumerated:  # these shapes and no other
        accepts = {"shapes": [list(s) for s in enumerated]}
    files = {}
    for name in names:
        path = out / name
        if path.is_dir():  # an .mlpackage: its files, each with its SHA-256
            for inner in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = inner.relative_to(out).as_posix()
                files[rel] = {"sha256": sha256_file(inner), "bytes": inner.stat().st_size, "format": "mlpackage",
                              "shape": None}
        else:
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "format": path.suffix[1:],
                           "shape": None, "accepts": accepts}
            if debug_program and name == debug_program["file"]:
                files[name]["role"] = "debug"  # for gap-debug only: never the model a runner loads
    description = describe_bundle(out, spec, source, files, target=target, precision=precision, metadata=props,
                                  accepts=accepts, versions=versions)
    if debug_program:
        description["debug_program"] = debug_program
    if fixed_batch:
        description["notes"] = [fixed_batch]
        for note in description["notes"]:
            log(f"note: {note}")
    if target == "ncnn":
        from gap_deploy.runtime.backends.edge import ncnn_blobs

        description["blobs"] = list(ncnn_blobs(out / "model.param"))
    (out / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    if target == "coreml":
        inspected = inspect_coreml(out / "model.mlpackage")
        wanted = "FLOAT16" if precision == "fp16" else "FLOAT32"
        other = [t for t in inspected["op_output_types"] if t.startswith("FLOAT") and t != wanted]
        if precision == "fp32" and other:
            raise ExportError(f"the Core ML program computes in {', '.join(other)} although FP32 was asked for; no "
                              "bundle was written.")
        description["verification"] = {"executed": False, "why": "Core ML runs only on Apple's OSes (coremltools' "
                                        "predict is macOS only)", "inspected": inspected}
        description["check"] = write_coreml_check(model, spec, base_shapes, out, precision)
        (out / "model.json").write_text(json.dumps(description, indent=2) + "\n")
        (out / "verification.json").write_text(json.dumps(description["verification"], indent=2) + "\n")
        return description, None
    from gap_deploy import runtime

    shapes = [static] if static else check_shapes(spec, base_shapes, *bounds)
    backend = BACKEND[target]
    with captured_output():  # the runtimes' own start-up lines ("Created TensorFlow Lite XNNPACK delegate")
        # staged here (signed when published); its description is judged by the whole sweep below
        session = runtime.load(out, backend, verify_key=False, check_description=False)
    with session, captured_output():  # the runtimes' first-inference lines ("Created TensorFlow Lite XNNPACK ...")
        report = verify(ort_cpu_infer(model), session.run, shapes, tolerance_for(precision, backend),
                        num_classes=meta.num_classes, source=source, candidate=f"{names[0]} ({backend}, {precision})",
                        what=target, otherwise=static_hint(spec) if target in STATIC_TARGETS and not static else None)
        description["device"] = session.device  # e.g. ExecuTorch's planned input, ncnn's FP16 switches
    description["verification"] = report.to_dict()
    description["accepts"]["largest_checked"] = list(max(shapes, key=lambda x: x[2] * x[3])[2:])
    (out / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    (out / "verification.txt").write_text(report.format_table() + "\n")
    return description, report


def write_coreml_check(model, spec: ArtifactSpec, base_shapes: list[Shape], out: Path, precision: str) -> dict:
    """check_data.npz: inputs and the FP32 ONNX's logits for them, so the program can be run and judged on a
    Mac (README.md); the shapes up to 224 pixels of the sweep."""
    import numpy as np

    from gap_deploy.runtime.parity import random_input

    reference = ort_cpu_infer(model)
    arrays, shapes = {}, [s for s in base_shapes if max(s[2], s[3]) <= 224]
    for i, shape in enumerate(shapes):
        x = random_input(shape, i)
        arrays[f"input_{i}"], arrays[f"expected_{i}"] = x, reference(x)
    np.savez_compressed(out / "check_data.npz", **arrays)
    tolerance = tolerance_for(precision)
    return {"shapes": [format_shape(s) for s in shapes], "tolerance": {"atol": tolerance.atol, "rtol": tolerance.rtol}}


def readme_template(name: str) -> str:
    """A bundle README template of gap_deploy/exporter/readmes/ (``str.format`` fields; ``{{`` is a brace)."""
    from importlib.resources import files

    return files("gap_deploy.exporter").joinpath("readmes").joinpath(f"{name}.md").read_text(encoding="utf-8")


def edge_readme(d: dict) -> str:
    """The README of an ncnn, LiteRT, ExecuTorch or Core ML bundle: contract, range, checks, loading code."""
    target, accepts = d["target"], d["accepts"]
    title = {"ncnn": "ncnn", "litert": "LiteRT", "executorch": "ExecuTorch (XNNPACK)", "coreml": "Core ML"}[target]
    files = sorted({name.split("/")[0] for name in d["files"]})

    def span(lo, hi):
        return f"{lo}..{hi}" if hi else f">= {lo}"
    verification = d.get("verification", {})
    if verification.get("executed") is False:
        checked = "not executed here (Core ML needs Apple's OS); the program was reloaded and inspected"
    else:
        rows = verification.get("shapes", [])  # ParityReport.to_dict: one row per shape compared
        worst = max((r.get("rel_err", 0) for r in rows), default=float("nan"))
        checked = (f"run with gap-deploy's runtime ({BACKEND.get(target)}) and compared with {d['source']} at "
                   f"{len(rows)} shape(s) (worst relative error {worst:.1e}; `verification.txt`)")
    tol = d.get("check", {}).get("tolerance", {"atol": "", "rtol": ""})
    contract = _contract(d)
    scale, shift = contract.affine(d["channels"]) if contract is not None else ([], [])
    loading = readme_template(target).format(
        ncnn_mean=", ".join(f"{-b / a:.6g}f" for a, b in zip(scale, shift)),
        ncnn_norm=", ".join(f"{a:.6g}f" for a in scale),
        contract=contract.describe() if contract is not None else "see model.json",
        ncnn_pixel="PIXEL_RGB2BGR" if contract is not None and contract.channel_order == "BGR" else "PIXEL_RGB",
        fp16="true" if d["precision"] == "fp16" else "false", fp16py=d["precision"] == "fp16",
        channels=d["channels"], num_classes=d["num_classes"], input=d["input"], output=d["output"],
        ncnn_in=d.get("blobs", ["in0", "out0"])[0], ncnn_out=d.get("blobs", ["in0", "out0"])[1],
        precision_type="FLOAT16" if d["precision"] == "fp16" else "FLOAT32", atol=tol["atol"], rtol=tol["rtol"])
    return f"""# {d['source']} for {title} ({d['precision']})

Files: {', '.join(f'`{n}`' for n in files)}, `labels.txt`, `model.json`. {_accepts_line(d, accepts, span)}; \
{checked}.
{'Weights and arithmetic are FP16, asked for with --precision fp16.' if d['precision'] == 'fp16' else
 'FP32: gap-pack turned off every FP16 default of the converter and runtime.'}

Input `{d['input']}`: float32 NCHW, {d['channel_order']}, pixels / 255 then (x - mean) / std with mean
{d['mean']} and std {d['std']}. Output `{d['output']}`: (N, {d['num_classes']}) logits; class names in
`labels.txt`.

{loading}"""


def _accepts_line(d: dict, accepts: dict, span) -> str:
    if "shapes" in accepts and (d["target"] in STATIC_TARGETS or len(accepts["shapes"]) == 1):  # one --fixed shape
        return (f"A static program: accepts exactly {'x'.join(map(str, accepts['shapes'][0]))} (its preprocessing "
                "contract prepares every image at that size)")
    if "shapes" in accepts:  # Core ML's enumerated shapes (gap-pack --fixed): these and no other
        return ("Accepts exactly these input shapes (enumerated, the first the default): "
                + ", ".join("x".join(map(str, s)) for s in accepts["shapes"]))
    return (f"Accepts N x {d['channels']} x H x W with N {span(*accepts['batch'])}, H {span(*accepts['height'])}, "
            f"W {span(*accepts['width'])} (checked up to {'x'.join(map(str, accepts.get('largest_checked', [])))})")


def _contract(d: dict):
    """The preprocessing contract a bundle's model.json carries (its gap.* metadata), or None."""
    from gap_deploy.runtime.errors import GapError
    from gap_deploy.runtime.metadata import ModelMetadata

    try:
        return ModelMetadata.from_props(d.get("metadata") or {}).preprocessing(channels=d["channels"])
    except GapError:
        return None

