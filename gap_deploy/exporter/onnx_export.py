"""PyTorch -> ONNX with symbolic batch/height/width, checked and annotated for the runtime."""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import onnx
import torch
from torch import nn

from gap_deploy.exporter._quiet import quiet_loggers
from gap_deploy.exporter.checkpoint import LoadedModel
from gap_deploy.exporter.defaults import DEFAULT_OPSET, SUPPORTED_OPSETS
from gap_deploy.runtime.artifact import describe
from gap_deploy.runtime.errors import ArtifactError, ExportError, GapError, ParityError, UsageError, first_line
from gap_deploy.runtime.limits import check_memory
from gap_deploy.runtime.metadata import ModelMetadata, default_normalization
from gap_deploy.runtime.onnx_file import fits_one_protobuf, save_onnx, set_metadata
from gap_deploy.runtime.parity import FP32, ParityReport, Tolerance
from gap_deploy.runtime.shapes import Shape, format_shape
from gap_deploy.runtime.version import __version__

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}
MIN_SIZE_SEARCH_LIMIT = 512


@dataclass(frozen=True)
class OnnxExport:
    """An exported model in memory, not yet written: verification comes first."""

    model: onnx.ModelProto
    metadata: ModelMetadata
    dynamic: bool
    input_dims: tuple[int | str, ...]
    output_dims: tuple[int | str, ...]
    opset: int
    simplified: bool
    seconds: float


def find_min_size(module: nn.Module, in_channels: int, limit: int = MIN_SIZE_SEARCH_LIMIT) -> int:
    """Smallest square input side the network runs on (the reference CNN: 4, from two 2x2 pools).

    Probed with forward passes: architectures compute their minimum in too many ways (padding,
    strides, ceil_mode, adaptive pools) for a formula to be trusted.
    """
    last_error: list[str] = []

    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                out = module(torch.zeros(1, in_channels, side, side))
        except Exception as exc:  # any failure at a small size means "too small" (asserts and KeyErrors too)
            last_error[:] = [f"{type(exc).__name__}: {first_line(exc)}"]
            return False
        _check_output(out)  # it ran: a wrong output is the model's problem, not the size's
        return True

    # Small sides one by one (most minimums are below 64), then doubling, then a bisection back down:
    # a model with a large minimum is found in a few dozen forward passes, not hundreds.
    for side in range(1, min(limit, 64) + 1):
        if runs(side):
            return side
    low, high = 64, None
    while high is None and low < limit:
        candidate = min(low * 2, limit)
        if runs(candidate):
            high = candidate
        else:
            low = candidate
    if high is None:
        raise ExportError(f"the model failed on every input size from 1x1 to {limit}x{limit} with {in_channels} "
                          f"channels (last: {last_error[0] if last_error else 'no output'}).",
                          hint="check that the model takes NCHW images with that many channels; for a model whose "
                               f"minimum is above {limit}, export at that size (--imgsz).")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if runs(middle) else (middle, high)
    return high


def _check_output(out) -> None:
    if isinstance(out, (tuple, list)):
        raise ExportError(f"the model returns a {type(out).__name__} of {len(out)} items; gap-deploy expects one "
                          "logits tensor of shape (batch, classes).",
                          hint="wrap the model so that forward() returns only the logits (e.g. outputs[0]).")
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the model returns a {type(out).__name__}; gap-deploy expects a logits tensor.",
                          hint="wrap the model so that forward() returns one (N, num_classes) tensor.")
    if out.ndim != 2 or out.shape[1] == 0:
        raise ExportError(f"the model returns shape {tuple(out.shape)}; gap-deploy expects logits of shape "
                          "(batch, classes) with at least one class.",
                          hint="check num_classes (--num-classes) and that the head flattens the pooled features.")


def check_dynamic_head(module: nn.Module) -> None:
    """A head that pools to a fixed grid larger than 1x1 (VGG's and AlexNet's ``AdaptiveAvgPool2d(7)`` before
    Flatten and Linear) does not export with a dynamic height and width: ONNX fixes the pooling window for the
    export size, so at any other size the grid, and the Linear's input, change. Refused with what to do."""
    for path, layer in module.named_modules():
        if isinstance(layer, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = layer.output_size
            sides = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
            if any(side not in (1, None) for side in sides):
                raise ExportError(
                    f"{path} ({type(layer).__name__}({size})) pools to a fixed {sides[0]}x{sides[1]} grid: the export "
                    "fixes its window for the export size, so with --dynamic the model breaks at every other size.",
                    hint="export without --dynamic (the model then runs at --imgsz only), or make the head global "
                         "pooling (AdaptiveAvgPool2d(1)), which takes any size.")


def num_classes_of(module: nn.Module, in_channels: int, side: int) -> int:
    with torch.no_grad():
        out = module(torch.zeros(1, in_channels, side, side))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExportError(f"the model returns {shape}; gap-deploy expects logits of shape (batch, classes).",
                          hint="wrap the model so that forward() returns one (N, num_classes) tensor.")
    return int(out.shape[1])


#: node metadata that records where the exporting machine keeps its source files
PRIVATE_NODE_METADATA = ("pkg.torch.onnx.stack_trace",)


def strip_stack_traces(model) -> int:
    """Remove PRIVATE_NODE_METADATA from every node (functions and subgraphs included); returns how many."""
    removed = 0

    def graphs(graph):
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.g.node:
                    yield from graphs(attribute.g)
                for sub in attribute.graphs:
                    yield from graphs(sub)

    nodes = [n for g in graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key not in PRIVATE_NODE_METADATA]
        removed += len(node.metadata_props) - len(keep)
        del node.metadata_props[:]
        for key, value in keep:
            node.metadata_props.add(key=key, value=value)
    return removed


def check_normalization(mean, std, channels: int) -> None:
    """--mean/--std: 1 or ``channels`` values each, every std > 0."""
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ExportError(f"{name} has {len(values)} values; the model has {channels} input channels.",
                              hint=f"give 1 or {channels} comma-separated values.")
    if std is not None and any(v <= 0 for v in std):
        raise ExportError("std values must be > 0 (they divide the pixels).")


def export_model(
    loaded: LoadedModel | nn.Module,
    *,
    dynamic: bool = True,
    imgsz: tuple[int, int] = (224, 224),
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    class_names: tuple[str, ...] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    simplify: bool = False,
    keep_stack_traces: bool = False,
    preprocess=None,
) -> OnnxExport:
    """Trace ``loaded.module`` to ONNX in memory; check its graph and dims; attach the metadata.

    The exporter's per-node source stack traces (``pkg.torch.onnx.stack_trace``: the exporting machine's
    absolute paths and source lines) are removed unless ``keep_stack_traces``; the module paths
    (``pkg.torch.onnx.name_scopes``) stay, for gap-debug. ``preprocess`` (runtime.preprocess.Preprocess) is
    the preprocessing contract stored with the model; its mean/std are used where ``mean``/``std`` are not
    given. Without one the model carries the default contract: each image at its own size.
    """
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}.."
                          f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET}).")
    from gap_deploy.exporter.checkpoint import from_module

    loaded = from_module(loaded)  # an nn.Module in memory (a notebook's) as well as a loaded checkpoint
    started = time.perf_counter()
    module, channels = loaded.module.eval(), loaded.in_channels
    if dynamic:
        check_dynamic_head(module)
    check_memory((2 if dynamic else batch, channels, *imgsz), "the export size (--batch-size x C x --imgsz)")
    height, width = imgsz
    # the search reaches the export size at least: a model that runs only from 600 up, exported at 600, is found
    min_side = find_min_size(module, channels, max(MIN_SIZE_SEARCH_LIMIT, min(height, width)))
    if min(height, width) < min_side:
        raise ExportError(f"the export size (imgsz) {height}x{width} is below this model's minimum input size "
                          f"{min_side}x{min_side}.", hint=f"export at {max(min_side, 32)} or larger (--imgsz).")
    num_classes = num_classes_of(module, channels, min_side)
    if class_names is not None and len(class_names) != num_classes:
        raise ExportError(f"{len(class_names)} class names given but the model has {num_classes} classes.",
                          hint="give one name per class, in class-index order.")
    check_normalization(mean, std, channels)
    default_mean, default_std = default_normalization(channels)
    if preprocess is not None:
        mean = mean if mean is not None else preprocess.mean
        std = std if std is not None else preprocess.std
        preprocess.validate(channels, bad=lambda why: ExportError(f"the preprocessing contract: {why}."))
        if preprocess.size is not None and min(preprocess.size) < min_side:
            raise ExportError(f"the preprocessing makes {preprocess.size[0]}x{preprocess.size[1]} inputs, below this "
                              f"model's minimum input size {min_side}x{min_side}.")
    else:
        from gap_deploy.runtime.preprocess import Preprocess

        preprocess = Preprocess()
    meta = ModelMetadata(
        arch=loaded.arch, in_channels=channels, num_classes=num_classes, class_names=class_names,
        mean=_broadcast(mean, channels) or default_mean, std=_broadcast(std, channels) or default_std,
        min_height=min_side, min_width=min_side, export_height=height, export_width=width, precision="fp32",
        toolkit_version=__version__,
        source_sha256=loaded.source_sha256, preprocess=preprocess.to_json())

    example_batch = 2 if dynamic else batch  # a size-1 example invites the tracer to specialize the dim
    example = torch.randn(example_batch, channels, height, width)
    proto = _trace(module, example, dynamic, min_side, opset)
    if dynamic:
        _name_dynamic_dims(proto)
    _check_io(proto, dynamic, (batch, channels, height, width), num_classes)
    simplified = False
    if simplify:
        proto, simplified = _simplify(proto), True
        _check_io(proto, dynamic, (batch, channels, height, width), num_classes)
    set_metadata(proto, meta)
    if not keep_stack_traces:
        strip_stack_traces(proto)
    proto = check_and_infer(proto)
    spec = describe(proto)
    dims_in, dims_out = spec.written_dims, spec.written_output_dims
    return OnnxExport(proto, meta, dynamic, dims_in, dims_out, opset, simplified,
                      time.perf_counter() - started)


def _broadcast(values, channels):
    if values is None:
        return None
    return tuple(values) * channels if len(values) == 1 else tuple(values)


def _trace(module: nn.Module, example: torch.Tensor, dynamic: bool, min_side: int, opset: int) -> onnx.ModelProto:
    from torch.export import Dim

    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = ({0: Dim("batch", min=1, max=4096), 2: Dim("height", min=min_side, max=16384),
                           3: Dim("width", min=min_side, max=16384)},)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), quiet_loggers("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, verbose=False,
                optimize=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ExportError(f"torch.onnx.export failed: {text[0] if text else type(exc).__name__}",
                          note="\n".join(text[1:8]) or None,
                          hint="if the message names a size constraint, the model may need inputs of a "
                               "particular size; try a static export (drop --dynamic) with --imgsz.") from None
    if program is None or program.model_proto is None:
        raise ExportError("torch.onnx.export returned no model.")
    return program.model_proto


def _name_dynamic_dims(proto: onnx.ModelProto) -> None:
    """Give the symbolic input dims the names batch/height/width everywhere in the graph.

    Exporters name them after their own symbols (s0, s1, ...); users, trtexec profiles and the
    runtime read the input's names.
    """
    written = describe(proto).dim_names
    renames = {written[axis]: name for axis, name in DYNAMIC_DIMS.items()
               if axis < len(written) and written[axis] and written[axis] != name}
    if not renames:
        return
    graph = proto.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]


def _check_io(proto: onnx.ModelProto, dynamic: bool, static_shape, num_classes: int) -> None:
    try:
        spec = describe(proto)
    except ArtifactError as exc:
        raise ExportError(f"the exported graph does not fit: {first_line(exc)}") from None
    got_in, got_out = spec.written_dims, spec.written_output_dims
    channels = static_shape[1]
    if dynamic:
        want_in: tuple = ("batch", channels, "height", "width")
        want_out: tuple = ("batch", num_classes)
    else:
        want_in, want_out = tuple(static_shape), (static_shape[0], num_classes)
    if got_in != want_in:
        raise ExportError(f"the exported input has dims {got_in}, expected {want_in}.",
                          note="the exporter specialized a dimension that should stay symbolic."
                          if dynamic else None,
                          hint="report the model; a static export (no --dynamic) may still work.")
    if got_out != want_out:
        raise ExportError(f"the exported output has dims {got_out}, expected {want_out}.")


def check_and_infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        if not fits_one_protobuf(proto):  # one protobuf cannot pass 2 GiB: check on disk
            return _check_and_infer_on_disk(proto)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {first_line(exc)}") from None
    return inferred


def _check_and_infer_on_disk(proto: onnx.ModelProto) -> onnx.ModelProto:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gap-check-") as folder:
        src, dst = f"{folder}/model.onnx", f"{folder}/inferred.onnx"
        save_onnx(proto, src)
        onnx.shape_inference.infer_shapes_path(src, dst, check_type=True, strict_mode=True)
        onnx.checker.check_model(dst, full_check=True)
        inferred = onnx.load(dst, load_external_data=False)
        onnx.load_external_data_for_model(inferred, folder)
    return inferred


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    from gap_deploy.runtime._lazy import require

    onnxslim = require("onnxslim", purpose="for --simplify")
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            return onnxslim.slim(proto)
    except Exception as exc:
        raise ExportError(f"onnxslim failed to simplify the model: {exc}",
                          hint="export without --simplify.") from None


@dataclass(frozen=True)
class ExportResult:
    path: Path
    export: OnnxExport
    parity: ParityReport | None  # None with verify=False


@dataclass(frozen=True)
class ExportOptions:
    """export_model's options as one value, for the functions that pass them along."""

    dynamic: bool = True
    imgsz: tuple[int, int] = (224, 224)
    batch: int = 1
    opset: int = DEFAULT_OPSET
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    simplify: bool = False
    #: keep the exporter's per-node source stack traces (absolute paths of this machine); off by default
    keep_stack_traces: bool = False
    #: the preprocessing contract (runtime.preprocess.Preprocess) stored with the model
    preprocess: object = None


def export_verified(loaded: LoadedModel | nn.Module, options: ExportOptions = ExportOptions(), *, verify: bool = True,
                    verify_shapes: Sequence[Shape] | None = None, tolerance: Tolerance = FP32,
                    destination: str = "the output") -> tuple[OnnxExport, ParityReport | None]:
    """Export in memory and verify against PyTorch; raises ParityError (nothing written) when it differs."""
    from gap_deploy.exporter.checkpoint import from_module
    from gap_deploy.exporter.parity import check_parity, default_verify_shapes

    loaded = from_module(loaded)
    exported = export_model(loaded, **{f.name: getattr(options, f.name) for f in fields(options)})
    imgsz, batch = options.imgsz, options.batch
    if not verify:
        return exported, None
    meta = exported.metadata
    shapes = verify_shapes or default_verify_shapes(meta.in_channels or loaded.in_channels, imgsz, meta.min_height,
                                                    dynamic=exported.dynamic, batch=batch)
    for shape in shapes:
        if shape[2] < meta.min_height or shape[3] < meta.min_width:
            raise UsageError(f"verify shape {format_shape(shape)} is below this model's minimum input size "
                             f"{meta.min_height}x{meta.min_width}.", hint="verify at the minimum or above.")
        check_memory(shape, "verify shape")
    try:
        report = check_parity(loaded.module, exported.model, shapes, tolerance)
    except GapError:
        raise
    except Exception as exc:  # onnxruntime (or PyTorch) refusing one of the shapes: the export is wrong there
        at = ", ".join(map(format_shape, shapes))
        raise ExportError(f"the exported model does not run at every verify shape ({at}): {first_line(exc)[:300]}; "
                          f"{destination} was not written.",
                          hint="export without --dynamic if the model takes only its export size, or give "
                               "--verify-shape the sizes it takes.") from None
    if not report.passed:
        worst = max(report.failures(), key=lambda r: r.rel_err)
        raise ParityError(
            f"the exported model differs from PyTorch at {len(report.failures())} of {len(report.rows)} "
            f"shapes (worst: {format_shape(worst.shape)}, max abs err {worst.max_abs_err:.3g}, "
            f"rel err {worst.rel_err:.3g}); {destination} was not written.",
            report=report, hint="rerun with --json FILE.json for the figures; --atol/--rtol change the tolerance.\n"
                                f"find the first layer that departs: {debug_command(loaded, worst.shape, imgsz=imgsz)}")
    return exported, report


def debug_command(loaded: LoadedModel, shape: Shape | None = None, *, precision: str | None = None, calib=None,
                  imgsz: tuple[int, int] | None = None) -> str:
    """The gap-debug command line that explains a failed check of ``loaded``'s export (the hint of a failed
    parity check or precision gate): the checkpoint, its --arch, the failing shape and the export size."""
    import shlex

    parts = ["gap-debug", str(loaded.source)]
    if loaded.arch and ":" in loaded.arch:
        parts += ["--arch", loaded.arch]
    if precision and precision != "fp32":
        parts += ["--precision", precision] + (["--calib", str(calib)] if calib else [])
    if shape is not None:
        parts += ["--shape", format_shape(shape)]
        imgsz = imgsz or (shape[2], shape[3])
    if imgsz:
        parts += ["--imgsz", f"{imgsz[0]}x{imgsz[1]}"]
    return " ".join(shlex.quote(p) for p in parts)


def export_onnx(
    loaded: LoadedModel | nn.Module,
    output: str | Path,
    *,
    dynamic: bool = True,
    imgsz: tuple[int, int] = (224, 224),
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    class_names: tuple[str, ...] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    simplify: bool = False,
    verify: bool = True,
    verify_shapes: Sequence[Shape] | None = None,
    tolerance: Tolerance = FP32,
    preprocess=None,
) -> ExportResult:
    """Export, verify against PyTorch, then write ``output`` atomically. ``preprocess``
    (runtime.preprocess.Preprocess) is the preprocessing contract stored with the model.

    A model that fails verification is not written (and a file already at ``output`` is left as it
    was): a failed export never looks like a finished one. ``ParityError.report`` holds the figures.
    """
    from gap_deploy.runtime.files import check_output_path
    from gap_deploy.runtime.publish import Publication

    output = check_output_path(output)
    options = ExportOptions(dynamic, imgsz, batch, opset, class_names, mean, std, simplify, preprocess=preprocess)
    exported, report = export_verified(loaded, options, verify=verify, verify_shapes=verify_shapes,
                                       tolerance=tolerance, destination=str(output))
    with Publication() as pub:
        pub.write_model(output, exported.model)  # above 2 GiB: graph + OUTPUT.data
    return ExportResult(path=output, export=exported, parity=report)
