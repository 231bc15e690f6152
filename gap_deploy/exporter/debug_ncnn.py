"""gap-debug for an ncnn bundle: every blob ncnn's own extractor computes, mapped to the PyTorch modules.

pnnx converts the ONNX the bundle names (model.json's ``source`` and its SHA-256, found beside the bundle) and keeps
none of its names: blobs are numbers, layers are ``convrelu_1``, ``conv_10``. The mapping is by structure, read from
both graphs and never from values (a value match would hide the fault being looked for):

- the layers that compute something ncnn cannot drop (convolutions, fully connected layers, pools, global pools and
  reductions, binary operations of two tensors, concatenations) keep their order: the k-th convolution of the .param
  is the k-th ONNX Conv, and so on per kind. Each pair is checked (a convolution's outputs, kernel and weight count);
  where a kind's counts or checks disagree, that kind is not mapped and the report says so;
- an activation is the ncnn layer of its kind that reads the blob of its input. Where pnnx fused the activation into
  the convolution before it (``9=`` activation_type, ``convrelu``), the convolution has no blob of its own: the
  activation's blob is that layer's output, reported at the activation with the group it computes named;
- a reshape or flatten is the ncnn layer that reads its input's blob, or (pnnx drops a flatten after a global pool)
  the same values as its input.

Values come from ncnn's extractor with the options the bundle's runner uses (FP16 storage and arithmetic only for an
FP16 bundle), one image at a time (an ncnn Mat has no batch). A layer's added error is ncnn's layer alone: its input
blob given PyTorch's input to the module (ncnn computes only what the wanted blob needs, so nothing before it runs);
only where one ncnn layer (or a Split before it) computes the blob from that input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from gap_deploy.exporter.debug import DEFAULT_CHUNK, DebugReport, Layer, attribute, compare_layers
from gap_deploy.runtime.backends.edge import NcnnLayer
from gap_deploy.runtime.layers import consumers_of, layer_error

FUSION_NOTE = ("ncnn's extractor on the bundle's own .param/.bin, blobs mapped to the ONNX by structure (pnnx keeps "
               "no names): pnnx fuses an activation into the convolution before it, so such a convolution (and its "
               "BatchNorm) has no blob of its own and is reported at the activation.")

#: ONNX activation -> the ncnn layer types that compute it alone
ACTIVATIONS = {"Relu": ("ReLU",), "LeakyRelu": ("ReLU",), "Clip": ("Clip", "ReLU"), "Sigmoid": ("Sigmoid",),
               "HardSigmoid": ("HardSigmoid",), "HardSwish": ("HardSwish",), "Tanh": ("TanH",), "Elu": ("ELU",),
               "Mish": ("Mish",), "Gelu": ("GELU",), "Softmax": ("Softmax",)}
#: ONNX per-channel layers of one input -> the ncnn layers that compute them (a BatchNorm not after a convolution:
#: pre-activation networks)
PER_CHANNEL = {"BatchNormalization": ("BatchNorm", "Scale")}
RESHAPES = {"Reshape": ("Reshape", "Flatten"), "Flatten": ("Flatten", "Reshape"),
            "Squeeze": ("Squeeze", "Reshape"), "Unsqueeze": ("ExpandDims", "Reshape")}
#: the ncnn layers that only hand their input on to several readers
PASS_THROUGH = ("Split",)


@dataclasses.dataclass(frozen=True)
class Blob:
    """Where an ONNX tensor's values are in ncnn: a blob, and whether they are the blob's values flattened."""

    name: str
    flatten: bool = False


@dataclasses.dataclass
class Mapping:
    """ONNX tensor -> ncnn blob, the ONNX convolutions fused into the ncnn layer of the activation after them, and
    what could not be mapped (kind -> why)."""

    blobs: dict[str, Blob]
    #: ONNX activation output -> the ONNX Conv/Gemm output it is computed with in one ncnn layer
    fused: dict[str, str]
    unmapped: dict[str, str]
    #: ncnn blob -> the layer that computes it and the blob it reads (through Splits), for one-layer "added"
    producers: dict[str, tuple[str, str | None]]


def _is_silu(node, producer: dict) -> bool:
    """``Mul(x, Sigmoid(x))``: SiLU as the exporter writes it, one Swish layer in ncnn (not a binary op)."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return False
    a, b = node.input
    return any(producer.get(s) is not None and producer[s].op_type == "Sigmoid" and producer[s].input[0] == x
               for s, x in ((a, b), (b, a)))


def _onnx_kind(node, constant, producer: dict) -> str | None:
    op = node.op_type
    if _is_silu(node, producer):
        return None
    if op == "Conv":
        return "convolution"
    if op == "Gemm" or (op == "MatMul" and constant(node.input[1])):
        return "fully connected"
    if op in ("MaxPool", "AveragePool"):
        return "pool"
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"):
        return "global pool"
    if op in ("Add", "Sub", "Mul", "Div") and not any(constant(t) for t in node.input):
        return "binary"
    if op == "Concat" and not any(constant(t) for t in node.input):
        return "concat"
    return None


def _ncnn_kind(layer) -> str | None:
    kind = layer.type
    if kind in ("Convolution", "ConvolutionDepthWise"):
        return "convolution"
    if kind in ("InnerProduct", "Gemm"):
        return "fully connected"
    if kind == "Pooling":
        return "global pool" if layer.params.get("4", "0") != "0" else "pool"
    if kind == "Reduction":
        return "global pool"
    if kind == "BinaryOp" and len(layer.bottoms) == 2:
        return "binary"
    if kind == "Concat":
        return "concat"
    return None


def _agrees(node, layer, weights: dict[str, np.ndarray]) -> bool:
    """A convolution's or fully connected layer's outputs, kernel and weight count, the same on both sides (where the
    ONNX weight is stored); other kinds pair by order alone."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return True
    w = weights[node.input[1]]
    p = layer.params
    if node.op_type == "Conv" and w.ndim == 4:
        kw = int(p.get("1", 0))
        return (int(p.get("0", 0)) == w.shape[0] and kw == w.shape[3] and int(p.get("11", kw)) == w.shape[2]
                and int(p.get("6", 0)) == w.size)
    if node.op_type == "Gemm" and w.ndim == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return int(p.get("0", 0)) == (w.shape[0] if trans_b else w.shape[1]) and int(p.get("2", 0)) == w.size
    return True


def map_blobs(source: onnx.ModelProto, layers: Sequence[NcnnLayer]) -> Mapping:
    """The ncnn blob of each ONNX tensor of ``source`` (the ONNX pnnx converted), by the structure of both graphs
    (``layers``: runtime.backends.edge.ncnn_layers of the bundle's .param)."""
    graph = source.graph
    resolved, readers, producers = _wiring(layers)
    pairs, unmapped = _pair_kinds(graph, layers)
    consumers = consumers_of(graph)
    producer = {t: n for n in graph.node for t in n.output}
    blobs: dict[str, Blob] = {}
    fused: dict[str, str] = {}
    inputs = [layer for layer in layers if layer.type == "Input"]
    if inputs:
        from gap_deploy.runtime.artifact import describe

        blobs[describe(source).input_name] = Blob(inputs[0].tops[0])
    for node in graph.node:
        if not node.output or node.output[0] in blobs:
            continue
        out = node.output[0]
        if node.name in pairs:
            layer = pairs[node.name]
            if node.op_type in ("Conv", "Gemm", "MatMul") and layer.params.get("9", "0") != "0":
                after = consumers.get(out, [])  # pnnx fused the activation: its blob is this layer's output
                if len(after) == 1 and after[0].op_type in ACTIVATIONS:
                    blobs[after[0].output[0]] = Blob(layer.tops[0])
                    fused[after[0].output[0]] = out
            else:
                blobs[out] = Blob(layer.tops[0])
            continue
        given = blobs.get(node.input[0]) if node.input else None
        kinds = ACTIVATIONS.get(node.op_type) or PER_CHANNEL.get(node.op_type) or RESHAPES.get(node.op_type)
        if _is_silu(node, producer):  # the Swish layer reading x's blob (x: the Mul's input that is not Sigmoid's)
            x = next(t for t in node.input if producer.get(t) is None or producer[t].op_type != "Sigmoid"
                     or producer[t].input[0] not in node.input)
            given, kinds = blobs.get(x), ("Swish",)
        if given is None or given.flatten or not kinds:
            continue
        reading = [layer for layer in readers.get(resolved(given.name), []) if layer.type in kinds]
        if len(reading) == 1:
            blobs[out] = Blob(reading[0].tops[0])
        elif not reading and node.op_type in RESHAPES:
            blobs[out] = Blob(given.name, flatten=True)  # pnnx dropped it: the same values
    return Mapping(blobs, fused, unmapped, producers)


def _wiring(layers: Sequence[NcnnLayer]):
    """(blob -> the blob a Split copies it from, resolved blob -> the layers reading it, blob -> (the layer
    computing it, the one blob it reads or None))."""
    alias: dict[str, str] = {}
    for layer in layers:
        if layer.type in PASS_THROUGH and layer.bottoms:
            for top in layer.tops:
                source = layer.bottoms[0]
                alias[top] = alias.get(source, source)

    def resolved(blob: str) -> str:
        return alias.get(blob, blob)

    readers: dict[str, list] = {}
    producers: dict[str, tuple[str, str | None]] = {}
    for layer in layers:
        if layer.type in PASS_THROUGH:
            continue
        for bottom in layer.bottoms:
            readers.setdefault(resolved(bottom), []).append(layer)
        for top in layer.tops:
            producers[top] = (layer.name, resolved(layer.bottoms[0]) if len(layer.bottoms) == 1 else None)
    return resolved, readers, producers


def _pair_kinds(graph, layers: Sequence[NcnnLayer]) -> tuple[dict, dict[str, str]]:
    """ONNX node name -> its ncnn layer, per kind by order where both graphs have as many of that kind and each
    pair agrees; and the kinds left unmapped, with why."""
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    constants = {t for n in graph.node if n.op_type == "Constant" for t in n.output} | set(weights)
    by_kind_onnx: dict[str, list] = {}
    by_kind_ncnn: dict[str, list] = {}
    producer = {t: n for n in graph.node for t in n.output}
    for node in graph.node:
        kind = _onnx_kind(node, constants.__contains__, producer)
        if kind:
            by_kind_onnx.setdefault(kind, []).append(node)
    for layer in layers:
        kind = _ncnn_kind(layer)
        if kind:
            by_kind_ncnn.setdefault(kind, []).append(layer)
    pairs: dict = {}
    unmapped: dict[str, str] = {}
    for kind, nodes in by_kind_onnx.items():
        theirs = by_kind_ncnn.get(kind, [])
        if len(theirs) != len(nodes):
            unmapped[kind] = f"the ONNX has {len(nodes)} {kind} layer(s), the ncnn program {len(theirs)}"
            continue
        bad = next((n.name for n, layer in zip(nodes, theirs) if not _agrees(n, layer, weights)), None)
        if bad is not None:
            unmapped[kind] = f"the {kind} layers are not in the same order in both (first that differs: {bad})"
            continue
        pairs.update({n.name: layer for n, layer in zip(nodes, theirs)})
    return pairs, unmapped


def _as_torch(value: np.ndarray, flatten: bool) -> np.ndarray:
    """ncnn's Mat (C, H, W), (H, W) or (W,) as one image of PyTorch's batch."""
    return value.reshape(1, -1) if flatten else value[None]


def debug_ncnn(module: nn.Module, reference, source: onnx.ModelProto, runner, layers_of_param: Sequence, name: str,
               inputs: Sequence[np.ndarray], *, tolerance: float = 1e-4, chunk: int = DEFAULT_CHUNK,
               log: Callable[[str], None] = lambda _: None) -> DebugReport:
    """Every layer of ``module`` against its blob in ncnn's execution (``runner``: the bundle's NcnnRunner) of the
    program pnnx converted from ``source``, on ``inputs``."""
    module = module.eval()
    layers, unattributed = attribute(module, reference, source)
    mapping = map_blobs(source, layers_of_param)
    layers = with_activations(layers, mapping)

    def values(wanted: list[str]) -> dict[str, list[np.ndarray]]:
        present = [t for t in dict.fromkeys(wanted) if t in mapping.blobs]
        blobs = list(dict.fromkeys(mapping.blobs[t].name for t in present))
        found: dict[str, list[np.ndarray]] = {t: [] for t in present}
        for x in inputs:
            per_image = [runner.blobs(x[n], blobs) for n in range(len(x))]
            for t in present:
                blob = mapping.blobs[t]
                found[t].append(np.concatenate([_as_torch(v[blob.name], blob.flatten) for v in per_image]))
        return found

    def added(layer: Layer, torch_in: list, torch_out: list, seen) -> tuple[float | None, str]:
        if layer.path == "":
            return None, "the whole model"
        source_blob, out_blob = (mapping.blobs.get(t) for t in (layer.inputs[0] if layer.inputs else "",
                                                                 layer.output))
        if len(layer.inputs) != 1 or source_blob is None or out_blob is None or any(x is None for x in torch_in):
            return None, "not isolated: its input is no blob of this program"
        producer, reads = mapping.producers.get(out_blob.name, ("", None))
        if source_blob.flatten or out_blob.flatten or reads != source_blob.name:
            return None, "not isolated: more than one ncnn layer computes it"
        got = []
        for x in torch_in:
            x = np.asarray(x, dtype=np.float32)
            got.append(np.concatenate([_as_torch(runner.blobs(x[n], [out_blob.name], given=source_blob.name)
                                                 [out_blob.name], False) for n in range(len(x))]))
        if any(g.shape != np.shape(o) for g, o in zip(got, torch_out)):
            return None, "not isolated: its output has another shape than PyTorch's"
        return layer_error(torch_out, got).rel_err, f"ncnn layer {producer} alone"

    results = compare_layers(module, layers, inputs, values, added, chunk=chunk, log=log, runtime="ncnn",
                             missing="no blob of its own in this ncnn program")
    kinds_unmapped = "; ".join(f"{k}: {why}" for k, why in mapping.unmapped.items())
    computed_with = set(mapping.fused.values())
    for n, result in enumerate(results):
        if result.layer.output in computed_with and result.error is None:
            results[n] = dataclasses.replace(result, note="no blob of its own: pnnx fused it with the activation "
                                                          "after it into one ncnn layer (compared there)")
        elif result.error is None and kinds_unmapped and result.layer.output not in mapping.blobs:
            results[n] = dataclasses.replace(result, note=f"not mapped ({kinds_unmapped})")
    return DebugReport(name, tolerance, [tuple(x.shape) for x in inputs], results, unattributed, chunk,
                       note=FUSION_NOTE + (f" Not mapped: {kinds_unmapped}." if kinds_unmapped else ""))


def with_activations(layers: list[Layer], mapping: Mapping) -> list[Layer]:
    """Each activation pnnx fused into the convolution before it, as the group it is computed with: its modules
    named with the convolution's group (``conv + bn + act``), its added error measured from the group's input."""
    by_output = {layer.output: layer for layer in layers if layer.path}
    found = []
    for layer in layers:
        group = by_output.get(mapping.fused.get(layer.output, ""))
        if layer.leaf and layer.path and group is not None and group.leaf:
            kinds = [_kinds(group), _kinds(layer)]
            layer = dataclasses.replace(layer, fused=(*group.fused, group.path), inputs=group.inputs,
                                        label=f"{group.name} + {layer.path}, fused ({' + '.join(kinds)})")
        found.append(layer)
    return found


def _kinds(layer: Layer) -> str:
    """``Conv2d 16->16, 3x3 + BatchNorm2d 16`` of a layer's label."""
    label = layer.label
    return label.split(", fused (", 1)[1][:-1] if ", fused (" in label else label.split(" (", 1)[-1][:-1]


def open_bundle(folder: Path):
    """(the bundle's NcnnRunner, its .param's layers): files checked against model.json, loaded first in a child
    process as gap-bench does."""
    from gap_deploy.runtime.backends.edge import NcnnRunner, ncnn_layers
    from gap_deploy.runtime.bundle import bundle_model, bundle_props

    param = bundle_model(folder, None)
    return NcnnRunner(param, *bundle_props(folder)), ncnn_layers(param)
