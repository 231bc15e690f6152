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


def make_key_pair(folder: Path, name: str = "build") -> tuple[Path, Path]:
    """An EC P-256 key pair as PEM files (private 0600), made with cryptography (model-signing's own dependency)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.key.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="session")
def build_keys(tmp_path_factory) -> tuple[Path, Path]:
    """The tests' build key pair: (private key, public key)."""
    folder = tmp_path_factory.mktemp("keys")
    folder.chmod(0o700)
    return make_key_pair(folder)


@pytest.fixture
def trusted(build_keys, monkeypatch) -> tuple[Path, Path]:
    """The build key's public half trusted through $GAP_DEPLOY_TRUSTED_KEYS, as a device is set up."""
    monkeypatch.setenv("GAP_DEPLOY_TRUSTED_KEYS", str(build_keys[1]))
    monkeypatch.delenv("GAP_DEPLOY_SIGN_KEY", raising=False)
    return build_keys


def sign_files(key: Path, *paths: Path) -> None:
    """Sign each file or folder as gap-deploy's publications do (runtime.signing)."""
    from gap_deploy.runtime.signing import sign_path, signature_path

    for path in paths:
        sign_path(path, key, signature_path(path))


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
