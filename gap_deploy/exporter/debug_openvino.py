"""gap-debug for an OpenVINO bundle: every layer's tensor from OpenVINO's own execution of the IR, against PyTorch.

The IR is OpenVINO's conversion of the ONNX the bundle names (model.json's ``source`` and its SHA-256, found beside
the bundle), and OpenVINO's ONNX frontend keeps every ONNX tensor name on the operation output that computes it, so
the layers are attributed as for that ONNX (exporter.debug.attribute: module paths from the exporter's node
metadata, conv + BatchNorm folds as one group) and each layer's output is read from the IR by that name. The IR is
read once; per chunk of layers a copy of it gets the chunk's tensors added as model outputs (``Model.add_outputs``),
is compiled for the CPU with the precision hint the ov-cpu backend uses, and run. A layer's added error is its own
operations alone: a copy of the IR cut at the layer's input (a Parameter in place of the tensor) and output,
compiled and run by OpenVINO on PyTorch's input to the module.

What it cannot see: OpenVINO's CPU plugin fuses operations when it compiles (convolution + activation, and for INT8
the FakeQuantize around them); an operation whose output is asked for is kept, so the figures are those of a
compiled model that fuses a little less than the deployed one (said in the report), as TensorRT's are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from gap_deploy.exporter.debug import DEFAULT_CHUNK, DebugReport, Layer, attribute, compare_layers
from gap_deploy.runtime.backends.openvino import CPU_CONFIG
from gap_deploy.runtime.errors import first_line
from gap_deploy.runtime.layers import layer_error

#: what the report of an OpenVINO bundle says about its figures
FUSION_NOTE = ("OpenVINO IR compiled per chunk with that chunk's tensors added as outputs: its CPU plugin keeps an "
               "operation whose output is asked for, so these compiled models may fuse (and round) a little "
               "differently from the deployed one; the figures are theirs.")


def tensor_outputs(model) -> dict:
    """Every tensor name of an OpenVINO model -> the operation output that computes it."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Result":
            continue
        for output in op.outputs():
            for name in output.get_names():
                found.setdefault(name, output)
    return found


def _values(ov, ir, tensors: Sequence[str], inputs: Sequence[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """``tensors``' values from OpenVINO's execution of the IR (a copy of ``ir``, the model read once), per input
    (a name the IR lacks is left out)."""
    model = ir.clone()
    outputs = tensor_outputs(model)
    present = [t for t in dict.fromkeys(tensors) if t in outputs]
    given = [t for t in present if outputs[t].get_node().get_type_name() == "Parameter"]  # the model's input
    computed = [t for t in present if t not in given]
    values: dict[str, list[np.ndarray]] = {t: [np.asarray(x) for x in inputs] for t in given}
    if not computed:
        return values
    model.add_outputs([outputs[t] for t in computed])
    compiled = ov.Core().compile_model(model, "CPU", CPU_CONFIG)
    ports = {t: compiled.output(t) for t in computed}
    values.update({t: [] for t in computed})
    request = compiled.create_infer_request()
    for x in inputs:
        request.infer({0: x})
        for t, port in ports.items():
            values[t].append(np.array(request.get_tensor(port).data, copy=True))
    return values


def _added(ov, ir, layer: Layer, torch_in: list, torch_out: list,
           seen: dict[str, list[np.ndarray]]) -> tuple[float | None, str]:
    """The error of the layer's operations alone: the IR cut at its input and output, run on PyTorch's input."""
    if layer.path == "":
        return None, "the whole model"
    if len(layer.inputs) != 1 or any(x is None for x in torch_in):
        return None, f"not isolated: {len(layer.inputs)} inputs"
    seen_in = seen.get(layer.inputs[0])
    if not seen_in:
        return None, "not isolated: its input is not a tensor of this IR"
    if seen_in[0].shape != np.shape(torch_in[0]):
        return None, (f"fused with the layer before it (its input {layer.inputs[0]} is {seen_in[0].shape}, "
                      f"PyTorch's input is {np.shape(torch_in[0])})")
    outputs = tensor_outputs(ir.clone())
    source, result = outputs[layer.inputs[0]], outputs.get(layer.output)
    if result is None:
        return None, "not isolated: its output is not a tensor of this IR"
    try:
        parameter = ov.opset13.parameter(source.get_partial_shape(), source.get_element_type(), name="layer_input")
        for target in list(source.get_target_inputs()):
            target.replace_source_output(parameter.output(0))
        cut = ov.Model([result], [parameter], "layer")
        compiled = ov.Core().compile_model(cut, "CPU", CPU_CONFIG)
        got = [np.asarray(compiled(np.asarray(x, dtype=np.float32))[0]) for x in torch_in]
    except Exception as exc:  # the output also depends on another input of the model (a skip from elsewhere)
        return None, f"not isolated: {first_line(exc)[:80]}"
    if any(g.shape != np.shape(o) for g, o in zip(got, torch_out)):
        return None, "not isolated: its output has another shape than PyTorch's"
    return layer_error(torch_out, [g.astype(np.float32) for g in got]).rel_err, ""


def debug_openvino(module: nn.Module, reference, source, xml: Path, name: str, inputs: Sequence[np.ndarray], *,
                   tolerance: float = 1e-4, chunk: int = DEFAULT_CHUNK,
                   log: Callable[[str], None] = lambda _: None) -> DebugReport:
    """Every layer of ``module`` against its tensor in OpenVINO's execution of ``xml`` (converted from the ONNX
    ``source``, a ModelProto) on ``inputs``."""
    from gap_deploy.runtime._lazy import require
    from gap_deploy.runtime.backends.openvino import HINT, no_telemetry, read_ir

    no_telemetry()
    ov = require("openvino", purpose="to debug an OpenVINO bundle", hint=HINT)
    ir = read_ir(xml)[0]  # read and checked once; each use works on its own copy
    module = module.eval()
    layers, unattributed = attribute(module, reference, source)
    results = compare_layers(module, layers, inputs, lambda wanted: _values(ov, ir, wanted, inputs),
                             lambda layer, ins, out, seen: _added(ov, ir, layer, ins, out, seen), chunk=chunk,
                             log=log, runtime="OpenVINO",
                             missing="not in this IR (folded or renamed by OpenVINO's converter)")
    return DebugReport(name, tolerance, [tuple(x.shape) for x in inputs], results, unattributed, chunk,
                       note=FUSION_NOTE)
