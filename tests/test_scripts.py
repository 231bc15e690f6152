"""The demo's scripts: the procedural dataset, training, evaluation and the overhead benchmark."""

import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import demo_data  # noqa: E402


@pytest.mark.parametrize("label", range(len(demo_data.CLASSES)))
def test_every_class_draws_at_any_size(label):
    rng = np.random.default_rng(label)
    for h, w in [(16, 16), (37, 53), (96, 64)]:
        image = demo_data.make_image(label, h, w, rng)
        assert image.shape == (3, h, w) and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.05  # something is drawn


def test_dataset_is_deterministic_and_classes_differ():
    a, la = demo_data.make_batch(20, 32, 32, np.random.default_rng(3))
    b, lb = demo_data.make_batch(20, 32, 32, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    masks = [demo_data._mask(k, 48, 48, np.random.default_rng(0)) for k in range(10)]
    assert len({m.tobytes() for m in masks}) == 10


@pytest.mark.slow
def test_training_writes_a_loadable_checkpoint(tmp_path):
    pytest.importorskip("torch")
    import train_demo

    from gap_deploy.exporter.checkpoint import load_model

    assert train_demo.main(["--out", str(tmp_path), "--steps", "3", "--batch", "4"]) == 0
    loaded = load_model(tmp_path / "gapcnn.pt")
    assert loaded.arch == "GapCNN" and loaded.module.fcn.out_features == 10
    assert (tmp_path / "classes.txt").read_text().split() == list(demo_data.CLASSES)
    assert len(list((tmp_path / "calib").glob("*.png"))) == 128
    assert len(list((tmp_path / "samples").glob("*.png"))) == 5


def test_augmentation_crops_and_flips():
    import train_demo

    images = np.arange(2 * 3 * 12 * 12, dtype=np.float32).reshape(2, 3, 12, 12)
    out = train_demo.augment(images, np.random.default_rng(0), 8, 8)
    assert out.shape == (2, 3, 8, 8)
    for src, crop in zip(images, out):
        windows = [src[:, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
        assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, :, ::-1]) for w in windows)


def test_held_out_folder_is_what_gap_eval_reads(tmp_path):
    from gap_deploy.runtime.evaluate import read_labelled_folder

    assert demo_data.write_labelled_folder(tmp_path, per_class=2, size=24) == 20
    data = read_labelled_folder(tmp_path, demo_data.CLASSES, 10)
    assert len(data.files) == 20 and sorted(set(data.labels)) == list(range(10))


def test_overhead_script_compares_like_with_like(reference_onnx, capsys):
    import bench_overhead

    bench_overhead.main([str(reference_onnx), "--shape", "1x3x32x32", "--rounds", "20"])
    printed = capsys.readouterr().out
    assert "overhead ratio (Session / bare):" in printed and "input checks alone:" in printed


def test_gpu_check_without_a_gpu_stops_at_once_with_a_clear_message():
    import os
    import subprocess

    if importlib_util_find("tensorrt"):
        pytest.skip("the full TensorRT is installed: this machine may really run the GPU check")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2
    assert "gpu_check: needs an NVIDIA GPU and TensorRT: missing tensorrt" in done.stderr
    assert "Traceback" not in done.stderr and "PASS" not in done.stdout


def test_the_cuda_only_proof_without_a_gpu_stops_at_once_with_a_clear_message():
    import os
    import subprocess

    if importlib_util_find("cupy"):
        pytest.skip("CuPy is installed: this machine may really run the CUDA proof")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--cuda-only"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("gpu_check --cuda-only: needs an NVIDIA GPU with PyTorch CUDA, CuPy and "
                                   "cuda-bindings: missing cupy.")
    assert "Traceback" not in done.stderr and not done.stdout


def test_gpu_check_sh_and_py_name_the_same_extras():
    import re

    named = [set(re.findall(r"\.\[([a-z0-9,-]+)\]", (SCRIPTS / name).read_text())) for name in ("gpu_check.sh",
                                                                                            "gpu_check.py")]
    assert named[0] == named[1] == {"gpu-cu13,test"}


def importlib_util_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
