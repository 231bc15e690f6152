"""gap-run on real image files of different sizes, modes and formats."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gap_deploy.runtime.cli.run import main
from tests.conftest import assert_clean_failure

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    PIL.fromarray((rng.random((40, 60, 3)) * 255).astype("uint8")).save(d / "rgb.png")
    PIL.fromarray((rng.random((33, 21)) * 255).astype("uint8"), "L").save(d / "gray.jpg")
    PIL.fromarray((rng.random((50, 50, 4)) * 255).astype("uint8"), "RGBA").save(d / "alpha.png")
    PIL.fromarray((rng.random((40, 60, 3)) * 255).astype("uint8")).convert("P").save(d / "palette.bmp")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


def test_folder_with_one_broken_file(folder, reference_onnx):
    result = CliRunner().invoke(main, [str(reference_onnx), str(folder), "--topk", "2", "--format", "json"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    report = json.loads(result.stdout)
    assert {r["file"].split("/")[-1] for r in report["results"]} == {"rgb.png", "gray.jpg", "alpha.png", "palette.bmp"}
    assert [e["file"].split("/")[-1] for e in report["errors"]] == ["broken.png"]
    assert "not a readable image" in report["errors"][0]["error"]
    first = report["results"][0]
    assert len(first["top"]) == 2 and first["top"][0]["prob"] >= first["top"][1]["prob"]
    assert first["top"][0]["name"].startswith("class")  # names from the ONNX metadata


def test_results_match_the_session_on_normalized_pixels(folder, reference_onnx):
    from gap_deploy import runtime
    from gap_deploy.runtime.images import softmax
    from gap_deploy.runtime.preprocess import load_image, normalize

    result = CliRunner().invoke(main, [str(reference_onnx), str(folder / "rgb.png"), "--format", "json", "-k", "10"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["results"][0]["top"]
    with runtime.load(reference_onnx) as s:
        x = normalize(load_image(folder / "rgb.png"), s.metadata)
        probs = softmax(s.run(x[None])[0].astype(np.float64))
    assert top[0]["index"] == int(probs.argmax())
    assert abs(top[0]["prob"] - probs.max()) < 1e-6
    assert x.shape == (3, 40, 60)  # native size kept


def test_too_small_image_is_skipped_by_name(tmp_path, reference_onnx):
    PIL.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "tiny.png")
    PIL.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    result = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path / "tiny.png"), str(tmp_path / "ok.png")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "ok.png (8x8)" in result.stdout
    assert "tiny.png" in result.stderr and "below this model's minimum of 4x4" in result.stderr


def test_imgsz_resizes(folder, reference_onnx):
    result = CliRunner().invoke(main, [str(reference_onnx), str(folder / "gray.jpg"), "--imgsz", "16x24"])
    assert result.exit_code == 0 and "(16x24)" in result.stdout


def test_missing_artifact(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "none.onnx"), str(tmp_path)])
    assert_clean_failure(result, "does not exist")


def test_many_images_show_progress(tmp_path, reference_onnx):
    for i in range(24):
        PIL.fromarray(np.full((8 + i % 3, 8, 3), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    result = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 24 and "Classifying" in result.stderr


def test_16_bit_and_float_images_keep_their_range(tmp_path):
    from PIL import Image

    from gap_deploy.runtime.preprocess import load_image

    ramp = np.linspace(0, 1, 32 * 40).reshape(32, 40)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "f.tiff")
    Image.fromarray((ramp * 255).astype(np.float32)).save(tmp_path / "f255.tiff")
    for name in ("g16.png", "f.tiff", "f255.tiff"):
        pixels = load_image(tmp_path / name, 3)
        assert pixels.shape == (3, 32, 40)
        np.testing.assert_allclose(pixels[0], ramp, atol=1e-4)  # not clipped to white or black
        np.testing.assert_array_equal(pixels[0], pixels[2])
    Image.fromarray((ramp * 1e6).astype(np.float32)).save(tmp_path / "wild.tiff")
    from gap_deploy.runtime.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no pixel range this tool knows"):
        load_image(tmp_path / "wild.tiff", 3)


def test_grayscale_models_run_on_8_bit_images_like_rgb_ones(tmp_path):
    """Failed before: every 1-channel model failed on every 8-bit image ("axes don't match array": the grayscale
    image decoded to H x W and was transposed as if it had a channel axis), in gap-run, gap-eval and Ray."""
    import torch
    from PIL import Image

    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.runtime.cli.eval import main as evaluate
    from gap_deploy.runtime.preprocess import load_image
    from tests.conftest import make_reference

    ckpt = tmp_path / "gray.pt"
    torch.save(make_reference(in_channels=1).state_dict(), ckpt)
    model = export_onnx(load_model(ckpt), tmp_path / "gray.onnx", dynamic=True, imgsz=(16, 16),
                        class_names=tuple(f"class{i}" for i in range(10))).path
    (tmp_path / "data" / "class2").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, mode in enumerate(("L", "RGB", "P")):
        pixels = rng.integers(0, 256, (14 + i, 18), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(tmp_path / "data" / "class2" / f"{i}_{mode}.png")
    images = sorted((tmp_path / "data" / "class2").iterdir())
    assert [load_image(p, 1).shape for p in images] == [(1, 14, 18), (1, 15, 18), (1, 16, 18)]
    assert load_image(images[0], 1, (9, 7)).shape == (1, 9, 7)
    result = CliRunner().invoke(main, [str(model), *map(str, images)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 3
    result = CliRunner().invoke(evaluate, [str(model), "--data", str(tmp_path / "data"), "--imgsz", "12"])
    assert result.exit_code == 0, result.output


def test_a_newline_in_a_file_name_never_splits_a_line(tmp_path, reference_onnx):
    from PIL import Image

    Image.new("RGB", (12, 12), (9, 9, 9)).save(tmp_path / "two\nlines.png")
    (tmp_path / "bad\nname.png").write_bytes(b"not an image")
    result = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout.count("\n") == 1 and "two\\nlines.png (12x12)" in result.stdout
    skipped = [line for line in result.stderr.splitlines() if line.startswith("Skipped")]
    assert len(skipped) == 1 and "bad\\nname.png" in skipped[0]


def test_a_pytorch_checkpoint_is_named_as_one_with_the_export_to_run(folder, reference_ckpt, tmp_path):
    """gap-run on the .pt (a common first mistake): not "Wire format was corrupt", but what it is and what to run;
    the same for a pickle written with torch.save's old format, and no such hint for other bytes."""
    import pickle

    result = CliRunner().invoke(main, [str(reference_ckpt), str(folder)])
    assert_clean_failure(result, "is a PyTorch checkpoint, not an ONNX model", f"gap-export {reference_ckpt} --dynamic")
    old = tmp_path / "old.pth"
    old.write_bytes(pickle.dumps({"weight": [1.0]}, protocol=2))
    assert_clean_failure(CliRunner().invoke(main, [str(old), str(folder)]), "is a PyTorch checkpoint")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x01\x02 not a model" * 10)
    result = CliRunner().invoke(main, [str(garbage), str(folder)])
    assert_clean_failure(result, "cannot read ONNX model")
    assert "PyTorch checkpoint" not in result.output


def test_no_images_is_a_usage_error_that_shows_the_command(reference_onnx):
    result = CliRunner().invoke(main, [str(reference_onnx)])
    assert_clean_failure(result, "no images given", "IMAGES...", code=2)
    assert "no image files in  (" not in result.output


def test_a_class_per_folder_tree_needs_recursive_and_says_so(reference_onnx, tmp_path):
    """Sub-folders are not walked unless -r; a folder holding only folders says to add it. Quoted ** globs give
    the same files locally as gap-run --ray's listing (runtime.batch.expand_sources)."""
    from gap_deploy.runtime.batch import expand_sources

    root = tmp_path / "heldout"
    for name, size in (("cat", (40, 30)), ("dog", (33, 45))):
        (root / name / "more").mkdir(parents=True)
        PIL.new("RGB", size, (10, 200, 30)).save(root / name / f"{name}.png")
        PIL.new("RGB", size, (200, 10, 30)).save(root / name / "more" / f"{name}2.jpg")
    (tmp_path / "loop").symlink_to(root, target_is_directory=True)
    (root / "cat" / "back").symlink_to(root, target_is_directory=True)  # a loop: links are not followed
    result = CliRunner().invoke(main, [str(reference_onnx), str(root)])
    assert_clean_failure(result, "holds folders: add -r/--recursive", code=1)
    result = CliRunner().invoke(main, [str(reference_onnx), str(root), "-r", "--format", "json"])
    assert result.exit_code == 0, result.output
    files = [item["file"] for item in json.loads(result.stdout)["results"]]
    assert sorted(Path(f).name for f in files) == ["cat.png", "cat2.jpg", "dog.png", "dog2.jpg"]
    pattern = str(root / "**" / "*.jpg")
    result = CliRunner().invoke(main, [str(reference_onnx), pattern, "--format", "json"])
    local = sorted(item["file"] for item in json.loads(result.stdout)["results"])
    ray_paths, errors = expand_sources([pattern])
    assert not errors and local == sorted(ray_paths) and len(local) == 2
    ray_all, _ = expand_sources([str(root)], recursive=True)
    assert sorted(Path(p).name for p in ray_all) == ["cat.png", "cat2.jpg", "dog.png", "dog2.jpg"]


def test_json_lines_stream_each_result_as_it_is_done_and_end_with_a_summary(folder, reference_onnx, monkeypatch):
    """One JSON object per file in input order (an unreadable one holds its error), then the summary; a run that
    dies midway keeps every line already done (nothing is held for the end)."""
    import gap_deploy.runtime.cli.run as run_module

    result = CliRunner().invoke(main, [str(reference_onnx), str(folder), "--format", "jsonl", "-k", "2"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 1  # the broken file
    *items, last = lines
    images = sorted(p for p in folder.iterdir() if p.suffix != ".txt")
    assert [Path(i["file"]).name for i in items] == [p.name for p in images]
    assert sum("error" in i for i in items) == 1 and all(len(i["top"]) == 2 for i in items if "error" not in i)
    assert last["summary"]["images"] == len(items) and last["summary"]["failed"] == 1

    real = run_module.iter_classify

    def dies_after_two(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield item
    monkeypatch.setattr(run_module, "iter_classify", dies_after_two)
    result = CliRunner().invoke(main, [str(reference_onnx), str(folder), "--format", "jsonl"])
    assert result.exit_code != 0
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [str(p) for p in images[:2]]
    for both in (["--json-lines", "--json"], ["--format", "csv", "--json"], ["--json", "--format", "jsonl"]):
        assert_clean_failure(CliRunner().invoke(main, [str(reference_onnx), str(folder), *both]), "choose one", code=2)


def test_no_image_files_is_the_same_exit_with_and_without_ray(reference_onnx, tmp_path):
    """The same condition, the same code: a folder without images exits 1 locally and with --ray (Ray's listing
    answered 2, a usage error, before), with the same message."""
    from gap_deploy.runtime.batch import expand_sources
    from gap_deploy.runtime.errors import InputError

    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_failure(CliRunner().invoke(main, [str(reference_onnx), str(empty)]), "no image files in", code=1)
    with pytest.raises(InputError, match="no image files in"):
        expand_sources([str(empty)])
