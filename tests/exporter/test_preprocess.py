"""gap-export's preprocessing without torchvision: a contract from flags, stored in the ONNX and carried into every
artifact made from it (bundles, Triton's config), and gap-run's tensors equal to the steps written out here with
Pillow and NumPy. The diagnosis that names a differing step is judged on transforms written as plain functions;
torchvision's own transforms are judged in test_preprocess_tv.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

FLAGS = ["--resize", "shorter-side", "--crop-fraction", "0.8", "--interpolation", "bicubic", "--resize-space",
         "uint8", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3"]


@pytest.fixture(scope="module")
def flagged(tmp_path_factory, reference_ckpt):
    from gap_deploy.exporter.cli.export import main

    root = tmp_path_factory.mktemp("flags")
    out = root / "m.onnx"
    result = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "--imgsz", "32", *FLAGS, "-o", str(out),
                                       "--json", str(root / "r.json")])
    assert result.exit_code == 0, result.output
    assert "Preprocessing contract (not checked: no transform given" in result.output
    return out, json.loads((root / "r.json").read_text())


def _by_hand(path):
    """The flags' steps written out: Pillow bicubic of the shorter side to floor(32 / 0.8) = 40, centre crop 32 at
    torchvision's rounding, /255, then (x - mean) / std."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    size = (40, int(40 * h / w)) if w <= h else (int(40 * w / h), 40)
    pixels = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    top, left = int(round((size[1] - 32) / 2.0)), int(round((size[0] - 32) / 2.0))
    chw = pixels[top:top + 32, left:left + 32].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (chw - np.float32([0.5, 0.4, 0.3])[:, None, None]) / np.float32([0.2, 0.25, 0.3])[:, None, None]


def test_gap_run_makes_the_tensors_the_flags_describe(flagged, tmp_path):
    import onnxruntime as ort

    from gap_deploy.runtime.cli.run import main

    onnx_path, report = flagged
    assert report["preprocess"]["contract"]["resize"] == "shorter side to 40, bicubic, antialias (uint8)"
    rng = np.random.default_rng(5)
    files = []
    for i, (w, h) in enumerate([(61, 45), (45, 61), (40, 40), (130, 33), (33, 130)]):
        files.append(tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    result = CliRunner().invoke(main, [str(onnx_path), *map(str, files), "--format", "json", "-k", "10"])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for item in json.loads(result.stdout)["results"]:
        assert item["size"] == [32, 32]
        logits = session.run(None, {"images": _by_hand(item["file"])[None]})[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        got = {t["index"]: t["prob"] for t in item["top"]}
        np.testing.assert_allclose([got[i] for i in range(10)], probs, atol=1e-6)


def test_the_contract_travels_into_bundles_and_triton_s_config(flagged, tmp_path):
    from gap_deploy import runtime
    from gap_deploy.exporter.pack import pack
    from gap_deploy.exporter.triton import ServeOptions, write_repository

    onnx_path, _ = flagged
    with runtime.load(onnx_path) as session:
        contract = session.metadata.preprocessing()
    assert contract.crop_fraction == 0.8 and contract.interpolation == "bicubic" and contract.space == "uint8"
    pack(onnx_path, tmp_path / "ort")
    with runtime.load(tmp_path / "ort") as bundle:
        assert bundle.metadata.preprocessing() == contract
    write_repository([onnx_path], tmp_path / "repo", ServeOptions(backend="onnxruntime"))
    config = (tmp_path / "repo" / "m" / "config.pbtxt").read_text()
    assert "gap.preprocess" in config and "bicubic" in config


def test_the_export_check_names_the_step_of_a_transform_written_by_hand(reference_ckpt, tmp_path):
    """A plain function is a transform too (PIL image -> array): the check runs it as a black box. Written with
    Pillow to be the flags' contract except for the interpolation (bilinear), it is refused naming that step."""
    from gap_deploy.exporter.cli.export import main

    (tmp_path / "mine.py").write_text('''
import numpy as np
from PIL import Image


def make():
    def transform(image):
        w, h = image.size
        size = (40, int(40 * h / w)) if w <= h else (int(40 * w / h), 40)
        pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
        top, left = int(round((size[1] - 32) / 2.0)), int(round((size[0] - 32) / 2.0))
        chw = pixels[top:top + 32, left:left + 32].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (chw - np.float32([0.5, 0.4, 0.3])[:, None, None]) / np.float32([0.2, 0.25, 0.3])[:, None, None]
    return transform
''')
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "--imgsz", "32", *FLAGS, "-o", str(out),
                                       "--check-transform", f"{tmp_path / 'mine.py'}:make"])
    assert result.exit_code == 1
    assert "Resize interpolation: the transform's is bilinear, the contract's bicubic" in result.output
    assert not out.exists()
    fixed = [a if a != "bicubic" else "bilinear" for a in FLAGS]
    result = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "--imgsz", "32", *fixed, "-o", str(out),
                                       "--check-transform", f"{tmp_path / 'mine.py'}:make"])
    assert result.exit_code == 0, result.output
    assert "largest tensor difference 0/255" in result.output and out.exists()
