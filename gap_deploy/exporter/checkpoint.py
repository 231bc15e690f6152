"""Load a PyTorch model from a checkpoint, safely.

Paths, in the order they are tried:
1. ``.safetensors`` weights;
2. a ``torch.save`` file read with ``weights_only=True``: a plain state_dict, or a dict holding one
   under a common key (``state_dict``, ``model``, ...);
3. a TorchScript archive or a pickled ``nn.Module``: these run code when loaded, so only with
   ``trust_checkpoint=True``.
The state_dict goes into the reference GapCNN (shapes inferred from the weights) or into the
architecture that ``arch="module:callable"`` names, strictly, with differences explained.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import pickle
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gap_deploy.exporter.model import REFERENCE_KEYS, GapCNN
from gap_deploy.runtime.errors import CheckpointError, GapError, UntrustedCodeError, first_line
from gap_deploy.runtime.files import check_input_file, sha256_file

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "ema", "module")
_PREFIXES = {"module.": "DataParallel/DistributedDataParallel", "_orig_mod.": "torch.compile"}
TRUST_HINT = ("pass --trust-checkpoint only if you trust where the file came from, or save the weights "
              "alone: torch.save(model.state_dict(), 'weights.pt').")


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    arch: str
    in_channels: int
    source: Path
    source_sha256: str
    notes: tuple[str, ...] = ()


def from_module(module, *, name: str | None = None) -> LoadedModel:
    """An ``nn.Module`` already in memory (a notebook's model) as the exporter takes it: eval mode, its input
    channels from its first convolution; a LoadedModel is returned as it is. No file is read, so the artifact
    records no source checkpoint."""
    if isinstance(module, LoadedModel):
        return module
    if not isinstance(module, nn.Module):
        raise CheckpointError(f"cannot export a {type(module).__name__}: give an nn.Module, or a LoadedModel from "
                              "load_model(path).", hint="from gap_deploy.exporter import load_model")
    arch = name or type(module).__name__
    return LoadedModel(module=module.eval(), arch=arch, in_channels=first_conv_channels(module),
                       source=Path(f"<in-memory {arch}>"), source_sha256="")


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Load ``path`` into an ``nn.Module`` in eval mode; raise CheckpointError with the fix on failure."""
    path = check_input_file(path, "checkpoint")
    digest = sha256_file(path)
    notes: list[str] = []
    obj = _read(path, trust_checkpoint, notes)

    if isinstance(obj, nn.Module):
        module = obj
        arch_name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if arch:
            notes.append(f"--arch {arch} ignored: the file holds a whole module ({arch_name}).")
    else:
        state = _strip_prefixes(_find_state_dict(obj, path, notes), notes)
        _check_tensors(state, path)
        try:
            if arch:
                module, arch_name = build_arch(arch, num_classes)
            else:
                module, arch_name = _reference_for(state, path, num_classes)
            load_state_strict(module, state, path)
        except (IndexError, RuntimeError, TypeError, ValueError) as exc:  # odd shapes or dtypes in the file
            raise CheckpointError(f"{path} does not fit the model: {first_line(exc)}",
                                  hint="check that --arch names the architecture the checkpoint was trained with.") \
                from None

    module.eval()
    check_finite_weights(module, path)
    return LoadedModel(module=module, arch=arch_name, in_channels=first_conv_channels(module),
                       source=path, source_sha256=digest, notes=tuple(notes))


def check_finite_weights(module, path) -> None:
    """NaN or infinite weights say so by name (they would only show later as "differs from PyTorch ... nan")."""
    bad = []
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()})")
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite weights: {', '.join(bad[:6])}"
                              + (f" and {len(bad) - 6} more tensors" if len(bad) > 6 else "") + ".",
                              hint="the training diverged or the file was damaged: use an earlier checkpoint.")


def _read(path: Path, trust: bool, notes: list[str]):
    if path.suffix == ".safetensors":
        from gap_deploy.runtime._lazy import require

        st = require("safetensors.torch", purpose="to read .safetensors weights")
        try:
            return st.load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError and OSErrors
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}",
                                  hint="the file is truncated or not safetensors; save it again.") from None

    if _is_torchscript(path):
        if not trust:
            raise UntrustedCodeError(
                f"{path} is a TorchScript archive; loading it runs code it contains.", hint=TRUST_HINT)
        notes.append("loaded a TorchScript archive because --trust-checkpoint was given.")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise CheckpointError(f"cannot read TorchScript archive {path}: {exc}") from None

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Refused, or unreadable? Ask the checkpoint which globals it needs (read without running anything)
        # rather than parsing torch's wording, which changes between releases.
        needed = _pickled_globals(path)
        if not needed:
            raise _unreadable(path, exc) from None
        if not trust:
            raise UntrustedCodeError(
                f"{path} holds pickled Python objects (for example a whole nn.Module), not only weights; "
                "loading it runs code.", note=f"it needs {', '.join(needed[:5])}"
                + (f" and {len(needed) - 5} more" if len(needed) > 5 else ""), hint=TRUST_HINT) from None
    except Exception as exc:  # truncated zip, random bytes, wrong magic number, ...
        raise _unreadable(path, exc) from None

    notes.append("loaded pickled objects with weights_only=False because --trust-checkpoint was given.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _pickled_globals(path: Path) -> list[str]:
    """The Python globals a torch.save file would import when unpickled ([] when it cannot be read)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    reason = first_line(exc)
    # torch's own text for an unpicklable file invites a retry with weights_only=False: never pass that on (a
    # payload in the file would run); say what is known instead.
    if "weights_only" in reason.lower() or "weights only" in reason.lower():
        reason = "its contents are not a checkpoint of tensors that torch can read safely (weights_only=True)"
    return CheckpointError(f"cannot read checkpoint {path}: {reason}",
                           hint="is it a file written by torch.save or a .safetensors file? "
                                "It may be truncated; copy or save it again.")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find_state_dict(obj, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                notes.append(f"using the state_dict stored under the key '{key}'.")
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:12])
        raise CheckpointError(
            f"{path} is a dict but holds no state_dict of tensors (top-level keys: {keys}).",
            note=f"looked for a plain state_dict and under the keys {', '.join(STATE_DICT_KEYS)}.",
            hint="save the weights with torch.save(model.state_dict(), path).")
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict or a model.",
                          hint="save the weights with torch.save(model.state_dict(), path).")


def _check_tensors(state: dict, path: Path) -> None:
    """Weights must be real, dense tensors: a meta tensor has no data, a sparse one no place in a CNN."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: '{key}' is a {type(value).__name__}, not a tensor.",
                                  hint="save the weights with torch.save(model.state_dict(), path).")
        if value.device.type == "meta":
            raise CheckpointError(f"{path}: tensor '{key}' is on the meta device and holds no values.",
                                  hint="save the state_dict after the weights were materialized (e.g. after "
                                       "loading or training), not from a model built on the meta device.")
        if value.layout != torch.strided:
            layout = str(value.layout).replace("torch.", "")
            raise CheckpointError(f"{path}: tensor '{key}' is {layout}; a CNN's weights are dense.",
                                  hint="convert it with tensor.to_dense() and save again.")


def _strip_prefixes(state: dict, notes: list[str]) -> dict:
    for prefix, origin in _PREFIXES.items():
        if all(k.startswith(prefix) for k in state):
            notes.append(f"stripped the '{prefix}' prefix that {origin} adds to every key.")
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _reference_for(state: dict, path: Path, num_classes: int | None) -> tuple[nn.Module, str]:
    missing = [k for k in REFERENCE_KEYS if k not in state]
    if missing:
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(
            f"{path} is not a checkpoint of the reference GAP CNN: missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} (its keys start with {sample}).",
            hint="for another architecture pass --arch MODULE:CALLABLE, e.g. "
                 "--arch torchvision.models:resnet18 or --arch my_net.py:build.")
    weight = state["conv1.0.weight"]
    if weight.ndim != 4:
        raise CheckpointError(f"{path}: conv1.0.weight has shape {tuple(weight.shape)}, expected 4-D "
                              "(out, in, 3, 3) for the reference GAP CNN.")
    inferred = int(state["fcn.weight"].shape[0])
    if num_classes is not None and num_classes != inferred:
        raise CheckpointError(f"--num-classes {num_classes} does not match {path}: fcn.weight has "
                              f"{inferred} rows.", hint=f"drop --num-classes or pass --num-classes {inferred}.")
    return GapCNN(in_channels=int(weight.shape[1]), num_classes=inferred), "GapCNN"


def build_arch(spec: str, num_classes: int | None = None) -> tuple[nn.Module, str]:
    """Instantiate ``module:callable`` (a module path or a .py file), with num_classes if given."""
    factory = import_attribute(spec, "--arch",
                               "e.g. --arch torchvision.models:resnet18 or --arch nets/my_net.py:build.")
    attr = spec.rpartition(":")[2]
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise CheckpointError(f"--arch {spec}: calling {attr}({_kw(kwargs)}) failed: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"--arch {spec} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model, spec


def import_attribute(spec: str, option: str, example: str, error: type[GapError] = CheckpointError) -> Any:
    """The object named by ``MODULE:NAME`` (an importable module or a .py file; NAME may be dotted), for an option
    (--arch, --preprocess) whose errors say which option and how to fix it."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise error(f"{option} {spec!r} is not of the form MODULE:CALLABLE (a module or a .py file, a colon, a name).",
                    hint=example)
    source = Path(module_name)
    try:
        if source.suffix == ".py":
            if not source.is_file():
                raise error(f"{option} file {source} does not exist.", hint=example)
            spec_obj = importlib.util.spec_from_file_location(f"_gap_user_{source.stem}", source)
            if spec_obj is None or spec_obj.loader is None:
                raise error(f"{option} file {source} cannot be imported as Python.", hint=example)
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[spec_obj.name] = module
            with _quiet_import():
                spec_obj.loader.exec_module(module)
        else:
            with _quiet_import():
                module = importlib.import_module(module_name)
    except error:
        raise
    except SystemExit as exc:  # a script that parses argv or exits at import
        raise error(f"{option} module {module_name!r} exited while being imported (exit {exc.code}).",
                    note="it runs code at import (for example argparse or sys.exit); gap-export needs "
                         "a module that only defines things.",
                    hint="move the script part under `if __name__ == \"__main__\":`.") from None
    except Exception as exc:
        raise error(f"cannot import {option} module {module_name!r}: {first_line(exc)}",
                    hint="give an importable module (pip-installed or on PYTHONPATH) or a .py path.") from None
    found = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise error(f"{option}: {module_name!r} has no attribute {attr!r}.")
    return found


@contextlib.contextmanager
def _quiet_import():
    """Import a user's module with an empty argv and its prints kept off our stdout."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "gap-export"]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.argv = saved


def _kw(kwargs: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict(strict=True)`` with the differences said in the user's terms."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or wrong):
        module.load_state_dict(state, strict=True)
        return
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_few(unexpected)}")
    if wrong:
        parts.append(f"wrong shapes ({len(wrong)}): {_few(wrong)}")
    hint = "check that --arch names the architecture the checkpoint was trained with."
    if any(k.startswith("module.") for k in unexpected):
        hint = "some keys carry a 'module.' prefix (DataParallel) and others do not; re-save a consistent state_dict."
    elif wrong and any(k.split(":")[0].endswith(("fc.weight", "fcn.weight", "classifier.weight", "head.weight",
                                                 "classifier.1.weight", "classifier.3.weight")) for k in wrong):
        hint = "the classifier's size differs: pass --num-classes N with the checkpoint's number of classes."
    raise CheckpointError(f"{path} does not fit the model: " + "; ".join(parts) + ".", hint=hint)


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def first_conv_channels(module: nn.Module) -> int:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return int(layer.in_channels)
    for tensor in module.state_dict().values():  # TorchScript hides layer types; its first 4-D weight does not
        if tensor.ndim == 4:
            return int(tensor.shape[1])
    raise CheckpointError(f"{type(module).__name__} has no Conv2d layer, so its input channels are unknown.",
                          hint="gap-deploy exports convolutional networks with NCHW image inputs.")
