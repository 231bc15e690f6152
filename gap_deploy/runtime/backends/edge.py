"""The mobile and board runtimes, each behind the Runner protocol: ncnn, LiteRT and ExecuTorch (XNNPACK).

Their model files carry no gap.* metadata of their own, so they are opened from the gap-pack bundle that holds
them: ``props`` is the bundle's model.json "metadata" (runtime.bundle.bundle_props), and the input's channel
count and class count come from it. What each runtime takes:

- ncnn (``.param`` + ``.bin`` from pnnx): one image per extraction (an ncnn Mat has no batch dimension), so a
  batch runs image by image. ncnn's ``Option`` turns on FP16 storage, packing and arithmetic by default
  (``use_fp16_storage``/``use_fp16_packed``/``use_fp16_arithmetic`` are true on a new ``ncnn.Net()``, ncnn
  1.0.20261020; tests/exporter/test_pack_edge.py checks it): an FP32 bundle runs with all three off, an FP16 one
  (model.json precision "fp16") with them on.
- LiteRT (``.tflite`` from litert-torch): the interpreter is resized to each input shape (``resize_tensor_input``,
  then ``allocate_tensors``), within its ``shape_signature``; a model converted with batch 1 (litert-torch cannot
  lower ``flatten`` with a dynamic batch) runs a batch image by image.
- ExecuTorch (``.pte`` lowered to XNNPACK): the program plans its memory for the largest input it was exported
  for and refuses more elements than that (``set_inputs`` fails with "bounded tensor"); a batch larger than the
  plan runs in chunks, an image larger than the plan is refused before it reaches ExecuTorch. ExecuTorch's Python
  bindings take and return torch tensors, so this one backend needs torch (executorch imports it; the runner only
  wraps arrays with it, imported when a program runs, never when the runtime is imported); on a phone the C++
  runtime runs the same ``.pte`` without it.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.backends.base import LoadOptions, Runner, TensorInfo
from gap_deploy.runtime.errors import ArtifactError, BackendError, GapError, InputError, first_line
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.shapes import format_shape, parse_shape

REPACK = "write the bundle again with gap-pack."


class _EdgeRunner(Runner):
    """What the three share: metadata from the bundle, a lock (one interpreter each), errors said once."""

    runtime_name = ""
    #: the distribution that runs the model, for ``versions``
    package = ""

    def __init__(self, path: Path, props: dict[str, str], names: tuple[str, str], threads: int | None):
        self.props = dict(props)
        meta = ModelMetadata.from_props(self.props)
        if not meta.in_channels or not meta.num_classes:
            raise ArtifactError(f"{path}'s bundle says no input channels or classes (gap.in_channels, "
                                "gap.num_classes in model.json's metadata).", hint=REPACK)
        self.precision = meta.precision
        self._channels: int = meta.in_channels
        self.inputs = (TensorInfo(names[0], np.dtype(np.float32), (None, meta.in_channels, None, None)),)
        self.outputs = (TensorInfo(names[1], np.dtype(np.float32), (None, meta.num_classes)),)
        self._threads = threads
        self._lock = threading.Lock()
        #: a static program's one input shape (gap-pack --fixed); None where it takes any size
        self.static: tuple[int, ...] | None = None
        import importlib.metadata

        try:
            self._version = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            self._version = "unknown"

    def model_channels(self) -> int | None:
        """The input channels the loaded model itself declares; None where its runtime does not say."""
        return None

    def _declare_static(self, shape: tuple[int, ...]) -> None:
        """A program of one input shape: declared as the input's dims, so a session refuses any other shape with
        the static model's message (runtime.validation.check_shape) and fills its batch (Session.run_many)."""
        self.static = tuple(int(d) for d in shape)
        name = self.inputs[0].name
        self.inputs = (TensorInfo(name, np.dtype(np.float32), self.static),)

    def check_description(self, path: Path) -> None:
        """Believe model.json only where the loaded model agrees with it: model.json is a file anyone can write, with
        SHA-256s to match. Its channels against what the runtime reports, then one inference at its own minimum
        size: the model must run there, finitely, and give one logit per class it claims."""
        meta = ModelMetadata.from_props(self.props)
        said = f"{path.parent.name}/model.json"
        channels = self.model_channels()
        if channels is not None and channels != meta.in_channels:
            raise ArtifactError(f"{said} says {meta.in_channels} input channel(s); the {self.runtime_name} model it "
                                f"describes takes {channels}. The description is not believed.", hint=REPACK)
        shape = self.static or (1, self._channels, max(meta.min_height, 1), max(meta.min_width, 1))
        probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        try:
            out = self.infer(probe)
        except GapError as exc:
            raise ArtifactError(f"{said}'s minimum input {format_shape(shape)} is not a size the {self.runtime_name} "
                                f"model runs: {first_line(exc)}", hint=REPACK) from None
        if out.ndim != 2 or out.shape[0] != 1 or out.shape[1] != meta.num_classes:
            raise ArtifactError(f"{said} says {meta.num_classes} classes; the {self.runtime_name} model gives "
                                f"{format_shape(out.shape)} at {format_shape(shape)}. The description is not "
                                "believed.", hint=REPACK)
        if not np.isfinite(out).all():
            raise ArtifactError(f"the {self.runtime_name} model gives non-finite logits at {said}'s minimum input "
                                f"{format_shape(shape)}: that minimum is not one it runs.", hint=REPACK)

    def infer(self, array: np.ndarray) -> np.ndarray:
        with self._lock:
            try:
                return self._infer(array)
            except (InputError, ArtifactError):
                raise
            except Exception as exc:
                raise BackendError(f"{self.runtime_name} failed to run the model on input {format_shape(array.shape)}: "
                                   f"{first_line(exc)}", hint="check the model on ort-cpu first.") from None

    def _infer(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _each_image(self, array: np.ndarray, one) -> np.ndarray:
        return np.stack([one(array[i:i + 1]) for i in range(array.shape[0])])

    @property
    def versions(self) -> dict[str, str]:
        return {self.package: self._version}


# --- a first load where a crash cannot take the caller down ------------------------------------------------------

#: (runner, SHA-256s of its files) that loaded and ran once in a child process without dying
_SURVIVED: set[tuple[str, tuple[str, ...]]] = set()
_CHILD = ("import json, sys\n"
          "from gap_deploy.runtime.backends import edge\n"
          "edge._load_here(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]))\n")
#: the longest a first load in a child may take (ExecuTorch's child imports torch: seconds)
CHILD_TIMEOUT_S = 300


def _load_here(kind: str, path: str, props: dict, names: list) -> None:
    """The child's side: load the model and run it once at its described minimum (check_description)."""
    runner_class = {"ncnn": NcnnRunner, "executorch": ExecuTorchRunner}[kind]
    runner_class(Path(path), props, tuple(names), check_description=True, isolate=False)


def load_in_child_first(kind: str, runtime_name: str, files: tuple[Path, ...], props: dict, names: tuple) -> None:
    """Load and run a model once in a child process before this process touches it.

    ncnn and ExecuTorch are C++ libraries that abort or crash on some damaged files instead of raising: a .pte
    whose backend id holds a byte that is not UTF-8 ends in std::terminate (SIGABRT) inside ExecuTorch's
    bindings, and ncnn can segfault after a failed load. model.json's SHA-256s prove the files are the ones it
    lists, not that they are sound. So the first load of each file happens in a child: when the child dies of a
    signal, the file is refused with that signal; when it raises, this process loads it and says why itself.
    A file that survived once is not tried again in this process."""
    import os
    import signal
    import subprocess
    import sys

    from gap_deploy.runtime.files import sha256_file

    digests = tuple(sha256_file(f) for f in files)
    if (kind, digests) in _SURVIVED:
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the same imports as here
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(files[0]), json.dumps(props),
                               json.dumps(list(names))], env=env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{runtime_name} did not finish loading {files[0]} within {CHILD_TIMEOUT_S} s (tried in a "
                            "separate process).", hint=REPACK) from None
    code = done.returncode
    if code < 0 or code in (128 + signal.SIGABRT, 128 + signal.SIGSEGV):
        number = -code if code < 0 else code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        said = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("W1")][-1:]
        raise ArtifactError(f"{runtime_name} crashed ({name}) loading {files[0]}: the file is damaged or was not made "
                            "for this runtime. It was loaded in a separate process first, so this one goes on.",
                            note=said[0][:300] if said else None, hint=REPACK)
    if code == 0:
        _SURVIVED.add((kind, digests))


# --- ncnn -------------------------------------------------------------------------------------------------------

NCNN_HINT = "pip install 'gap-deploy[ncnn-run]'"


@functools.cache
def ncnn_works() -> tuple[bool, str]:
    try:
        ncnn = require("ncnn", purpose="to run ncnn models", hint=NCNN_HINT)
        ncnn.Net()
        return True, ""
    except Exception as exc:
        return False, first_line(exc)


def ncnn_blobs(param: Path) -> tuple[str, str]:
    """(input blob, output blob) of an ncnn .param: the Input layer's top, and the last layer's top."""
    try:
        lines = [line.split() for line in param.read_text(encoding="ascii").splitlines()[2:] if line.strip()]
        layers = [(f[0], int(f[2]), int(f[3]), f[4:]) for f in lines]
        inputs = [io[0] for kind, _, _, io in layers if kind == "Input"]
        _, bottoms, tops, io = layers[-1]
        return inputs[0], io[bottoms:bottoms + tops][0]
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"{param} is not an ncnn .param file with one input: {first_line(exc)}",
                            hint=REPACK) from None


@dataclass(frozen=True)
class NcnnLayer:
    """One line of an ncnn .param (ncnn's text format: type, name, bottom and top counts, bottoms, tops, then
    ``key=value`` parameters whose meaning each layer type defines)."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[str, str]


def ncnn_layers(param: Path) -> list[NcnnLayer]:
    """Every layer of an ncnn .param, in the file's (execution) order."""
    try:
        found = []
        for line in param.read_text(encoding="ascii").splitlines()[2:]:
            fields = line.split()
            if not fields:
                continue
            n_in, n_out = int(fields[2]), int(fields[3])
            rest = fields[4 + n_in + n_out:]
            found.append(NcnnLayer(fields[0], fields[1], tuple(fields[4:4 + n_in]),
                                   tuple(fields[4 + n_in:4 + n_in + n_out]),
                                   dict(f.split("=", 1) for f in rest if "=" in f)))
        return found
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"{param} is not an ncnn .param file: {first_line(exc)}", hint=REPACK) from None


def ncnn_input_channels(param: Path, blob: str) -> int | None:
    """The input channels of an ncnn .param, from the first convolution that reads the input blob: its weight size
    over (outputs x kernel): ncnn itself does not check them, and feeding it other channels can crash the process.
    None when the input does not go straight into a plain convolution."""
    try:
        for line in param.read_text(encoding="ascii").splitlines()[2:]:
            fields = line.split()
            if len(fields) < 4 or fields[0] not in ("Convolution", "ConvolutionDepthWise"):
                continue
            bottoms = fields[4:4 + int(fields[2])]
            if blob not in bottoms:
                continue
            values = dict(f.split("=", 1) for f in fields[4 + int(fields[2]) + int(fields[3]):] if "=" in f)
            outputs, kw = int(values.get("0", 0)), int(values.get("1", 0))
            kh, size, group = int(values.get("11", kw)), int(values.get("6", 0)), int(values.get("7", 1))
            if outputs <= 0 or kw <= 0 or kh <= 0 or size <= 0:
                return None
            return size * group // (outputs * kw * kh)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None


class NcnnRunner(_EdgeRunner):
    backend = "ncnn-cpu"
    runtime_name = package = "ncnn"

    def __init__(self, param: Path, props: dict[str, str], names: tuple[str, str], *,
                 threads: int | None = None, check_description: bool = True, isolate: bool | None = None):
        super().__init__(param, props, names, threads)
        if check_description if isolate is None else isolate:
            load_in_child_first("ncnn", "ncnn", (param, param.with_suffix(".bin")), props, names)
        ncnn = require("ncnn", purpose="to run ncnn models", hint=NCNN_HINT)
        self._ncnn = ncnn
        self._in, self._out = ncnn_blobs(param)
        net = ncnn.Net()
        fp16 = self.precision == "fp16"
        for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"):
            setattr(net.opt, option, fp16)
        net.opt.use_bf16_storage = False
        net.opt.use_vulkan_compute = False
        if threads:
            net.opt.num_threads = int(threads)
        weights = param.with_suffix(".bin")
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise ArtifactError(f"ncnn cannot load {param.name} + {weights.name}.", hint=REPACK)
        self._net = net
        self._param_channels = ncnn_input_channels(param, self._in)
        if check_description:
            self.check_description(param)

    def model_channels(self) -> int | None:
        return self._param_channels

    def _infer(self, array: np.ndarray) -> np.ndarray:
        def one(image: np.ndarray) -> np.ndarray:
            extractor = self._net.create_extractor()
            try:
                extractor.input(self._in, self._ncnn.Mat(np.ascontiguousarray(image[0])).clone())
                code, out = extractor.extract(self._out)
                if code != 0:
                    raise BackendError(f"ncnn's extractor returned {code} for input {format_shape(image.shape)}.")
                return np.array(out, dtype=np.float32).reshape(-1)
            finally:
                extractor.clear()
        return self._each_image(array, one)

    def blobs(self, image: np.ndarray, wanted: Sequence[str], given: str | None = None) -> dict[str, np.ndarray]:
        """The values of the ``wanted`` blobs for one image (C, H, W), fed as the input blob or, with ``given``,
        as that intermediate blob: ncnn computes a blob from the layers it needs, so what comes before ``given``
        is not run (the caller makes sure the wanted blobs need no other input). Each value as ncnn's Mat has it:
        (C, H, W), (H, W) or (W,). Light mode is off: it frees a blob once read, and asking for an earlier blob
        after a later one then crashes the process (seen with ncnn 1.0.20261020), so one image's blobs up to the
        last wanted are held until the call returns."""
        extractor = self._net.create_extractor()
        extractor.set_light_mode(False)
        try:
            extractor.input(given or self._in, self._ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32)).clone())
            found = {}
            for blob in wanted:
                code, out = extractor.extract(blob)
                if code != 0:
                    raise BackendError(f"ncnn's extractor returned {code} for blob {blob}.")
                found[blob] = np.array(out, dtype=np.float32, copy=True)
            return found
        finally:
            extractor.clear()

    @property
    def device(self) -> dict:
        opt = self._net.opt
        return {"device": "CPU (ncnn)", "threads": self._threads or "default",
                "fp16_storage": opt.use_fp16_storage, "fp16_arithmetic": opt.use_fp16_arithmetic}


# --- LiteRT -----------------------------------------------------------------------------------------------------

LITERT_HINT = "pip install 'gap-deploy[litert-run]'"


@functools.cache
def litert_works() -> tuple[bool, str]:
    try:
        require("ai_edge_litert.interpreter", purpose="to run LiteRT models", hint=LITERT_HINT)
        return True, ""
    except Exception as exc:
        return False, first_line(exc)


def litert_signature(path: Path, threads: int | None = None):
    """(interpreter, input detail, output detail) of a .tflite file."""
    module = require("ai_edge_litert.interpreter", purpose="to run LiteRT models", hint=LITERT_HINT)
    try:
        interpreter = module.Interpreter(model_path=str(path), num_threads=threads or None)
    except Exception as exc:
        raise ArtifactError(f"LiteRT cannot load {path}: {first_line(exc)}", hint=REPACK) from None
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise ArtifactError(f"{path} has {len(ins)} inputs and {len(outs)} outputs; a GAP classifier has one each.",
                            hint=REPACK)
    return interpreter, ins[0], outs[0]


class LiteRtRunner(_EdgeRunner):
    backend = "litert-cpu"
    runtime_name, package = "LiteRT", "ai-edge-litert"

    def __init__(self, path: Path, props: dict[str, str], names: tuple[str, str], *,
                 threads: int | None = None, check_description: bool = True, isolate: bool | None = None):
        # isolate: not needed here, LiteRT's interpreter verifies the flatbuffer before it runs anything
        super().__init__(path, props, names, threads)
        self._interpreter, self._input, self._output = litert_signature(path, threads)
        signature = [int(d) for d in self._input["shape_signature"]]
        if len(signature) != 4:
            raise ArtifactError(f"{path}'s input has rank {len(signature)}; expected NCHW images.", hint=REPACK)
        self.batch_fixed = signature[0] if signature[0] > 0 else None
        self._shape: tuple[int, ...] | None = None
        self._signature = signature
        if all(d > 0 for d in signature):  # a static program (gap-pack --fixed): LiteRT's own signature says so
            self._declare_static(tuple(signature))
        if check_description:
            self.check_description(path)

    def model_channels(self) -> int | None:
        return self._signature[1] if self._signature[1] > 0 else None

    def _run(self, array: np.ndarray) -> np.ndarray:
        interpreter, index = self._interpreter, self._input["index"]
        if array.shape != self._shape:
            interpreter.resize_tensor_input(index, list(array.shape), strict=True)
            interpreter.allocate_tensors()
            self._shape = array.shape
        interpreter.set_tensor(index, np.ascontiguousarray(array, dtype=np.float32))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(self._output["index"]), dtype=np.float32)

    def _infer(self, array: np.ndarray) -> np.ndarray:
        if self.batch_fixed == 1 and array.shape[0] != 1:
            return self._each_image(array, lambda image: self._run(image)[0])
        return self._run(array)

    @property
    def device(self) -> dict:
        return {"device": "CPU (LiteRT, XNNPACK delegate)", "threads": self._threads or "default",
                "batch": self.batch_fixed or "any"}


# --- ExecuTorch ---------------------------------------------------------------------------------------------------

EXECUTORCH_HINT = "pip install 'gap-deploy[executorch]' -c constraints/cpu.txt (it links torch)"


@functools.cache
def executorch_works() -> tuple[bool, str]:
    """Found without importing it: importing executorch imports torch, which a probe must not cost. Loading a
    program is the real test (a failure there says so)."""
    import importlib.util

    try:
        missing = [n for n in ("executorch", "torch") if importlib.util.find_spec(n) is None]
    except (ImportError, ValueError) as exc:  # a package whose import is blocked or broken
        return False, first_line(exc)
    return (not missing), f"{' and '.join(missing)} not installed ({EXECUTORCH_HINT})"


#: ExecuTorch's ScalarType codes (c10's numbering) of the float inputs a program may take
SCALAR_TYPES = {5: np.float16, 6: np.float32}


def executorch_method(path: Path):
    """(method, planned input sizes, input dtype) of a .pte program's ``forward``."""
    module = require("executorch.runtime", purpose="to run ExecuTorch programs", hint=EXECUTORCH_HINT)
    try:
        program = module.Runtime.get().load_program(Path(path))
        method = program.load_method("forward")
        meta = method.metadata
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise ValueError(f"{meta.num_inputs()} inputs and {meta.num_outputs()} outputs, not one each")
        planned = tuple(int(v) for v in meta.input_tensor_meta(0).sizes())
        code = int(meta.input_tensor_meta(0).dtype())
        if code not in SCALAR_TYPES:
            raise ValueError(f"its input has scalar type {code}, not float32 or float16")
    except Exception as exc:
        raise ArtifactError(f"ExecuTorch cannot load {path}: {first_line(exc)}", hint=REPACK) from None
    return method, planned, np.dtype(SCALAR_TYPES[code])


class ExecuTorchRunner(_EdgeRunner):
    backend = "et-xnnpack"
    runtime_name, package = "ExecuTorch", "executorch"

    def __init__(self, path: Path, props: dict[str, str], names: tuple[str, str], *,
                 threads: int | None = None, check_description: bool = True, isolate: bool | None = None):
        super().__init__(path, props, names, threads)
        if check_description if isolate is None else isolate:
            load_in_child_first("executorch", "ExecuTorch", (path,), props, names)
        # an FP16 program (gap-pack --precision fp16) takes and gives float16: the runner converts at its edges
        self._method, self.planned, self.program_dtype = executorch_method(path)
        self.capacity = int(np.prod(self.planned))  # elements the program's input buffer holds
        try:  # the sides torch.export was told (gap-pack writes them; ExecuTorch itself checks only the total)
            self.max_side = int(self.props.get("gap.max_side", max(self.planned[2:])))
        except ValueError:
            raise ArtifactError(f"{path}'s bundle metadata gap.max_side is no whole number.", hint=REPACK) from None
        said = self.props.get("gap.static_shape")
        if said:  # ExecuTorch's method gives its planned sizes, not whether they are fixed: model.json says
            try:
                static: tuple[int, ...] = parse_shape(said)
            except InputError:
                static = ()
            if static != self.planned:
                raise ArtifactError(f"{path.parent.name}/model.json says a static program of {said}; the program's "
                                    f"input is planned for {format_shape(self.planned)}. The description is not "
                                    "believed.", hint=REPACK)
            self._declare_static(static)
        if check_description:
            self.check_description(path)

    def model_channels(self) -> int | None:
        return self.planned[1] if len(self.planned) == 4 and self.planned[1] > 0 else None

    def _infer(self, array: np.ndarray) -> np.ndarray:
        per_image = int(np.prod(array.shape[1:]))
        if max(array.shape[2:]) > self.max_side or per_image > self.capacity:
            raise InputError(f"input {format_shape(array.shape)} is larger than this ExecuTorch program was planned "
                             f"for: sides up to {self.max_side} (its largest input {format_shape(self.planned)}).",
                             hint="resize the image, or gap-pack --target "
                             "executorch again with a larger --max-side.")
        torch = require("torch", purpose="for ExecuTorch's Python bindings, which take torch tensors",
                        hint=EXECUTORCH_HINT)  # already loaded by executorch itself
        step = max(1, min(self.planned[0], self.capacity // per_image))  # within the exported batch bound
        parts = []
        for start in range(0, array.shape[0], step):
            tensor = torch.from_numpy(np.ascontiguousarray(array[start:start + step], dtype=self.program_dtype))
            parts.append(self._method.execute([tensor])[0].float().numpy().copy())
        return np.concatenate(parts)

    @property
    def device(self) -> dict:
        return {"device": "CPU (ExecuTorch, XNNPACK)", "threads": "default",
                "planned_input": format_shape(self.planned), "program_dtype": self.program_dtype.name}


# --- the registry's entry points (runtime.backends.table: ncnn, litert and executorch kinds) --------------------

#: each backend of this module: its probe and its runner
_BACKENDS = {"ncnn-cpu": (ncnn_works, NcnnRunner), "litert-cpu": (litert_works, LiteRtRunner),
             "et-xnnpack": (executorch_works, ExecuTorchRunner)}


def probe(backend: str) -> tuple[bool, str]:
    return _BACKENDS[backend][0]()


def open_runner(path: Path, backend: str, options: LoadOptions) -> _EdgeRunner:
    """A model file opened from its gap-pack bundle, whose model.json (``options.contract``) describes it."""
    from gap_deploy.runtime.backends.table import kind_of_backend
    from gap_deploy.runtime.files import check_input_file

    if options.check_works is not None:
        options.check_works(backend)
    runner_class = _BACKENDS[backend][1]
    words = kind_of_backend(backend).words
    if options.contract is None:
        raise ArtifactError(f"{path} carries no description of its input: {words} is opened from the gap-pack "
                            "bundle folder that holds it (its model.json says the input).",
                            hint="pass the bundle folder.")
    # a bundle whose signature verified was run by the build machine that signed it: no first load in a child
    return runner_class(check_input_file(path, words), *options.contract, threads=options.threads,
                        check_description=options.check_description,
                        isolate=options.check_description and not options.signed)
