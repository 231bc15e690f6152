"""Signed artifacts, judged by the upstream verifier (model-signing's own ``model_signing verify key`` CLI) and by
gap-deploy (runtime.load's verify_key, gap-verify): every writer signs in the same publication as the artifact;
a flipped byte, an added file or a swapped parent is refused, naming the file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("model_signing")

from gap_deploy import runtime  # noqa: E402
from gap_deploy.runtime.cli.verify import main as gap_verify  # noqa: E402
from gap_deploy.runtime.errors import UntrustedCodeError  # noqa: E402
from gap_deploy.runtime.signing import signature_path, verify_path  # noqa: E402
from tests.conftest import assert_clean_failure, make_key_pair  # noqa: E402

UPSTREAM = Path(sys.executable).with_name("model_signing")


def upstream_verify(path: Path, public: Path) -> subprocess.CompletedProcess:
    """The upstream verifier, unchanged: model-signing's CLI in key mode."""
    return subprocess.run([str(UPSTREAM), "verify", "key", "--signature", str(signature_path(path)),
                           "--public_key", str(public), str(path)], capture_output=True, text=True, timeout=120)


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def signed_exports(tmp_path_factory, reference_ckpt, build_keys):
    """gap-export --sign-key of an FP32 ONNX and its INT8 variant, the checkpoint beside them."""
    from gap_deploy.exporter.cli.export import main as gap_export

    folder = tmp_path_factory.mktemp("signed")
    shutil.copyfile(reference_ckpt, folder / reference_ckpt.name)
    calib = folder.parent / f"{folder.name}-calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    result = CliRunner().invoke(gap_export, [str(folder / reference_ckpt.name), "--dynamic", "--imgsz", "32",
                                             "-o", str(folder / "m.onnx"), "--precision", "int8", "--calib", str(calib),
                                             "--sign-key", str(build_keys[0])])
    assert result.exit_code == 0, result.output
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_gap_export_signs_the_onnx_and_its_variant_for_the_upstream_verifier(signed_exports, build_keys):
    _, public = build_keys
    for name in ("m.onnx", "m.int8.onnx"):
        path = signed_exports / name
        assert signature_path(path).is_file()
        done = upstream_verify(path, public)
        assert done.returncode == 0, done.stdout + done.stderr
        assert verify_path(path, public).key == public
    with runtime.load(signed_exports / "m.int8.onnx", verify_key=public) as session:
        assert session.run(np.ones((1, 3, 32, 32), np.float32)).shape == (1, 10)


def test_a_flipped_byte_is_refused_by_both_verifiers_naming_the_file(signed_exports, build_keys, tmp_path):
    _, public = build_keys
    folder = _copy(signed_exports, tmp_path)
    flip_byte(folder / "m.int8.onnx", 200)
    assert upstream_verify(folder / "m.int8.onnx", public).returncode != 0
    with pytest.raises(UntrustedCodeError, match=r"m.int8.onnx: changed since it was signed"):
        runtime.load(folder / "m.int8.onnx", verify_key=public)
    result = CliRunner().invoke(gap_verify, [str(folder / "m.int8.onnx"), "--key", str(public)])
    assert_clean_failure(result, "m.int8.onnx: changed since it was signed")


def test_gap_verify_walks_variant_to_onnx_to_checkpoint_and_reruns_the_gate(signed_exports, build_keys, tmp_path):
    _, public = build_keys
    out = tmp_path / "chain.json"
    result = CliRunner().invoke(gap_verify, [str(signed_exports / "m.int8.onnx"), "--key", str(public),
                                             "--rerun-parity", "--json", str(out)])
    assert result.exit_code == 0, result.output
    import json

    chain = json.loads(out.read_text())["chain"]
    assert [Path(c["path"]).name for c in chain] == ["m.int8.onnx", "m.onnx", "gapcnn.pt"]
    assert [c["kind"] for c in chain] == ["onnx", "onnx", "checkpoint"]
    variant = chain[0]["lineage"]
    assert variant["parent_name"] == "m.onnx" and variant["options"]["precision"] == "int8"
    assert variant["evidence"]["gate_passed"] is True and variant["converters"]["onnxruntime"]
    assert chain[0]["parity_rerun"]["passed"] and len(chain[0]["parity_rerun"]["shapes"]) >= 3
    assert chain[1]["lineage"]["parent_role"] == "checkpoint"
    assert chain[1]["lineage"]["evidence"]["parity_vs_pytorch"]["passed"] is True


def test_a_swapped_parent_is_refused_naming_it(signed_exports, build_keys, tmp_path, reference_ckpt):
    """The variant's signed lineage holds its parent's SHA-256. A parent swapped for another model: the upstream
    verifier refuses it under the old signature, and gap-verify refuses the chain, naming the parent; re-signing
    the impostor satisfies the upstream verifier (it checks files, not lineage) but not gap-verify."""
    import torch

    from gap_deploy.exporter import export_onnx, load_model
    from tests.conftest import make_reference, sign_files

    private, public = build_keys
    folder = _copy(signed_exports, tmp_path)
    other = tmp_path / "other.pt"
    torch.save(make_reference(seed=5).state_dict(), other)
    export_onnx(load_model(other), folder / "m.onnx", dynamic=True, imgsz=(32, 32))  # the impostor parent
    assert upstream_verify(folder / "m.onnx", public).returncode != 0
    result = CliRunner().invoke(gap_verify, [str(folder / "m.int8.onnx"), "--key", str(public)])
    assert_clean_failure(result, "m.onnx")
    sign_files(private, folder / "m.onnx")
    assert upstream_verify(folder / "m.onnx", public).returncode == 0
    result = CliRunner().invoke(gap_verify, [str(folder / "m.int8.onnx"), "--key", str(public)])
    assert_clean_failure(result, "m.onnx is not the file m.int8.onnx was made from", "the parent was replaced")


def test_another_key_or_no_signature_is_refused(signed_exports, tmp_path):
    _, stranger = make_key_pair(tmp_path, "stranger")
    with pytest.raises(UntrustedCodeError, match="was not made by a trusted key"):
        runtime.load(signed_exports / "m.onnx", verify_key=stranger)
    assert upstream_verify(signed_exports / "m.onnx", stranger).returncode != 0
    folder = _copy(signed_exports, tmp_path)
    signature_path(folder / "m.onnx").unlink()
    with pytest.raises(UntrustedCodeError, match=r"has no signature \(m.onnx.sig is missing"):
        runtime.load(folder / "m.onnx", verify_key=stranger)


def test_an_openvino_bundle_is_signed_as_a_folder(reference_onnx, build_keys, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from gap_deploy.exporter.pack import pack

    private, public = build_keys
    monkeypatch.setenv("GAP_DEPLOY_SIGN_KEY", str(private))
    bundle = tmp_path / "ov"
    pack(reference_onnx, bundle, target="openvino")
    assert signature_path(bundle).is_file() and not (bundle / "ov.sig").exists()
    assert upstream_verify(bundle, public).returncode == 0
    with runtime.load(bundle, verify_key=public) as session:
        assert session.backend == "ov-cpu"
    flip_byte(bundle / "model.bin", 100)
    done = upstream_verify(bundle, public)
    assert done.returncode != 0 and "model.bin" in done.stdout + done.stderr
    with pytest.raises(UntrustedCodeError, match=r"model.bin in .*ov: changed since it was signed"):
        runtime.load(bundle, verify_key=public)
    flip_byte(bundle / "model.bin", 100)  # back as signed
    (bundle / "extra.txt").write_text("added later")
    done = upstream_verify(bundle, public)
    assert done.returncode != 0 and "extra.txt" in done.stdout + done.stderr
    with pytest.raises(UntrustedCodeError, match=r"extra.txt in .*ov: not signed \(added after signing\)"):
        runtime.load(bundle, verify_key=public)


def test_a_triton_repository_is_signed_as_a_whole(reference_onnx, build_keys, tmp_path, monkeypatch):
    pytest.importorskip("tritonclient")
    from gap_deploy.exporter.cli.triton import main as gap_triton

    private, public = build_keys
    repo = tmp_path / "repo"
    result = CliRunner().invoke(gap_triton, [str(reference_onnx), "-o", str(repo), "--sign-key", str(private)])
    assert result.exit_code == 0, result.output
    assert signature_path(repo).is_file() and not (repo / "gapcnn.sig").exists()  # beside it, not inside
    assert upstream_verify(repo, public).returncode == 0
    done = CliRunner().invoke(gap_verify, [str(repo), "--key", str(public)])
    assert done.exit_code == 0 and "triton repository" in done.output, done.output
    flip_byte(repo / "gapcnn" / "1" / "model.onnx", 300)
    upstream = upstream_verify(repo, public)
    assert upstream.returncode != 0 and "gapcnn/1/model.onnx" in upstream.stdout + upstream.stderr
    assert_clean_failure(CliRunner().invoke(gap_verify, [str(repo), "--key", str(public)]),
                         "gapcnn/1/model.onnx in", "changed since it was signed")


def test_a_signing_key_is_checked_before_any_work(reference_ckpt, tmp_path):
    from gap_deploy.exporter.cli.export import main as gap_export

    key = tmp_path / "k.pem"
    key.write_text("not a key")
    key.chmod(0o644)
    result = CliRunner().invoke(gap_export, [str(reference_ckpt), "-o", str(tmp_path / "m.onnx"),
                                             "--sign-key", str(key)])
    assert_clean_failure(result, "can be read or written by other users", code=2)
    assert not (tmp_path / "m.onnx").exists()
    key.chmod(0o600)
    result = CliRunner().invoke(gap_export, [str(reference_ckpt), "-o", str(tmp_path / "m.onnx"),
                                             "--sign-key", str(key)])
    assert_clean_failure(result, "could not sign")
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob("*.sig"))  # all or nothing


@pytest.mark.parametrize("target", ["ort", "ncnn"])
def test_an_onnx_with_its_lineage_packs_on_every_target(signed_exports, tmp_path, target):
    """The lineage rides in the ONNX's metadata under a key of its own (gap_deploy.lineage). Failed before: gap-pack
    copied every metadata prop into model.json, whose "metadata" holds gap.* only, so an ncnn, LiteRT or ExecuTorch
    bundle of any gap-export output was refused."""
    from gap_deploy.exporter.pack import pack

    if target == "ncnn":
        pytest.importorskip("pnnx")
        pytest.importorskip("ncnn")
    out = tmp_path / target
    pack(signed_exports / "m.onnx", out, target=target)
    with runtime.load(out) as session:
        assert session.run(np.ones((1, 3, 32, 32), np.float32)).shape == (1, 10)


def test_gap_verify_json_dash_is_stdout(signed_exports, build_keys, tmp_path, monkeypatch):
    """--json - prints the chain; it wrote a file named "-" before."""
    import json

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(gap_verify, [str(signed_exports / "m.onnx"), "--key", str(build_keys[1]),
                                             "--json", "-"])
    assert result.exit_code == 0, result.output
    chain = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])["chain"]
    assert [Path(c["path"]).name for c in chain] == ["m.onnx", "gapcnn.pt"]
    assert not (tmp_path / "-").exists()
