"""Shared fixtures: checkpoints and exported models are made once per session and reused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None


def make_reference(num_classes: int = 10, in_channels: int = 3, seed: int = 0):
    import torch

    from gap_deploy.exporter.model import GapCNN

    torch.manual_seed(seed)
    return GapCNN(in_channels=in_channels, num_classes=num_classes).eval()


def randomize_batchnorm(module, seed: int = 0):
    """Give BatchNorm layers non-trivial statistics, so that folding them into convs is really tested."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=g) * 0.1)
            layer.running_var.copy_(torch.rand(layer.num_features, generator=g) + 0.5)
            layer.weight.data.copy_(torch.rand(layer.num_features, generator=g) + 0.5)
            layer.bias.data.copy_(torch.randn(layer.num_features, generator=g) * 0.1)
    return module.eval()


@pytest.fixture(autouse=True, scope="session")
def signing_key_home(tmp_path_factory):
    """Engine manifests are signed with a key from $GAP_DEPLOY_HOME (runtime/trust.py): the tests' own, never the
    user's ~/.config/gap-deploy."""
    import os

    home = tmp_path_factory.mktemp("gap-deploy-home")
    home.chmod(0o700)
    previous = os.environ.get("GAP_DEPLOY_HOME")
    os.environ["GAP_DEPLOY_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("GAP_DEPLOY_HOME", None)
    else:
        os.environ["GAP_DEPLOY_HOME"] = previous


@pytest.fixture(scope="session")
def reference_ckpt(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "gapcnn.pt"
    torch.save(make_reference().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def reference_onnx(tmp_path_factory, reference_ckpt) -> Path:
    """The reference CNN exported with dynamic axes and verified (the path every later issue builds on)."""
    from gap_deploy.exporter import export_onnx, load_model

    out = tmp_path_factory.mktemp("onnx") / "gapcnn.onnx"
    export_onnx(load_model(reference_ckpt), out, dynamic=True, imgsz=(64, 64),
                class_names=tuple(f"class{i}" for i in range(10)))
    return out


def assert_clean_failure(result, *fragments: str, code: int = 1) -> None:
    """A CLI failure: the expected exit code, one message, no traceback."""
    output = result.output + (result.stderr if hasattr(result, "stderr") and result.stderr_bytes else "")
    assert result.exit_code == code, output
    assert "Traceback" not in output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
