"""Error per layer: the one measurement behind gap-debug and the FP16/INT8 automatic FP32 fallback.

``layer_error(reference, candidate)`` compares one layer's values (a list of arrays, one per input) and gives
the relative error, the largest absolute error, the cosine similarity, the reference values beyond float16's
range and the candidate's NaN/Inf. ``tensor_values`` exposes an ONNX model's intermediate tensors to ONNX
Runtime a chunk at a time (``chunk`` tensors become extra graph outputs per session), so only one chunk's
activations are ever held, however large the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

FLOAT16_MAX = 65504.0
DEFAULT_CHUNK = 16


@dataclass(frozen=True)
class LayerError:
    #: ||candidate - reference|| / ||reference|| over every input (inf when the candidate is not finite)
    rel_err: float
    max_abs_err: float
    #: cosine similarity of the flattened values (1.0: same direction)
    cosine: float
    #: reference values with |x| > 65504: they cannot be held in float16
    beyond_fp16: int
    #: NaN or infinite values in the candidate
    nonfinite: int

    def to_dict(self) -> dict:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in asdict(self).items()}


def layer_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> LayerError:
    """The error of ``candidate`` against ``reference`` (the same layer's values for the same inputs)."""
    diff_sq = ref_sq = dot = cand_sq = 0.0
    max_abs = 0.0
    beyond = nonfinite = 0
    for ref, got in zip(reference, candidate):
        ref = np.asarray(ref, dtype=np.float64).ravel()
        got = np.asarray(got, dtype=np.float64).ravel()
        if ref.shape != got.shape:
            raise ValueError(f"a layer's values have {got.size} elements against the reference's {ref.size}")
        bad = ~np.isfinite(got)
        nonfinite += int(bad.sum())
        beyond += int((np.abs(ref) > FLOAT16_MAX).sum())
        if bad.any():
            diff_sq = math.inf
            max_abs = math.inf
            continue
        d = got - ref
        diff_sq += float(d @ d)
        ref_sq += float(ref @ ref)
        cand_sq += float(got @ got)
        dot += float(ref @ got)
        max_abs = max(max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
    rel = math.inf if not math.isfinite(diff_sq) else math.sqrt(diff_sq) / max(math.sqrt(ref_sq), 1e-30)
    cosine = dot / max(math.sqrt(ref_sq) * math.sqrt(cand_sq), 1e-30) if math.isfinite(diff_sq) else math.nan
    if ref_sq == 0.0 and cand_sq == 0.0 and nonfinite == 0:
        cosine = 1.0
    return LayerError(rel, max_abs, cosine, beyond, nonfinite)


def consumers_of(graph) -> dict[str, list]:
    """Each tensor name of an ONNX graph -> the nodes that read it, in graph order."""
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def with_outputs(model, names: Sequence[str]):
    """A copy of ``model`` that also outputs the tensors ``names`` (typed from shape inference); a name the graph
    does not produce (a stale value_info, a tensor a conversion folded away) is left out."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    copy = onnx.ModelProto()
    copy.CopyFrom(inferred)
    present = {o.name for o in copy.graph.output}
    produced = {t for n in copy.graph.node for t in n.output} | {i.name for i in copy.graph.input}
    for name in names:
        if name in known and name in produced and name not in present:
            copy.graph.output.append(known[name])
    return copy


def tensor_values(model, tensors: Sequence[str], inputs: Sequence[np.ndarray], *,
                  chunk: int = DEFAULT_CHUNK) -> Iterator[dict[str, list[np.ndarray]]]:
    """The values of ``tensors`` for each input, ``chunk`` tensors at a time: one dict per chunk (tensor -> one
    array per input), from ONNX Runtime on the CPU. A tensor the model does not produce is absent."""
    from gap_deploy.runtime.backends.onnxrt import cpu_session

    names = list(dict.fromkeys(tensors))
    for start in range(0, len(names), max(1, chunk)):
        part = names[start:start + max(1, chunk)]
        session = cpu_session(with_outputs(model, part).SerializeToString())
        outputs = [o.name for o in session.get_outputs()]
        input_name = session.get_inputs()[0].name
        found: dict[str, list[np.ndarray]] = {n: [] for n in outputs if n in part}
        for x in inputs:
            for name, value in zip(outputs, session.run(outputs, {input_name: x})):
                if name in found:
                    found[name].append(np.asarray(value))
        yield found
        del session


def activations(model, tensors: Sequence[str], inputs: Sequence[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Every value of ``tensors`` at once (small models: the fallback's searches)."""
    merged: dict[str, list[np.ndarray]] = {}
    for part in tensor_values(model, tensors, inputs):
        merged.update(part)
    return merged


#: nodes a conversion adds around a layer: its input's quantization or cast belongs to the layer when measured
HELPER_OPS = ("QuantizeLinear", "DequantizeLinear", "Cast")


def extract(model, nodes: Sequence[str], input_name: str, output_name: str, dtypes: dict):
    """The nodes ``nodes`` of ``model`` as a model of their own, from ``input_name`` to ``output_name``; the
    initializers they read come along, and so do the nodes that make their weights from initializers alone
    (a weight's DequantizeLinear, a Constant). Tensor types are ``dtypes`` (as ONNX Runtime produced them)."""
    from onnx import helper

    graph = model.graph
    stored = {i.name: i for i in graph.initializer}
    producer = {t: n for n in graph.node for t in n.output}
    chosen = {n.name: n for n in graph.node if n.name in set(nodes)}

    def from_weights(node) -> bool:
        return all(not t or t in stored or (t in producer and producer[t].op_type == "Constant") for t in node.input)

    grew = True
    while grew:
        grew = False
        for node in list(chosen.values()):
            for t in node.input:
                source = producer.get(t)
                if t and t != input_name and t not in stored and source is not None and source.name not in chosen \
                        and from_weights(source):
                    chosen[source.name] = source
                    grew = True
    for node in list(chosen.values()):  # the Constants those weight nodes read
        for t in node.input:
            source = producer.get(t)
            if source is not None and source.op_type == "Constant" and source.name not in chosen:
                chosen[source.name] = source
    order = {n.name: i for i, n in enumerate(graph.node)}
    body = sorted(chosen.values(), key=lambda n: order[n.name])
    needed = {t for n in body for t in n.input}

    def info(name: str):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[name])), None)

    sub = helper.make_graph(body, "layer", [info(input_name)], [info(output_name)],
                            [stored[t] for t in sorted(needed) if t in stored])
    extracted = helper.make_model(sub, opset_imports=list(model.opset_import))
    extracted.ir_version = model.ir_version
    return extracted


def added_error(model, nodes: Sequence[str], input_name: str, output_name: str, reference_in: Sequence[np.ndarray],
                reference_out: Sequence[np.ndarray], dtypes: dict) -> float:
    """The relative error a layer adds by itself: its nodes alone (``extract``) run on the reference's own input
    to it, against the reference's output (layer_error). Raises where the nodes cannot run alone."""
    from gap_deploy.runtime.backends.onnxrt import cpu_session

    session = cpu_session(extract(model, nodes, input_name, output_name, dtypes).SerializeToString(), quiet=True)
    name = session.get_inputs()[0].name
    with np.errstate(over="ignore"):  # values beyond float16's range become inf, as in the model itself
        feeds = [np.asarray(x).astype(dtypes[input_name]) for x in reference_in]
    got = [np.asarray(session.run(None, {name: x})[0]) for x in feeds]
    if any(g.shape != np.shape(r) for g, r in zip(got, reference_out)):
        raise ValueError("the layer's output has another shape than the reference's")
    return layer_error(reference_out, [g.astype(np.float32) for g in got]).rel_err
