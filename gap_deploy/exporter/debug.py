"""gap-debug: the first layer where an ONNX artifact departs from PyTorch, named by the PyTorch module that made it.

How a layer is found on both sides: the dynamo exporter records, on every ONNX node, the PyTorch module path it
came from (node metadata ``pkg.torch.onnx.name_scopes``: ``['', 'conv2', 'conv2.0', 'conv2d_1']`` is module
``conv2.0``, inside ``conv2``). A module's ONNX output is the tensor that a node inside the module's subtree
produces and a node outside it (or the graph's output) reads; its ONNX inputs are the tensors its nodes read
from outside. The artifact's nodes are mapped by name to the FP32 export of the same checkpoint, made here in
memory, so FP16 and INT8 variants (whose converters drop node metadata) are attributed too.

Per layer, for the same inputs: the error against PyTorch's output of that module (runtime.layers.layer_error:
relative and max abs error, cosine, values beyond float16's range, NaN/Inf), and the error the layer adds by
itself: the artifact's nodes of that layer alone (an extracted sub-model) run on PyTorch's own input to the
module, so an error inherited from an earlier layer is not blamed on this one.

Memory: layers are taken ``chunk`` at a time. For each chunk, PyTorch runs once with forward hooks on that
chunk's modules only, and ONNX Runtime runs once with that chunk's tensors added as outputs; the values are
compared and dropped before the next chunk. At most one chunk of activations (per input) is held.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from gap_deploy.runtime.artifact import describe
from gap_deploy.runtime.layers import (
    DEFAULT_CHUNK,
    HELPER_OPS,
    LayerError,
    added_error,
    consumers_of,
    layer_error,
    tensor_values,
)
from gap_deploy.runtime.shapes import Shape, format_shape

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
#: ONNX ops that only move or reshape values: never "the layer" a module's output comes from on their own
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Constant", "ConstantOfShape", "Cast"}


@dataclass(frozen=True)
class Layer:
    """One PyTorch module and the ONNX tensors and nodes that are its output, inputs and body."""

    path: str
    label: str  # as the user wrote it: "conv2.0 (Conv2d 32->64, 3x3)"
    depth: int  # order of the module's output in the graph
    output: str
    inputs: tuple[str, ...]
    nodes: tuple[str, ...]
    #: a module without children (a named block holds others: its error includes theirs)
    leaf: bool = True
    #: modules with no tensor of their own in the artifact, folded into this layer's nodes before it (a
    #: convolution whose BatchNorm the exporter folded in: the fused node reads the convolution's weights)
    fused: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``layer3.0.conv2 + layer3.0.bn2`` for a fused group, else the module path."""
        return " + ".join([*self.fused, self.path])

    @property
    def order(self) -> tuple[int, int]:
        """Graph order; where a block and its last child share the output tensor, the child comes first."""
        return self.depth, -self.path.count(".")


@dataclass
class LayerResult:
    layer: Layer
    error: LayerError | None = None
    #: the error of this layer alone, on PyTorch's input to it; None where it could not be isolated
    added: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {"module": self.layer.path, "fused": list(self.layer.fused), "name": self.layer.name,
                "label": self.layer.label, "depth": self.layer.depth,
                "onnx_output": self.layer.output, "onnx_nodes": list(self.layer.nodes),
                "error": self.error.to_dict() if self.error else None,
                "added_rel_err": None if self.added is None or not math.isfinite(self.added) else self.added,
                "note": self.note}


@dataclass
class DebugReport:
    artifact: str
    tolerance: float
    shapes: list[Shape]
    layers: list[LayerResult]
    unattributed: list[dict] = field(default_factory=list)
    chunk: int = DEFAULT_CHUNK
    #: what the figures are (a TensorRT engine's: rebuilt with marked outputs)
    note: str = ""
    #: how long the comparison took (the runtime's runs, PyTorch's, the attribution), set by the caller
    seconds: float | None = None
    #: what a layer's ``nodes`` are (ONNX nodes; an ExecuTorch program's operations)
    nodes_label: str = "ONNX"
    #: what to do about a layer beyond float16's range
    fp16_hint: str = "keep it in FP32: gap-export --keep-fp32"

    @property
    def first_over(self) -> LayerResult | None:
        """The first layer (in graph order) whose error passes the tolerance or that holds NaN/Inf."""
        for result in sorted(self.layers, key=lambda r: r.layer.order):
            if result.error and (result.error.rel_err > self.tolerance or result.error.nonfinite):
                return result
        return None

    @property
    def first_beyond_fp16(self) -> LayerResult | None:
        for result in sorted(self.layers, key=lambda r: r.layer.order):
            if result.error and result.error.beyond_fp16:
                return result
        return None

    def top_added(self, count: int = 5) -> list[LayerResult]:
        known = [(r.added, r) for r in self.layers if r.added is not None and r.layer.leaf]
        return [r for _, r in sorted(known, key=lambda pair: -(pair[0] if math.isfinite(pair[0]) else 1e300))][:count]

    def to_dict(self) -> dict:
        first, over16 = self.first_over, self.first_beyond_fp16
        return {"artifact": self.artifact, "tolerance": self.tolerance, "shapes": [list(s) for s in self.shapes],
                "chunk": self.chunk, "first_over_tolerance": first.layer.name if first else None,
                "first_beyond_float16": over16.layer.name if over16 else None,
                "most_added": [r.layer.name for r in self.top_added()],
                "layers": [r.to_dict() for r in sorted(self.layers, key=lambda r: r.layer.order)],
                "unattributed": self.unattributed, "note": self.note, "seconds": self.seconds}

    def format(self, top: int = 5) -> str:
        counts: dict[str, int] = {}
        for shape in self.shapes:
            counts[format_shape(shape)] = counts.get(format_shape(shape), 0) + 1
        at = ", ".join(f"{n} x {k}" if n > 1 else k for k, n in counts.items())
        took = f" in {self.seconds:.1f} s" if self.seconds is not None else ""
        lines = [f"{self.artifact}: {len(self.layers)} layer(s) compared with PyTorch on {at} "
                 f"(tolerance rel err {self.tolerance:g}){took}"]
        if self.note:
            lines.append(f"Note: {self.note}")
        first = self.first_over
        if first is None or first.error is None:
            lines.append("No layer is over the tolerance.")
        elif first.layer.path == "":
            lines.append(f"No module departs, but the model's output does (rel err {first.error.rel_err:.3g}): the "
                         "difference is made by the forward code between modules (a Python branch the trace froze, "
                         "a functional op).")
        else:
            lines.append(f"First layer over the tolerance: {first.layer.label}: rel err {first.error.rel_err:.3g}"
                         f"{', NaN/Inf' if first.error.nonfinite else ''} "
                         f"({self.nodes_label}: {', '.join(first.layer.nodes)})")
        over16 = self.first_beyond_fp16
        if over16 is not None and over16.error is not None:
            peak = over16.error.beyond_fp16
            lines.append(f"First layer beyond float16's range: {over16.layer.label}: {peak} value(s) above 65504 "
                         f"({self.fp16_hint})")
        lines.append(f"{'layer (graph order)':<44} {'rel err':>10} {'added':>10} {'max abs':>10} {'cosine':>8}  note")
        for result in sorted(self.layers, key=lambda r: r.layer.order):
            e = result.error
            added = "-" if result.added is None else f"{result.added:.3g}"
            if e is None:
                lines.append(f"{result.layer.label[:44]:<44} {'-':>10} {added:>10} {'-':>10} {'-':>8}  {result.note}")
                continue
            mark = " <" if result is first else ""
            lines.append(f"{result.layer.label[:44]:<44} {e.rel_err:>10.3g} {added:>10} {e.max_abs_err:>10.3g} "
                         f"{e.cosine:>8.5f}  {result.note}{mark}")
        most = self.top_added(top)
        if most:
            lines.append("Most error added by the layer itself (modules without children): " + "; ".join(
                f"{r.layer.name} {r.added:.3g}" for r in most))
        for item in self.unattributed:
            lines.append(f"Unattributed ONNX node {item['node']} ({item['op']}): {item['reason']}")
        return "\n".join(lines)


# ---- attribution --------------------------------------------------------------------------------------------

def node_scopes(model: onnx.ModelProto) -> dict[str, str | None]:
    """ONNX node name -> the innermost PyTorch module path it came from ('' for the model's own forward), or
    None where the node carries no name_scopes (made by an optimizer or a converter)."""
    scopes: dict[str, str | None] = {}
    for node in model.graph.node:
        value = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), None)
        path = None
        if value is not None:
            try:
                parts = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                parts = None
            # a list of module paths (strings); anything else (a number, a list of numbers) names no module
            if isinstance(parts, list) and all(isinstance(v, str) for v in parts):
                path = parts[-2] if len(parts) >= 2 else ""
        scopes[node.name] = path
    return scopes


def _inside(scope: str | None, path: str) -> bool:
    return scope is not None and (path == "" or scope == path or scope.startswith(path + "."))


def describe_module(path: str, module: nn.Module) -> str:
    """``conv2.0 (Conv2d 32->64, 3x3)``: the module path and what it is, as the user wrote it."""
    kind = type(module).__name__
    detail = ""
    if isinstance(module, nn.Conv2d):
        k = "x".join(map(str, module.kernel_size))
        groups = f", groups {module.groups}" if module.groups > 1 else ""
        detail = f" {module.in_channels}->{module.out_channels}, {k}{groups}"
    elif isinstance(module, nn.Linear):
        detail = f" {module.in_features}->{module.out_features}"
    elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
        detail = f" {getattr(module, 'num_features', '')}".rstrip()
    return f"{path or '(model)'} ({kind}{detail})"


def attribute(module: nn.Module, reference: onnx.ModelProto, artifact: onnx.ModelProto
              ) -> tuple[list[Layer], list[dict]]:
    """The layers of ``module`` found in ``artifact`` (attributed through ``reference``'s node metadata, by node
    name where the artifact has none), and the compute nodes that no module claims, each with the reason."""
    ref_scopes = node_scopes(reference)
    art_scopes = node_scopes(artifact)
    scopes = {name: (art_scopes.get(name) if art_scopes.get(name) is not None else ref_scopes.get(name))
              for name in art_scopes}
    graph = artifact.graph
    _inherit_scopes(graph, scopes)
    stored = {i.name for i in graph.initializer}
    order = {t: i for i, node in enumerate(graph.node) for t in node.output}
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}
    unattributed = [{"node": n.name, "op": n.op_type,
                     "reason": "no pkg.torch.onnx.name_scopes, and no node of that name in the FP32 export "
                               "(made by an optimizer or by the conversion)"}
                    for n in graph.node if scopes.get(n.name) is None and n.op_type not in ("Constant",)
                    and n.op_type not in HELPER_OPS]
    layers = []
    for path, sub in module.named_modules():
        if path == "":
            continue
        body = [n for n in graph.node if _inside(scopes.get(n.name), path)]
        if not body:
            continue
        names = {n.name for n in body}
        produced = {t for n in body for t in n.output}
        leaving = [t for t in produced if t in outputs or any(c.name not in names for c in consumers.get(t, []))]
        leaving = [t for t in leaving if any(n.op_type not in _SHAPE_OPS for n in body if t in n.output)] or leaving
        if len(leaving) != 1:
            continue  # a module with several outputs (or none leaving) is compared through its parts
        entering = sorted({t for n in body for t in n.input if t and t not in produced and t not in stored
                           and not _is_constant(t, graph)})
        layers.append(Layer(path, describe_module(path, sub), order.get(leaving[0], len(graph.node)), leaving[0],
                            tuple(entering), tuple(n.name for n in body), leaf=not any(True for _ in sub.children())))
    layers = _fused_groups(module, layers, graph, stored)
    # the model's own output last: a departure there and in no module is in the forward code between modules
    # (a Python branch the trace froze, a functional op)
    spec = describe(artifact)
    layers.append(Layer("", f"(model output) ({type(module).__name__})", len(graph.node) + 1, spec.output_name,
                        (spec.input_name,), tuple(n.name for n in graph.node), leaf=False))
    return layers, unattributed


def _fused_groups(module: nn.Module, layers: list[Layer], graph, stored: set[str]) -> list[Layer]:
    """Each layer with the modules folded into it: a module that has no node of its own but whose weights its
    nodes read (the exporter folds a BatchNorm into the convolution before it and scopes the fused node to the
    BatchNorm; the node keeps reading the convolution's weight and bias by name). Such a layer is compared as the
    group it is (its label names every module of it), and its added error is measured from the first module's
    PyTorch input, which is what the fused nodes read."""
    import dataclasses

    modules = dict(module.named_modules())
    rank = {path: i for i, path in enumerate(modules)}
    have_body = {layer.path for layer in layers}
    nodes = {n.name: n for n in graph.node}
    grouped = []
    for layer in layers:
        reads = {t for name in layer.nodes for t in nodes[name].input if t in stored}
        owners = {_owner(t, modules) for t in reads}
        fused = sorted((p for p in owners if p and p not in have_body and not _inside(p, layer.path)
                        and not _inside(layer.path, p)), key=rank.__getitem__)
        if fused:
            kinds = " + ".join(describe_module(p, modules[p]).split(" (", 1)[1][:-1] for p in [*fused, layer.path])
            label = f"{' + '.join([*fused, layer.path])}, fused ({kinds})"
            layer = dataclasses.replace(layer, fused=tuple(fused), label=label)
        grouped.append(layer)
    return grouped


def _owner(tensor: str, modules: dict) -> str | None:
    """The module whose parameter ``tensor`` is named after (``layer1.conv.weight_bias`` -> ``layer1.conv``)."""
    parts = tensor.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:cut])
        if path in modules:
            return path
    return None


def _inherit_scopes(graph, scopes: dict[str, str | None]) -> None:
    """Nodes a conversion added (Q/DQ pairs, Casts) belong to the layer they serve: a QuantizeLinear (and its
    DequantizeLinear, and a Cast) to the layer whose output it converts; a weight's DequantizeLinear to the layer
    that reads it. Applied until nothing changes."""
    producer = {t: n for n in graph.node for t in n.output}
    consumers = consumers_of(graph)
    stored = {i.name for i in graph.initializer}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if scopes.get(node.name) is not None or node.op_type not in HELPER_OPS or not node.input:
                continue
            source = producer.get(node.input[0])
            if node.input[0] in stored or source is None or source.op_type == "Constant":
                users = [scopes.get(c.name) for c in consumers.get(node.output[0], [])]
                scope = next((u for u in users if u is not None), None)  # a weight's DQ: the layer reading it
            else:
                scope = scopes.get(source.name)  # an activation's Q/DQ/Cast: the layer that produced it
            if scope is not None:
                scopes[node.name] = scope
                changed = True


def _is_constant(tensor: str, graph) -> bool:
    return any(n.op_type == "Constant" and tensor in n.output for n in graph.node)


def bundle_source(bundle: Path, description: dict) -> Path:
    """The ONNX a bundle (OpenVINO, ncnn) was converted from: beside the bundle, with the SHA-256 its model.json
    records."""
    from gap_deploy.runtime.errors import UsageError
    from gap_deploy.runtime.files import sha256_file

    recorded = description.get("source_sha256")
    named = bundle.parent / str(description.get("source", ""))
    candidates = [named] if named.is_file() else []
    candidates += [p for p in sorted(bundle.parent.glob("*.onnx")) if p != named]
    found = next((p for p in candidates if p.suffix == ".onnx" and sha256_file(p) == recorded), None)
    if found is None:
        raise UsageError(f"the ONNX {bundle.name} was converted from ({description.get('source')}) is not beside it "
                         f"(no .onnx in {bundle.parent} has the SHA-256 its model.json records).",
                         hint="put the model the bundle was packed from next to the bundle folder: its node names "
                              "say which PyTorch module each of its tensors belongs to.")
    return found


# ---- measuring ----------------------------------------------------------------------------------------------

def _torch_values(module: nn.Module, paths: Sequence[str], inputs: Sequence[np.ndarray]
                  ) -> dict[str, tuple[list[np.ndarray], list[np.ndarray | None]]]:
    """path -> (outputs per input, first positional input per input), from forward hooks on ``paths`` only."""
    named = dict(module.named_modules())
    found: dict[str, tuple[list, list]] = {p: ([], []) for p in paths}
    handles = []

    def hook(path):
        def record(_mod, args, output):
            if isinstance(output, torch.Tensor):
                found[path][0].append(output.detach().cpu().numpy().copy())
                first = args[0] if args and isinstance(args[0], torch.Tensor) else None
                found[path][1].append(None if first is None else first.detach().cpu().numpy().copy())
        return record

    for path in paths:
        handles.append(named[path].register_forward_hook(hook(path)))
    try:
        with torch.no_grad():
            for x in inputs:
                module(torch.from_numpy(x))
    finally:
        for handle in handles:
            handle.remove()
    return found


def _added_error(artifact: onnx.ModelProto, layer: Layer, torch_in: list, torch_out: list,
                 onnx_values: dict[str, list]) -> tuple[float | None, str]:
    """The error of the layer's nodes alone, run on PyTorch's own input to the module."""
    if layer.path == "":
        return None, "the whole model"
    if len(layer.inputs) != 1 or any(x is None for x in torch_in):
        return None, f"not isolated: {len(layer.inputs)} ONNX inputs"
    seen_in = onnx_values.get(layer.inputs[0])
    if not seen_in or layer.output not in onnx_values:
        return None, "not isolated: its input is not a tensor of this artifact"
    if seen_in[0].shape != torch_in[0].shape:
        return None, (f"fused with the layer before it (its ONNX input {layer.inputs[0]} is "
                      f"{format_shape(seen_in[0].shape)}, PyTorch's input is {format_shape(torch_in[0].shape)})")
    dtypes = {name: values[0].dtype for name, values in onnx_values.items() if values}
    try:
        return added_error(artifact, layer.nodes, layer.inputs[0], layer.output, torch_in, torch_out, dtypes), ""
    except Exception as exc:  # an op that needs more than the layer's own nodes
        from gap_deploy.runtime.errors import first_line

        return None, f"not isolated: {first_line(exc)[:80]}"


def debug_artifact(module: nn.Module, reference: onnx.ModelProto, artifact: onnx.ModelProto, name: str,
                   inputs: Sequence[np.ndarray], *, tolerance: float = 1e-4, chunk: int = DEFAULT_CHUNK,
                   log: Callable[[str], None] = lambda _: None) -> DebugReport:
    """Every layer of ``module`` against its tensor in ``artifact`` on ``inputs`` (NCHW float32 arrays)."""
    module = module.eval()
    layers, unattributed = attribute(module, reference, artifact)

    def values(wanted: list[str]) -> dict[str, list]:
        found: dict[str, list] = {}
        for part in tensor_values(artifact, wanted, inputs, chunk=len(wanted)):
            found.update(part)
        return found

    results = compare_layers(module, layers, inputs, values,
                             lambda layer, ins, out, seen: _added_error(artifact, layer, ins, out, seen),
                             chunk=chunk, log=log, runtime="ONNX", missing="not in this artifact (folded or fused "
                                                                              "by the conversion)")
    return DebugReport(name, tolerance, [tuple(x.shape) for x in inputs], results, unattributed, chunk)


def compare_layers(module: nn.Module, layers: list[Layer], inputs: Sequence[np.ndarray], values, added, *,
                   chunk: int, log: Callable[[str], None], runtime: str, missing: str) -> list[LayerResult]:
    """The comparison every runtime shares, ``chunk`` layers at a time (memory bounded by the chunk): PyTorch's
    values of the chunk's modules (hooks), the runtime's values of their output and input tensors
    (``values(tensor names) -> {name: [array per input]}``), the error, and the error the layer adds alone
    (``added(layer, PyTorch's input, PyTorch's output, the runtime's values) -> (error or None, note)``)."""
    results: list[LayerResult] = []
    ordered = sorted(layers, key=lambda layer: layer.order)
    label = "" if runtime == "ONNX" else f" ({runtime})"
    for start in range(0, len(ordered), max(1, chunk)):
        part = ordered[start:start + max(1, chunk)]
        log(f"  layers {start + 1}-{start + len(part)} of {len(ordered)}{label} ...")
        torch_side = _torch_values(module, list(dict.fromkeys(
            [layer.path for layer in part] + [layer.fused[0] for layer in part if layer.fused])), inputs)
        seen = values([layer.output for layer in part] + [layer.inputs[0] for layer in part if len(layer.inputs) == 1])
        for layer in part:
            out, ins = torch_side[layer.path]
            got = seen.get(layer.output)
            if got is None or len(out) != len(inputs):
                results.append(LayerResult(layer, note=missing))
                continue
            if any(g.shape != o.shape for g, o in zip(got, out)):
                results.append(LayerResult(layer, note=f"{runtime} shape {got[0].shape} vs PyTorch {out[0].shape}"))
                continue
            error = layer_error(out, [g.astype(np.float32) for g in got])
            if layer.fused:  # the fused nodes read the first module's input
                ins = torch_side[layer.fused[0]][1]
            alone, note = added(layer, ins, out, seen)
            results.append(LayerResult(layer, error, alone, note))
        del torch_side, seen
    return results


#: what a report of an engine rebuilt with marked outputs says about its figures
FUSION_NOTE = ("TensorRT engines rebuilt per chunk with that chunk's tensors marked as outputs: TensorRT cannot "
               "fuse a layer whose output is marked, so these engines may fuse (and round) differently from the "
               "deployed plan; the figures are theirs.")


def debug_engine(module: nn.Module, reference: onnx.ModelProto, source: onnx.ModelProto, name: str,
                 inputs: Sequence[np.ndarray], config, *, trt, cuda, tolerance: float = 1e-2,
                 chunk: int = DEFAULT_CHUNK, log: Callable[[str], None] = lambda _: None) -> DebugReport:
    """The report for a TensorRT engine of ``source`` (the ONNX the plan was built from): per chunk of layers,
    the network is parsed again, the chunk's tensors are marked as outputs, an engine is built (the timing cache
    of the first build reused by the next ones) and run, and its values compared with PyTorch's. The error a
    layer adds alone is not measured for engines (a layer cannot be run alone in TensorRT without rebuilding)."""
    import dataclasses
    import tempfile

    from gap_deploy.exporter.builder import build_plan, create_config, parse_network, save_timing_cache
    from gap_deploy.runtime.backends.trt import TrtRunner
    from gap_deploy.runtime.onnx_file import save_onnx

    module = module.eval()
    layers, unattributed = attribute(module, reference, source)
    ordered = sorted(layers, key=lambda layer: layer.order)
    spec = describe(source)
    profiles = tuple(config.profiles) or (spec.default_profile(),)
    results: list[LayerResult] = []
    with tempfile.TemporaryDirectory(prefix="gap-debug-trt-") as work:
        onnx_path = save_onnx(source, Path(work) / "model.onnx")[-1]
        cache = Path(work) / "timing.cache"
        config = dataclasses.replace(config, timing_cache=cache, profiles=profiles)
        for start in range(0, len(ordered), max(1, chunk)):
            part = ordered[start:start + max(1, chunk)]
            log(f"  TensorRT: layers {start + 1}-{start + len(part)} of {len(ordered)}: marking, building ...")
            parsed = parse_network(trt, onnx_path)
            network = parsed.network
            tensors = {}
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                for j in range(layer.num_outputs):
                    tensor = layer.get_output(j)
                    tensors[tensor.name] = tensor
            marked = [layer for layer in part if layer.output in tensors and layer.path]
            for output in dict.fromkeys(layer.output for layer in marked):  # a block and its last child share one
                # the graph's own output is marked already by the parser: TensorRT reports marking it again as an
                # API error (NvInfer.h gives markOutput no idempotency; Polygraphy unmarks before it marks)
                if not tensors[output].is_network_output:
                    network.mark_output(tensors[output])
            cfg = create_config(parsed, spec.input_name, profiles, config, log)
            plan = Path(work) / f"chunk{start}.plan"
            plan.write_bytes(build_plan(parsed, cfg, onnx_path))
            save_timing_cache(cfg, cache, log)
            runner = TrtRunner(plan, trust_engine=True, trt=trt, cuda=cuda, marked_outputs=True)
            try:
                seen = [runner.infer_outputs(x) for x in inputs]
            finally:
                runner.close()
            torch_side = _torch_values(module, [layer.path for layer in part], inputs)
            for layer in part:
                out, _ = torch_side[layer.path]
                got = [values.get(layer.output if layer.path else spec.output_name) for values in seen]
                if layer not in marked and layer.path:
                    results.append(LayerResult(layer, note="not a tensor of the TensorRT network"))
                    continue
                arrays = [g for g in got if g is not None]
                if len(arrays) != len(got) or any(g.shape != o.shape for g, o in zip(arrays, out)):
                    results.append(LayerResult(layer, note="the engine did not give this tensor"))
                else:
                    results.append(LayerResult(layer, layer_error(out, [g.astype(np.float32) for g in arrays]),
                                               None, "engine"))
    report = DebugReport(name, tolerance, [tuple(x.shape) for x in inputs], results, unattributed, chunk)
    report.note = FUSION_NOTE
    return report


def plot_axis(reports: Sequence[DebugReport]) -> list[str]:
    """The layers every report compared, in graph order, each once: a layer one runtime compares and another
    cannot (a group fused in one, split in another) is placed after the layer before it in its own report, so
    the same layer sits at the same x in every line."""
    axis: list[str] = []
    for report in reports:
        previous = -1
        for result in sorted(report.layers, key=lambda r: r.layer.depth):
            if result.error is None:
                continue
            name = result.layer.name
            if name not in axis:
                axis.insert(previous + 1, name)
            previous = axis.index(name)
    return axis


def plot(reports: Sequence[DebugReport], path: str | Path) -> Path:
    """Relative error against depth, one line per artifact (log scale), the first layer over tolerance marked."""
    from gap_deploy.runtime.plot import publish_figure, pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 4.5))
    axis = plot_axis(reports)
    for report in reports:
        pairs = [(r, r.error) for r in sorted(report.layers, key=lambda r: r.layer.depth) if r.error is not None]
        rows = [r for r, _ in pairs]
        xs = [axis.index(r.layer.name) for r in rows]
        ys = [max(e.rel_err, 1e-12) if math.isfinite(e.rel_err) else 1e6 for _, e in pairs]
        (line,) = ax.plot(xs, ys, marker="o", label=Path(report.artifact).name)
        ax.axhline(report.tolerance, color=line.get_color(), linestyle="--", linewidth=1, alpha=0.7,
                   label=f"its tolerance ({report.tolerance:g})")
        first = report.first_over
        if first is not None and first in rows:
            i = rows.index(first)
            ax.annotate(first.layer.path, (xs[i], ys[i]), textcoords="offset points", xytext=(5, 8), fontsize=8)
            ax.plot([xs[i]], [ys[i]], marker="*", markersize=14, color="red")
    if axis:
        ax.set_xticks(range(len(axis)), [name or "(output)" for name in axis], rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("relative error against PyTorch")
    ax.set_xlabel("layer (graph order)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return publish_figure(fig, path)
