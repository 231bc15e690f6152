"""gap-debug for an ExecuTorch bundle: every module's output from ExecuTorch's own run, against PyTorch.

The bundle's model.pte lowers the whole graph into XNNPACK delegate calls whose insides ExecuTorch does not show.
So gap-pack also writes model.debug.pte (model.json's ``debug_program``): the same module, exported with every
module's output as an output of the program (forward hooks, which torch.export traces) and lowered to XNNPACK as
model.pte is, with the module path of each output. gap-debug runs it with ExecuTorch's runtime, one image at a
time, and compares each output with PyTorch's output of that module. (ExecuTorch's ETDump with a debug buffer
logs each delegate call's output too, but only per call, and the ETDump of an FP16 XNNPACK program written by
ExecuTorch 1.5.1 could not be read back: flatc crashed on it.)

What that program is: an output that is returned is not fused into what reads it, so XNNPACK does not fold a
BatchNorm into the convolution before it there: a convolution and its BatchNorm are compared separately, each at
its own output, more finely than model.pte computes them. The model's own output is the deployed model.pte's, run
by the bundle's runner; where model.pte departs and no module of the debug program does, the departure is in
what only model.pte's lowering does (its fusions), and the report says so. A layer is not run alone (ExecuTorch
runs whole programs), so no "added".
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from gap_deploy.exporter.debug import DEFAULT_CHUNK, DebugReport, Layer, LayerResult, _torch_values, describe_module
from gap_deploy.runtime.errors import ArtifactError, BackendError, UsageError, first_line
from gap_deploy.runtime.layers import layer_error
from gap_deploy.runtime.shapes import format_shape

FUSION_NOTE = ("ExecuTorch's run of {program} (the same module lowered to XNNPACK with every "
               "module's output returned): a returned output is not fused into what reads it, so a convolution and "
               "its BatchNorm are compared separately; the model's output is {output}; a layer is not run "
               "alone, so no 'added' error is given.")
NOT_ISOLATED = "ExecuTorch runs the whole program: a layer is not run alone"
REPACK = "write the bundle again with this gap-pack (--target executorch): it adds model.debug.pte."


def debug_program(folder: Path, description: dict) -> tuple[Path, list[str], int | None]:
    """The bundle's debug program (its SHA-256 checked), the module path of each output after the logits, and the
    largest side it takes (None: static), from model.json."""
    from gap_deploy.runtime.bundle import checked_bundle_file

    entry = description.get("debug_program")
    if not isinstance(entry, dict) or not isinstance(entry.get("outputs"), list):
        raise UsageError(f"{folder} has no debug program (model.json's \"debug_program\"): it was packed before "
                         "gap-debug could compare ExecuTorch bundles, or gap-pack could not make one (its output said "
                         "why).", hint=REPACK)
    name = entry.get("file")
    if not isinstance(name, str) or name not in description.get("files", {}):
        raise ArtifactError(f"{folder}/model.json names a debug program it does not list in \"files\".", hint=REPACK)
    outputs = entry["outputs"]
    side = entry.get("max_side")
    if not all(isinstance(p, str) for p in outputs) or not (side is None or isinstance(side, int)):
        raise ArtifactError(f"{folder}/model.json's debug_program is not a list of module paths and a side.",
                            hint=REPACK)
    return checked_bundle_file(folder, name, description["files"][name]), outputs, side


def module_layers(module: nn.Module, outputs: list[str]) -> list[Layer]:
    """Each module the program returns, as a layer, in the order of its output, then the model's own output."""
    from gap_deploy.exporter.debug import _inside

    named = dict(module.named_modules())
    layers = []
    for n, path in enumerate(outputs):
        if path not in named:
            continue
        depth = max(k for k, other in enumerate(outputs) if _inside(other, path))  # a block after its children
        layers.append(Layer(path, describe_module(path, named[path]), depth, f"output {n + 1}", (),
                            (f"output {n + 1} of the debug program",),
                            leaf=not any(True for _ in named[path].children())))
    layers.append(Layer("", f"(model output) ({type(module).__name__})", len(outputs) + 1, "model.pte", (), (),
                        leaf=False))
    return layers


class Programs:
    """Debug programs loaded by ExecuTorch's runtime once each (a load costs more than a run)."""

    def __init__(self):
        self._loaded: dict[Path, object] = {}

    def run(self, program: Path, image: np.ndarray, dtype, expected: int) -> list[np.ndarray]:
        """The program's outputs (the logits first) from one ExecuTorch run on one image, as float32."""
        import torch
        from executorch.extension.pybindings.portable_lib import _load_for_executorch

        from gap_deploy.exporter.pack_edge import captured_output

        try:
            with captured_output():  # ExecuTorch's start-up lines (cpuinfo)
                if program not in self._loaded:
                    self._loaded[program] = _load_for_executorch(str(program))
                outputs = self._loaded[program].forward(  # type: ignore[attr-defined]
                    (torch.from_numpy(np.ascontiguousarray(image)).to(dtype),))
        except RuntimeError as exc:  # ExecuTorch's own refusal (a shape outside the plan, a damaged program)
            raise BackendError(f"ExecuTorch could not run {program.name} on {format_shape(image.shape)}: "
                               f"{first_line(exc)}", hint=REPACK) from None
        return _checked(program, outputs, expected)


def _checked(program: Path, outputs, expected: int) -> list[np.ndarray]:
    import torch

    if len(outputs) != expected + 1 or not all(isinstance(o, torch.Tensor) for o in outputs):
        raise ArtifactError(f"{program.name} returns {len(outputs)} outputs; model.json lists {expected} module "
                            "outputs and the logits, all tensors: the record does not describe this program.",
                            hint=REPACK)
    return [np.array(o.float().numpy(), copy=True) for o in outputs]


def debug_executorch(module: nn.Module, folder: Path, description: dict, name: str, inputs: Sequence[np.ndarray], *,
                     tolerance: float = 1e-4, chunk: int = DEFAULT_CHUNK,
                     log: Callable[[str], None] = lambda _: None) -> DebugReport:
    """Every module of ``module`` against its output in ExecuTorch's run of the bundle's debug program, and the
    model's output against the bundle's model.pte, on ``inputs``."""
    import torch

    from gap_deploy import runtime
    from gap_deploy.exporter.pack_edge import captured_output
    from gap_deploy.runtime.backends.edge import load_in_child_first
    from gap_deploy.runtime.bundle import bundle_props

    program, outputs, side = debug_program(folder, description)
    props, names = bundle_props(folder)
    _check_shapes(props, side, inputs)
    with captured_output():  # executorch's import and start-up lines
        _require()
        load_in_child_first("executorch", "ExecuTorch", (program,), props, names)  # a damaged file kills a child
        session = runtime.load(folder, "et-xnnpack")
    dtype = torch.float16 if description.get("precision") == "fp16" else torch.float32
    programs = Programs()
    with session:
        return compare_program(module, lambda image: programs.run(program, image, dtype, len(outputs)), outputs,
                               name, inputs, session.run, tolerance=tolerance, chunk=chunk, log=log)


def debug_unpacked(module: nn.Module, precision: str, name: str, inputs: Sequence[np.ndarray], *,
                   tolerance: float = 1e-2, chunk: int = DEFAULT_CHUNK,
                   log: Callable[[str], None] = lambda _: None) -> DebugReport:
    """The ExecuTorch program gap-pack --target executorch --precision ``precision`` converts (FP16: a
    half-precision copy of the module, as gap-pack makes it), made here with every module's output returned, one
    static program per input shape in a temporary folder, and compared: for a model whose bundle gap-pack refused
    to write (an FP16 program that overflows does not match the ONNX)."""
    import copy

    import torch

    from gap_deploy.exporter.pack_edge import captured_output, every_output_program

    with captured_output():  # executorch's import lines
        _require()
    module = module.eval()
    half = precision == "fp16"
    converted = copy.deepcopy(module).half() if half else module
    dtype = torch.float16 if half else torch.float32
    with tempfile.TemporaryDirectory(prefix="gap-debug-et-") as tmp:
        programs: dict[tuple, tuple[Path, list[str]]] = {}

        def program_for(shape: tuple) -> tuple[Path, list[str]]:
            if shape not in programs:
                log(f"  lowering the {precision} ExecuTorch program with every module's output at {shape} ...")
                with captured_output():
                    made, outputs = every_output_program(converted, torch.zeros(shape, dtype=dtype), None)
                path = Path(tmp) / f"debug_{len(programs)}.pte"
                path.write_bytes(made)
                programs[shape] = (path, outputs)
            return programs[shape]

        first = program_for((1, *inputs[0].shape[1:]))[1]
        loaded = Programs()

        def run(image: np.ndarray) -> list[np.ndarray]:
            path, outputs = program_for(tuple(image.shape))
            return loaded.run(path, image, dtype, len(outputs))

        return compare_program(module, run, first, name, inputs, None, tolerance=tolerance, chunk=chunk, log=log)


def _require() -> None:
    from gap_deploy.runtime._lazy import require

    require("executorch.exir", purpose="to debug an ExecuTorch program",
            hint="pip install 'gap-deploy[executorch]' -c constraints/cpu.txt")


def compare_program(module: nn.Module, run: Callable[[np.ndarray], list[np.ndarray]], outputs: list[str],
                    name: str, inputs: Sequence[np.ndarray], deployed: Callable[[np.ndarray], np.ndarray] | None, *,
                    tolerance: float, chunk: int, log: Callable[[str], None]) -> DebugReport:
    """The comparison, ``chunk`` layers at a time (only their outputs kept): ``run(one image)`` gives the debug
    program's outputs; ``deployed(batch)`` the deployed program's logits for the model's own output (None: the
    debug program's own logits)."""
    module = module.eval()
    layers = module_layers(module, outputs)
    index = {path: n + 1 for n, path in enumerate(outputs)}  # output 0 is the logits
    results: list[LayerResult] = []
    ordered = sorted(layers, key=lambda layer: layer.order)
    for start in range(0, len(ordered), max(1, chunk)):
        part = ordered[start:start + max(1, chunk)]
        log(f"  layers {start + 1}-{start + len(part)} of {len(ordered)} (ExecuTorch) ...")
        torch_side = _torch_values(module, [layer.path for layer in part if layer.path], inputs)
        wanted = {index.get(layer.path, 0) for layer in part}
        seen: dict[int, list[np.ndarray]] = {k: [] for k in wanted}
        for x in inputs:
            per_image = [run(x[n:n + 1]) for n in range(len(x))]
            for k in wanted:
                if all(v[k].shape[1:] == per_image[0][k].shape[1:] for v in per_image):
                    seen[k].append(np.concatenate([v[k] for v in per_image]))
        for layer in part:
            if layer.path == "":
                results.append(_model_output(module, deployed, seen.get(0), inputs, layer, results, tolerance))
                continue
            out, _ = torch_side[layer.path]
            got = seen.get(index[layer.path], [])
            if len(out) != len(inputs):
                results.append(LayerResult(layer, note="called more than once per forward: not compared"))
            elif len(got) != len(out) or any(g.shape != o.shape for g, o in zip(got, out)):
                results.append(LayerResult(layer, note=f"ExecuTorch shape {got[0].shape if got else None} vs "
                                                        f"PyTorch {out[0].shape}"))
            else:
                results.append(LayerResult(layer, layer_error(out, got), None, NOT_ISOLATED))
        del torch_side, seen
    note = FUSION_NOTE.format(
        program="the bundle's model.debug.pte" if deployed else "the program gap-pack would convert, made here",
        output="the deployed model.pte's" if deployed else "that program's own")
    return DebugReport(name, tolerance, [tuple(x.shape) for x in inputs], results, [], chunk, note=note,
                       nodes_label="ExecuTorch",
                       fp16_hint="gap-pack's ExecuTorch FP16 is the whole model in half precision: pack it in FP32")


def _model_output(module: nn.Module, deployed, own: list[np.ndarray] | None, inputs: Sequence[np.ndarray],
                  layer: Layer, results: list[LayerResult], tolerance: float) -> LayerResult:
    """The deployed model.pte's logits against PyTorch's (with no bundle: the debug program's own), and whether
    the debug program explains a departure."""
    import torch

    with torch.no_grad():
        expected = [module(torch.from_numpy(x)).numpy() for x in inputs]
    if deployed is None:
        if own is None or any(g.shape != e.shape for g, e in zip(own, expected)):
            return LayerResult(layer, note="the program gives no logits of PyTorch's shape")
        return LayerResult(layer, layer_error(expected, own), None, "the debug program's logits (no bundle)")
    got = [np.asarray(deployed(x), dtype=np.float32) for x in inputs]
    error = layer_error(expected, got)
    note = "model.pte itself (the deployed program)"
    departed = [r for r in results if r.error is not None and r.error.rel_err > tolerance]
    if error.rel_err > tolerance and not departed:
        note += ("; no module of the debug program departs: the difference is in what only model.pte's lowering "
                 "does (XNNPACK's fusions there)")
    return LayerResult(layer, error, None, note)


def _check_shapes(props: dict, side: int | None, inputs: Sequence[np.ndarray]) -> None:
    """A static program takes its one shape (per image), a dynamic debug program sides up to its bound: said
    before any run."""
    from gap_deploy.runtime.shapes import format_shape

    static = props.get("gap.static_shape")
    for x in inputs:
        if static and format_shape((1, *x.shape[1:])) != static:
            raise UsageError(f"this ExecuTorch program is static: it takes {static} only, not "
                             f"{format_shape(x.shape)}.", hint=f"give gap-debug --shape {static} (or --images with "
                                                                "--imgsz of that size).")
        if not static and side and max(x.shape[2:]) > side:
            raise UsageError(f"the bundle's debug program takes sides up to {side} (every module's output is "
                             f"planned at once); {format_shape(x.shape)} is larger.",
                             hint="give gap-debug a smaller --shape or --imgsz.")
