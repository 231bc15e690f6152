"""Where ONNX Runtime really ran each node, read from its profiling output, and the no-silent-CPU rule.

Why not ``session.disable_cpu_ep_fallback``: onnxruntime refuses that switch together with an explicitly
listed CPU provider ("Conflicting session configuration"), and without the CPU provider it fails every
session in which the CUDA provider leaves shape-computing nodes (Shape and the Gather/Unsqueeze/Concat
that consume it) to the CPU on purpose, which it does for speed (onnxruntime issue 17930). So a session
is created normally, one inference runs with profiling on, and the profile's per-node ``provider`` says
where each node ran. A node on the CPU whose outputs are all integers or booleans is shape arithmetic
and allowed (listed in ``Session.cpu_nodes``); a node on the CPU that produces floating-point tensors is
real compute, and fails the session unless the caller allows CPU fallback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CPU = "CPUExecutionProvider"
#: element types in onnxruntime's profiling ``output_type_shape`` that hold no image data
_SHAPE_TYPES = {"int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool"}


@dataclass(frozen=True)
class NodePlacement:
    """One executed node: its (optimized-graph) name, op type, provider and output element types."""

    name: str
    op_type: str
    provider: str
    output_types: tuple[str, ...]

    @property
    def computes_shapes_only(self) -> bool:
        """True when every output is an integer or boolean tensor: shape arithmetic, not image compute."""
        return bool(self.output_types) and all(t in _SHAPE_TYPES for t in self.output_types)

    def describe(self) -> str:
        return f"{self.name} ({self.op_type})"


def read_profile(path: str | Path) -> list[NodePlacement]:
    """The executed nodes of an onnxruntime profiling file (Chrome trace JSON; events of category "Node")."""
    events = json.loads(Path(path).read_text(encoding="utf-8"))
    seen: dict[str, NodePlacement] = {}
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        args = event.get("args") or {}
        provider = args.get("provider")
        if not provider:  # the session's own events (fences, before/after run) name no provider
            continue
        name = str(event.get("name", "")).removesuffix("_kernel_time")
        types = tuple(str(next(iter(entry))) for entry in args.get("output_type_shape", []) if entry)
        seen.setdefault(name, NodePlacement(name, str(args.get("op_name", "?")), str(provider), types))
    return list(seen.values())


def check_placement(nodes: list[NodePlacement], accelerators: tuple[str, ...], *, backend: str, path,
                    allow_cpu_fallback: bool = False, must_use: str | None = None) -> tuple[NodePlacement, ...]:
    """The shape nodes that run on the CPU; raises BackendUnavailableError for CPU compute nodes.

    ``accelerators`` are the providers the backend means to compute on (ort-cuda: CUDA; ort-trt:
    TensorRT and CUDA). With ``allow_cpu_fallback`` every CPU node is accepted and returned.
    """
    from gap_deploy.runtime.errors import BackendUnavailableError

    if not nodes:
        raise BackendUnavailableError(f"backend '{backend}' ran {path} but onnxruntime's profile lists no node, so "
                                      "where the model runs cannot be checked.",
                                      hint="pass allow_cpu_fallback=True to skip the check.")
    on_cpu = tuple(n for n in nodes if n.provider == CPU)
    compute = [n for n in on_cpu if not n.computes_shapes_only]
    other = sorted({n.provider for n in nodes if n.provider != CPU and n.provider not in accelerators})
    if other:
        raise BackendUnavailableError(f"backend '{backend}' ran nodes of {path} on {', '.join(other)}, which it "
                                      f"does not use ({', '.join(accelerators)} expected).")
    if must_use and not any(n.provider == must_use for n in nodes):
        ran = ", ".join(sorted({n.provider for n in nodes}))
        raise BackendUnavailableError(
            f"backend '{backend}' ran no node of {path} on {must_use} (all ran on {ran}), so its figures would be "
            "another provider's.",
            note=f"onnxruntime hands a graph that {must_use} rejects, or whose libraries it cannot load, to the next "
                 "provider without a word.",
            hint="run it as ort-cuda, or find the provider's reason in onnxruntime's verbose log "
                 "(SessionOptions.log_severity_level = 0).")
    if compute and not allow_cpu_fallback:
        names = ", ".join(n.describe() for n in compute[:8]) + (f" and {len(compute) - 8} more"
                                                               if len(compute) > 8 else "")
        raise BackendUnavailableError(
            f"backend '{backend}' would run {len(compute)} compute node(s) of {path} on the CPU: {names}.",
            note=f"{accelerators[0]} has no kernel for them at these types; shape nodes on the CPU are allowed.",
            hint="run on ort-cpu, re-export with ops the GPU provider supports, or pass allow_cpu_fallback=True "
                 "to accept the CPU for those nodes.")
    return on_cpu
