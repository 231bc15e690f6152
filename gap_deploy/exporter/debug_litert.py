"""gap-debug for a LiteRT bundle: every tensor LiteRT's own interpreter computes, mapped to the PyTorch modules.

litert-torch converts from PyTorch, not from the ONNX, and names each operation's output tensor after the module
locations it came from: ``ResNetish/...Sequential_stem/...Sequential_0/...ReLU_2;;...BatchNorm2d_1;;...Conv2d_0;1``
(each level the module's class and its attribute name; a fused operation lists every module folded into it, the
module applied last first, as seen on litert-torch 0.10). So a tensor is the output of the module its first location
names, and a module's output is the last operation output named by the module (or, for a block, by a module inside
it) whose values have PyTorch's shape (LiteRT computes NHWC: transposed back before comparing). A module folded into
a later operation (a convolution and its BatchNorm in the ReLU after them) has no tensor of its own: it is reported
so, and the operation that computes it is named by the module applied last, its note naming the rest. The
interpreter keeps every intermediate tensor (``experimental_preserve_all_tensors``, LiteRT's debugging mode, with
the default op resolver the bundle's runner uses) and runs one image at a time, resized to its shape. Every 4-D
activation is NHWC in the program and is transposed back, even where H, W and C are equal (read as NCHW, a
fault-free ResNet-D's 16x16x16 stem "departed" by 1.21).

LiteRT runs the whole program: a layer cannot be run alone, so "added" is not given (as for TensorRT).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gap_deploy.exporter.debug import DEFAULT_CHUNK, DebugReport, Layer, LayerResult, _inside, _torch_values, attribute
from gap_deploy.runtime.layers import layer_error

FUSION_NOTE = ("LiteRT's interpreter with every intermediate tensor kept (its default op resolver, as the bundle's "
               "runner; LiteRT decides what a delegate takes in this debugging mode): the converter fuses a "
               "convolution, its BatchNorm and activation into one operation, so a module folded into a later one "
               "has no tensor of its own (the operation is named by the activation, the note names the rest); a "
               "layer is not run alone, so no 'added' error is given.")
NOT_ISOLATED = "LiteRT runs the whole program: a layer is not run alone"


def locations(module: nn.Module) -> dict[str, str]:
    """Each module's location as litert-torch writes it -> its module path."""
    def qualified(m) -> str:
        return f"{type(m).__module__}.{type(m).__qualname__}"

    found = {qualified(module): ""}
    names = {"": qualified(module)}
    for path, sub in module.named_modules():
        if not path:
            continue
        parent, _, attr = path.rpartition(".")
        names[path] = f"{names[parent]}/{qualified(sub)}_{attr}"
        found[names[path]] = path
    return found


def operation_outputs(tflite: Path) -> list[int]:
    """The output tensors of the main subgraph's operations, in the program's order (the order the interpreter
    runs them), read with LiteRT's own flatbuffer schema (ai_edge_litert.schema_py_generated)."""
    from ai_edge_litert import schema_py_generated as schema

    graph: Any = schema.Model.GetRootAs(tflite.read_bytes(), 0).Subgraphs(0)
    if graph is None:
        return []
    found = []
    for n in range(graph.OperatorsLength()):
        operator: Any = graph.Operators(n)
        found += [int(i) for i in np.atleast_1d(operator.OutputsAsNumpy())]
    return found


def tensor_modules(interpreter, tflite: Path, module: nn.Module) -> list[tuple[int, str, tuple[str, ...]]]:
    """(tensor index, module path, every module path it names) of every operation output, in execution order; the
    path is the module the output's first location names ("" for the model; unnamed outputs are left out)."""
    where = locations(module)
    details = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    found = []
    for index in operation_outputs(tflite):
        parts = details.get(index, "").split(";")
        if parts[0] in where:
            named = [where[part] for part in parts if part in where]
            found.append((index, where[parts[0]], tuple(dict.fromkeys(named))))
    return found


def fused_with(path: str, named: Sequence[str]) -> list[str]:
    """The modules one LiteRT operation computes together with ``path``: those its output names that share
    ``path``'s parent (the converter also lists modules of other blocks whose constants it folded in)."""
    parent = path.rpartition(".")[0]
    return [p for p in named if p != path and p.rpartition(".")[0] == parent]


def _run(interpreter, x: np.ndarray, wanted: Sequence[int]) -> dict[int, np.ndarray]:
    """One image through the interpreter at its own shape; the ``wanted`` tensors' values."""
    entry = interpreter.get_input_details()[0]
    signature = [int(d) for d in entry.get("shape_signature", entry["shape"])]
    if -1 not in signature and list(x.shape) != signature:
        from gap_deploy.runtime.errors import UsageError
        from gap_deploy.runtime.shapes import format_shape

        raise UsageError(f"this LiteRT program is static: it takes {format_shape(signature)} only, not "
                         f"{format_shape(x.shape)}.", hint=f"give gap-debug --shape {format_shape(signature)} (or "
                                                           "--images with --imgsz of that size).")
    interpreter.resize_tensor_input(entry["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x.astype(entry["dtype"]))
    interpreter.invoke()
    return {i: np.array(interpreter.get_tensor(i), copy=True) for i in wanted}


def _as_nchw(value: np.ndarray, shape: tuple) -> np.ndarray | None:
    """LiteRT's value in PyTorch's layout: NHWC (every 4-D activation the converter writes) transposed back, even
    where H, W and C are equal; a global pool's (N, C) as (N, C, 1, 1)."""
    if value.ndim == 4 and value.transpose(0, 3, 1, 2).shape == shape:
        return value.transpose(0, 3, 1, 2)
    if value.shape == shape:
        return value
    if value.ndim == 2 and len(shape) == 4 and shape[2:] == (1, 1) and value.shape == shape[:2]:
        return value.reshape(shape)
    return None


def debug_litert(module: nn.Module, reference, tflite: Path, name: str, inputs: Sequence[np.ndarray], *,
                 tolerance: float = 1e-4, chunk: int = DEFAULT_CHUNK,
                 log: Callable[[str], None] = lambda _: None) -> DebugReport:
    """Every layer of ``module`` (as the FP32 export ``reference`` groups them) against LiteRT's tensors of
    ``tflite`` on ``inputs``."""
    from gap_deploy.runtime._lazy import require

    litert = require("ai_edge_litert.interpreter", purpose="to debug a LiteRT bundle",
                     hint="pip install 'gap-deploy[litert-run]'")
    module = module.eval()
    layers, unattributed = attribute(module, reference, reference)
    with warnings.catch_warnings():  # LiteRT warns that the mode is for debugging, which is what this is
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        interpreter = litert.Interpreter(model_path=str(tflite), experimental_preserve_all_tensors=True)
    order = {path: i for i, (path, _) in enumerate(module.named_modules())}
    outputs = tensor_modules(interpreter, tflite, module)
    model_output = interpreter.get_output_details()[0]["index"]
    results: list[LayerResult] = []
    ordered = sorted(layers, key=lambda layer: layer.order)
    for start in range(0, len(ordered), max(1, chunk)):
        part = ordered[start:start + max(1, chunk)]
        log(f"  layers {start + 1}-{start + len(part)} of {len(ordered)} (LiteRT) ...")
        torch_side = _torch_values(module, [layer.path for layer in part], inputs)
        candidates = {layer.path: _candidates(layer, outputs, model_output) for layer in part}
        wanted = sorted({i for c in candidates.values() for i in c})
        seen: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
        for x in inputs:
            per_image = [_run(interpreter, x[n:n + 1], wanted) for n in range(len(x))]
            for i in wanted:
                seen[i].append(np.concatenate([v[i] for v in per_image]))
        names = {index: named for index, _, named in outputs}
        for layer in part:
            out, _ = torch_side[layer.path]
            got, chosen = None, None
            for index in candidates[layer.path]:  # the last of the module's outputs that has its shape
                shaped = [_as_nchw(v, o.shape) for v, o in zip(seen[index], out)]
                if all(v is not None for v in shaped):
                    got, chosen = shaped, index
            if got is None:
                results.append(LayerResult(layer, note="no tensor of its own in this program (fused into a later "
                                                        "operation by the converter)"))
                continue
            error = layer_error(out, [np.asarray(g, dtype=np.float32) for g in got])
            named = names.get(chosen, ()) if chosen is not None else ()
            together = sorted(fused_with(layer.path, named), key=lambda p: order.get(p, 0)) \
                if layer.leaf and layer.path else []
            note = ("the whole model" if layer.path == "" else
                    f"one LiteRT operation with {' + '.join(together)}" if together else NOT_ISOLATED)
            results.append(LayerResult(layer, error, None, note))
        del torch_side, seen
    return DebugReport(name, tolerance, [tuple(x.shape) for x in inputs], results, unattributed, chunk,
                       note=FUSION_NOTE)


def _candidates(layer: Layer, outputs: list[tuple[int, str, tuple[str, ...]]], model_output: int) -> list[int]:
    """The tensors that may be the layer's output, in execution order: named by the layer's module (a block: by a
    module inside it, the last of them), the model's own output for the whole model."""
    if layer.path == "":
        return [model_output]
    if layer.leaf:
        return [i for i, path, _ in outputs if path == layer.path]
    inside = [i for i, path, _ in outputs if _inside(path, layer.path)]
    return inside[-1:]
