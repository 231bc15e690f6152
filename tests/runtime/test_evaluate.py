"""gap-eval: accuracy per artifact and size on a labelled folder, against a direct computation."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")

from gap_deploy import runtime  # noqa: E402
from gap_deploy.runtime.cli.eval import main  # noqa: E402
from gap_deploy.runtime.evaluate import evaluate  # noqa: E402
from gap_deploy.runtime.preprocess import load_image, normalize  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402

CLASSES = tuple(f"class{i}" for i in range(10))  # the reference fixture's class names


@pytest.fixture
def labelled(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "val"
    for k in (0, 3, 7):
        (root / CLASSES[k]).mkdir(parents=True)
        for i in range(4):
            size = (24 + 8 * i, 40 - 4 * i)
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / CLASSES[k] / f"{i}.png")
    return root


def direct(onnx_path, root, size):
    """The accuracy computed here, image by image, without gap-eval's batching or caching."""
    top1 = top5 = n = 0
    with runtime.load(onnx_path, "ort-cpu") as session:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            label = CLASSES.index(folder.name)
            for image in sorted(folder.iterdir()):
                logits = session.run(normalize(load_image(image, 3, size), session.metadata)[None])[0]
                order = np.argsort(-logits)
                top1 += int(order[0] == label)
                top5 += int(label in order[:5])
                n += 1
    return top1 / n, top5 / n, n


@pytest.mark.parametrize("size", [None, (16, 16), (48, 32)])
def test_accuracy_equals_a_direct_computation(reference_onnx, labelled, size):
    result = evaluate({"fp32": reference_onnx}, labelled, [size], batch_size=3)
    label = next(iter(result.scores["fp32"]))
    scores = result.scores["fp32"][label]
    assert (scores.top1, scores.top5, scores.images) == pytest.approx(direct(reference_onnx, labelled, size))
    assert set(scores.per_class) == set(CLASSES) and np.isnan(scores.per_class["class1"])
    assert result.errors == []


def test_cli_json_agreement_plot_and_fp16(tmp_path, reference_onnx, labelled):
    import onnx

    from gap_deploy.exporter.precision import make_variant
    from gap_deploy.runtime.parity import default_verify_shapes

    fp16 = tmp_path / "m.fp16.onnx"
    variant = make_variant(onnx.load(str(reference_onnx)), "fp16", default_verify_shapes(3, (32, 32), 4, dynamic=True))
    fp16.write_bytes(variant.model.SerializeToString())
    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    result = CliRunner().invoke(main, [f"fp32={reference_onnx}", f"fp16={fp16}", "--data", str(labelled),
                                       "--imgsz", "16", "--imgsz", "32", "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["sizes"] == ["16", "32"] and set(data["accuracy"]) == {"fp32", "fp16"}
    for size in ("16", "32"):
        want = direct(reference_onnx, labelled, (int(size), int(size)))
        got = data["accuracy"]["fp32"][size]
        assert (got["top1"], got["top5"], got["images"]) == pytest.approx(want)
        assert 0 <= data["agreement"][size]["fp32 vs fp16"] <= 1
    assert "Top-1 per class (fp32)" in result.stdout
    pytest.importorskip("matplotlib")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreadable_and_too_small_images_are_per_file_errors(reference_onnx, labelled):
    (labelled / "class0" / "broken.png").write_bytes(b"\x89PNG no")
    from PIL import Image

    Image.new("RGB", (2, 2)).save(labelled / "class3" / "tiny.png")
    result = CliRunner().invoke(main, [str(reference_onnx), "--data", str(labelled)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "broken.png" in result.output and "tiny.png" in result.output
    assert "2 image evaluation(s) failed" in result.output
    assert "     12" in result.stdout  # the 12 good images were evaluated


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "has no class sub-folders"),
    (lambda root: (root / "cat").mkdir(parents=True), "not classes of the model: cat"),
    (lambda root: (root / "class1").mkdir(parents=True), "holds no image files"),
    (lambda root: root.write_text("x"), "is not a folder"),
])
def test_bad_folders(tmp_path, reference_onnx, make, message):
    root = tmp_path / "data"
    make(root)
    assert_clean_failure(CliRunner().invoke(main, [str(reference_onnx), "--data", str(root)]), message)


def test_same_names_and_missing_artifacts_are_refused(tmp_path, reference_onnx, labelled):
    result = CliRunner().invoke(main, [f"a={reference_onnx}", f"a={reference_onnx}", "--data", str(labelled)])
    assert_clean_failure(result, "same name", code=2)
    result = CliRunner().invoke(main, [str(tmp_path / "nope.onnx"), "--data", str(labelled)])
    assert_clean_failure(result, "does not exist")
