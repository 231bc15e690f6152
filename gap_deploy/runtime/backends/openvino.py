"""OpenVINO IR (model.xml + model.bin, from gap-pack --target openvino) on OpenVINO's CPU plugin.

FP32 means FP32: the CPU plugin chooses bf16 for an f32 model on CPUs with native bf16 support unless told
otherwise (OpenVINO's "Precision Control" guide: ``inference_precision`` defaults to bf16 there), so every
model is compiled with ``INFERENCE_PRECISION_HINT`` f32; an IR saved with FP16 weights still computes in f32.
The model's gap.* metadata travels in the IR's rt_info (section ``gap``), written by gap-pack.
"""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path

import numpy as np

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.backends.base import LoadOptions, Runner, TensorInfo
from gap_deploy.runtime.errors import ArtifactError, BackendError, first_line
from gap_deploy.runtime.shapes import format_shape

RT_INFO_SECTION = "gap"
#: how every gap-deploy OpenVINO model is compiled for the CPU: FP32 arithmetic (bf16 where the CPU has it otherwise)
CPU_CONFIG: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
HINT = "pip install 'gap-deploy[openvino]'"


def no_telemetry() -> None:
    """Keep OpenVINO's usage telemetry off in this process, before openvino is imported.

    OpenVINO's converter (openvino.tools.ovc, telemetry_utils.init_ovc_telemetry) starts its telemetry with the
    opt-in dialog off, which counts a missing consent file as consent: it writes a client ID under ~/intel and
    starts sender threads to Google Analytics (OpenVINO's "Telemetry" page: collected by default, opt out with
    ``opt_in_out --opt_out``). A deployment toolkit does not report its users' runs, and does not change their
    global settings either: so the converter's own fallback is used, the no-op stub it imports when
    ``openvino_telemetry`` cannot be imported (``sys.modules`` entry None). A process that imported
    openvino_telemetry before gap-deploy keeps it; its Telemetry singleton is told there is no consent."""
    import sys

    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  (ImportError on import, by design)
        return
    module = sys.modules["openvino_telemetry"]
    # the singleton's instance, as openvino_telemetry's SingletonMetaClass keeps it (a name-mangled attribute)
    instance = getattr(getattr(module, "Telemetry", None), "_SingletonMetaClass__single_instance", None)
    if instance is not None:
        instance.consent = False


def _ov():
    no_telemetry()
    return require("openvino", purpose="to run OpenVINO models", hint=HINT)


@functools.cache
def ov_works() -> tuple[bool, str]:
    try:
        ov = _ov()
        return ("CPU" in ov.Core().available_devices), "OpenVINO finds no CPU device"
    except Exception as exc:  # not installed, or its plugins do not load
        return False, first_line(exc)


def metadata_of(model) -> dict[str, str]:
    """The gap.* metadata gap-pack stored in an IR's rt_info."""
    info = model.get_rt_info()
    if RT_INFO_SECTION not in info:
        return {}
    section = info[RT_INFO_SECTION]
    return {f"gap.{k}": (v.astype(str) if hasattr(v, "astype") else str(v)) for k, v in dict(section).items()}


def _dims(partial_shape) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


#: how much of an IR's XML is read to find its root element (a real IR's prolog is one line)
PROLOG_BYTES = 1 << 16
_DECLARATIONS = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def check_ir_xml(path: Path) -> None:
    """Refuse an IR whose XML declares a DOCTYPE or entities, before OpenVINO parses it: no IR OpenVINO writes has
    one, and entity declarations are how an XML file expands to gigabytes ("billion laughs"). OpenVINO's parser
    does not expand them today; the toolkit does not rely on that. Only the prolog, before the root element, can
    hold declarations, so a bounded head of the file is read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(PROLOG_BYTES)
    except OSError as exc:
        raise ArtifactError(f"cannot read OpenVINO model {path}: {exc.strerror or exc}.") from None
    root = re.search(rb"<[A-Za-z_]", head)
    prolog = head[:root.start()] if root else head
    if _DECLARATIONS.search(prolog):
        raise ArtifactError(f"OpenVINO model {path} declares a DOCTYPE or XML entities, which no OpenVINO IR has; "
                            "refused before parsing (entity expansion can blow up memory).",
                            hint="write the bundle again with gap-pack --target openvino, from a source you trust.")


def read_ir(path: Path):
    """(model, inputs, outputs, props) of an IR, read but not compiled (what runtime.artifact.describe needs)."""
    ov = _ov()
    check_ir_xml(path)
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:
        raise ArtifactError(f"OpenVINO cannot load {path}: {first_line(exc)}",
                            hint="write the bundle again with gap-pack --target openvino.") from None
    inputs = tuple(TensorInfo(p.get_any_name(), np.dtype(np.float32), _dims(p.get_partial_shape()))
                   for p in model.inputs)
    outputs = tuple(TensorInfo(p.get_any_name(), np.dtype(np.float32), _dims(p.get_partial_shape()))
                    for p in model.outputs)
    return model, inputs, outputs, metadata_of(model)


def _type_name(value) -> str:
    """An OpenVINO element type as its short name ("f32"); other values as text."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def probe(backend: str) -> tuple[bool, str]:
    return ov_works()


def open_runner(path: Path, backend: str, options: LoadOptions) -> OvRunner:
    from gap_deploy.runtime.files import check_input_file

    return OvRunner(check_input_file(path, "OpenVINO model"), threads=options.threads)


class OvRunner(Runner):
    backend = "ov-cpu"

    def __init__(self, path: Path, *, threads: int | None = None):
        ov = _ov()
        self._ov_version = ov.__version__
        model, self.inputs, self.outputs, self.props = read_ir(path)
        self._config: dict[str, object] = dict(CPU_CONFIG)
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._model, self._path = model, path
        self._compiled = self._compile()
        self._threads = threads
        self._lock = threading.Lock()  # one infer request: calls are serialized

    def _compile(self):
        try:
            return _ov().Core().compile_model(self._model, "CPU", self._config)
        except Exception as exc:
            raise ArtifactError(f"OpenVINO cannot compile {self._path}: {first_line(exc)}",
                                hint="write the bundle again with gap-pack --target openvino.") from None

    def infer(self, array: np.ndarray) -> np.ndarray:
        with self._lock:
            try:
                return np.asarray(self._compiled(array)[0]).copy()
            except Exception as exc:
                # After a failed inference the same compiled model can answer the next inputs wrongly (measured
                # with OpenVINO 2026.4.1: SqueezeNet's ceil-mode pools raise at 9x9, and then about one time in
                # four every later size is off by up to 40%): the failed one is dropped and compiled afresh.
                self._compiled = self._compile()
                raise BackendError(f"OpenVINO failed to run the model on input {format_shape(array.shape)}: "
                                   f"{first_line(exc)}", note="the model was compiled again: a failed inference "
                                   "leaves OpenVINO's compiled model in a state that can give wrong answers.",
                                   hint="check the model on ort-cpu first.") from None

    @property
    def device(self) -> dict:
        return {"device": "CPU (OpenVINO)", "threads": self._threads or "default",
                "inference_precision": _type_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))}

    @property
    def versions(self) -> dict[str, str]:
        return {"openvino": self._ov_version}
