"""Every way a checkpoint reaches gap-export, and every way it can be wrong."""

import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gap_deploy.exporter.checkpoint import load_model  # noqa: E402
from gap_deploy.exporter.model import GapCNN  # noqa: E402
from gap_deploy.runtime.errors import ArtifactError, CheckpointError, UntrustedCodeError  # noqa: E402
from tests.conftest import make_reference  # noqa: E402


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def ref():
    return make_reference(num_classes=5, in_channels=1, seed=3)


def test_plain_state_dict_infers_channels_and_classes(tmp_path, ref):
    path = tmp_path / "w.pt"
    torch.save(ref.state_dict(), path)
    loaded = load_model(path)
    assert loaded.arch == "GapCNN" and loaded.in_channels == 1
    assert loaded.module.fcn.out_features == 5
    assert _same_weights(loaded.module, ref)
    assert not loaded.module.training
    assert len(loaded.source_sha256) == 64


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_checkpoint_dict_with_a_common_key(tmp_path, ref, key):
    path = tmp_path / "ckpt.pth"
    torch.save({key: ref.state_dict(), "epoch": 12, "optimizer": {"lr": 0.1}}, path)
    loaded = load_model(path)
    assert _same_weights(loaded.module, ref)
    assert any(key in n for n in loaded.notes)


def test_dict_without_a_state_dict_lists_its_keys(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "config": {"a": 1}}, path)
    with pytest.raises(CheckpointError, match=r"holds no state_dict.*'epoch', 'config'"):
        load_model(path)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_wrapper_prefix_is_stripped_and_said(tmp_path, ref, prefix):
    path = tmp_path / "dp.pt"
    torch.save({prefix + k: v for k, v in ref.state_dict().items()}, path)
    loaded = load_model(path)
    assert _same_weights(loaded.module, ref)
    assert any(prefix in n for n in loaded.notes)


def test_safetensors(tmp_path, ref):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(path))
    assert _same_weights(load_model(path).module, ref)


def test_truncated_safetensors(tmp_path, ref):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        load_model(path)


def test_arch_from_a_python_file_with_num_classes(tmp_path):
    src = tmp_path / "my_net.py"
    src.write_text("from exporter.model import GapCNN\n"
                   "def build(num_classes=3):\n    return GapCNN(in_channels=3, num_classes=num_classes)\n")
    model = GapCNN(num_classes=4)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=f"{src}:build", num_classes=4)
    assert _same_weights(loaded.module, model)
    with pytest.raises(CheckpointError, match=r"wrong shapes.*fcn.weight: checkpoint \(4, 64\) vs model \(3, 64\)"
                       r"(.|\n)*--num-classes"):
        load_model(path, arch=f"{src}:build")


def test_arch_from_an_importable_module(tmp_path):
    from tests.support.families import ResNetish

    model = ResNetish(num_classes=6)
    path = tmp_path / "r.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="tests.support.families:ResNetish", num_classes=6)
    assert _same_weights(loaded.module, model) and loaded.arch == "tests.support.families:ResNetish"


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "not of the form MODULE:CALLABLE"),
    ("surely_missing_module_xyz:f", "cannot import --arch module"),
    ("tests.support.families:Nope", "has no attribute 'Nope'"),
    ("missing_file.py:build", "does not exist"),
    ("os.path:join", "failed"),
])
def test_bad_arch(tmp_path, reference_ckpt, spec, message):
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(reference_ckpt, arch=spec)


def test_not_a_reference_checkpoint_suggests_arch(tmp_path):
    from tests.support.families import MobileNetish

    path = tmp_path / "m.pt"
    torch.save(MobileNetish().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"not a checkpoint of the reference GAP CNN(.|\n)*--arch"):
        load_model(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, ref):
    state = ref.state_dict()
    state.pop("conv2.0.bias")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): conv2.0.bias; unexpected keys \(1\): extra.weight"):
        load_model(path, arch="gap_deploy.exporter.model:GapCNN")


def test_wrong_shape_shows_both_shapes(tmp_path, ref):
    state = ref.state_dict()
    state["conv2.0.weight"] = torch.zeros(64, 16, 3, 3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    expected = "conv2.0.weight: checkpoint (64, 16, 3, 3) vs model (64, 32, 3, 3)"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_model(path)


def test_num_classes_contradicting_the_weights(reference_ckpt):
    with pytest.raises(CheckpointError, match="--num-classes 3 does not match"):
        load_model(reference_ckpt, num_classes=3)


class _Whole(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = GapCNN()

    def forward(self, x):
        return self.inner(x)


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_Whole(), path)
    with pytest.raises(UntrustedCodeError, match=r"runs code(.|\n)*--trust-checkpoint"):
        load_model(path)
    loaded = load_model(path, trust_checkpoint=True)
    assert isinstance(loaded.module, _Whole) and any("weights_only=False" in n for n in loaded.notes)


def test_torchscript_needs_trust(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(GapCNN().eval()), str(path))
    with pytest.raises(UntrustedCodeError, match=r"TorchScript archive(.|\n)*--trust-checkpoint"):
        load_model(path)
    loaded = load_model(path, trust_checkpoint=True)
    assert loaded.module(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


def test_torch_load_is_always_weights_only(tmp_path, monkeypatch, reference_ckpt):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(reference_ckpt)
    assert calls == [True]


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "random", "truncated"])
def test_unreadable_files(tmp_path, reference_ckpt, case):
    path = tmp_path / "bad.pt"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(os.urandom(4096))
    elif case == "truncated":
        path.write_bytes(reference_ckpt.read_bytes()[:3000])
    expected = {"missing": "does not exist", "directory": "is a directory", "empty": "is empty",
                "random": "cannot read checkpoint", "truncated": "cannot read checkpoint"}[case]
    with pytest.raises(ArtifactError, match=expected) as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["random bytes", "pickle with a payload", "truncated zip"])
def test_torchs_advice_to_load_unsafely_is_never_passed_on(tmp_path, kind):
    """Failed before for random bytes: torch's message inviting a retry with weights_only=False reached the user."""
    import pickle

    import torch

    from gap_deploy.exporter.checkpoint import load_model
    from gap_deploy.runtime.errors import GapError

    path = tmp_path / "model.pt"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "pickle with a payload":
        class Payload:
            def __reduce__(self):
                return (print, ("this must never run",))

        path.write_bytes(pickle.dumps({"w": Payload()}))
    else:
        torch.save({"w": torch.zeros(3)}, path)
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(GapError) as caught:
        load_model(path)
    text = str(caught.value).lower()
    assert "weights_only=false" not in text and "will likely succeed" not in text and "arbitrary code" not in text


def test_nan_weights_are_named(tmp_path):
    """Failed before: reported only as "differs from PyTorch ... nan" after the export."""
    import torch

    from gap_deploy.exporter.checkpoint import load_model
    from gap_deploy.runtime.errors import CheckpointError
    from tests.conftest import make_reference

    model = make_reference()
    state = model.state_dict()
    state["conv2.0.weight"][0, 0, 0, 0] = float("nan")
    state["fcn.bias"][1] = float("inf")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"NaN or infinite weights: conv2.0.weight \(1 of \d+\), fcn.bias"):
        load_model(tmp_path / "nan.pt")
