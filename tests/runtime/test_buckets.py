"""gap-tune --traffic --buckets: traffic read from headers, routing by the contract, per-bucket accuracy from the
labelled images routed there, K = 1 equal to gap-tune's own choice, and the command's bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from gap_deploy.runtime.buckets import coverage_notes, effective_sides, plan_buckets, read_traffic, route, traffic_top1
from gap_deploy.runtime.errors import InputError, UsageError
from gap_deploy.runtime.preprocess import Preprocess
from gap_deploy.runtime.tune import TunePoint, TuneResult, decide
from tests.conftest import assert_clean_failure


def test_effective_sides_follow_the_contract():
    sizes = np.array([[100, 60], [40, 200]])  # (height, width)
    shorter = Preprocess(resize="shorter-side", size=(64, 64), crop_fraction=0.5)
    assert effective_sides(sizes, shorter).tolist() == [30.0, 20.0]  # shorter side x the crop fraction
    assert effective_sides(sizes, Preprocess(resize="letterbox", size=(64, 64))).tolist() == [100.0, 200.0]
    assert effective_sides(sizes, Preprocess(resize="stretch", size=(64, 64))).tolist() == [100.0, 200.0]
    assert effective_sides(sizes, Preprocess()).tolist() == [100.0, 200.0]


def test_an_image_goes_to_the_smallest_bucket_at_least_its_side():
    assert route(np.array([1, 32, 33, 64, 65, 500]), [32, 64]).tolist() == [0, 0, 1, 1, 1, 1]
    assert route(np.array([10, 1000]), [48]).tolist() == [0, 0]  # one bucket takes everything


def _png(path: Path, width: int, height: int, orientation: int | None = None) -> None:
    from PIL import Image

    image = Image.new("RGB", (width, height), (10, 20, 30))
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path.with_suffix(".jpg"), exif=exif)


def test_traffic_is_read_from_headers_turned_as_the_contract_turns_them(tmp_path):
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "a.png", 30, 20)
    _png(tmp_path / "sub" / "b.png", 50, 40)
    _png(tmp_path / "phone.png", 40, 80, orientation=6)  # stored 40 wide, 80 high; displayed 80 x 40
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    traffic = read_traffic([tmp_path])
    assert traffic.files == 4 and traffic.sampled == 3 and len(traffic.errors) == 1
    assert sorted(map(tuple, traffic.sizes.tolist())) == [(20, 30), (40, 50), (40, 80)]  # (height, width)
    listing = tmp_path / "list.txt"
    listing.write_text("# the two that matter\na.png\n\nsub/b.png\n")
    assert sorted(map(tuple, read_traffic([listing]).sizes.tolist())) == [(20, 30), (40, 50)]
    sampled = read_traffic([tmp_path], sample=2)
    assert sampled.files == 4 and sampled.sampled + len(sampled.errors) == 2


def test_traffic_that_gives_no_size_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no image files"):
        read_traffic([tmp_path])
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="no header of the 1 image"):
        read_traffic([tmp_path])


def _result(rng, sizes=(16, 24, 32, 48), n=60):
    """A sweep's result: per-image hits per size (right more often at larger sizes, less for large images at
    small sizes), latencies growing with size."""
    label_sides = rng.integers(10, 70, n)
    points, hits = [], {}
    for s in sizes:
        p_right = np.clip(0.95 - 0.6 * np.maximum(label_sides - s, 0) / 60, 0.05, 0.99)
        h = (rng.random(n) < p_right).astype(np.int8)
        h[rng.random(n) < 0.03] = -1  # an image that could not run there
        ran = h >= 0
        hits[("a", "ort-cpu", str(s))] = h
        points.append(TunePoint("a", "ort-cpu", str(s), (1, 3, s, s), int(h[ran].sum()), int(h[ran].sum()),
                                int(ran.sum()), 0.01 * s * s / 16 + float(rng.random()) * 1e-3, 1.0, 1.0))
    result = TuneResult("val", ("x", "y"), 1, n, points=points)
    result.hits = hits
    return result, np.stack([label_sides, label_sides], axis=1)


@pytest.mark.parametrize("seed", range(5))
def test_one_bucket_is_gap_tunes_own_choice(seed):
    """K = 1 routes everything to the one bucket, so the plan is decide()'s choice among the fixed sizes, with the
    same top-1 and latency."""
    rng = np.random.default_rng(seed)
    result, labelled = _result(rng)
    traffic = SimpleNamespace(sizes=np.stack([rng.integers(8, 90, 200)] * 2, axis=1))
    for threshold in (0.5, 0.7, 0.8):
        try:
            expected = decide(result.points, min_top1=threshold).chosen
        except UsageError:
            continue
        plan = plan_buckets(result, traffic, labelled, Preprocess(), k=1, min_top1=threshold).chosen
        (bucket,) = plan.buckets
        assert bucket.label == expected.size and bucket.share == 1.0
        assert (bucket.correct, bucket.images, plan.mean_ms) == (expected.correct, expected.images,
                                                                 expected.latency_ms)


def test_a_plan_by_hand():
    """Three sizes; traffic of sides 10 (70%) and 40 (30%); labelled images of side 10 right at every size, of
    side 40 right only at 48. Two buckets: [16, 48], predicted 0.7 x 1 + 0.3 x 9 = 3.4 ms, where one size (48)
    takes 9 ms."""
    sides = np.array([10] * 10 + [40] * 10)
    hits = {"16": [1] * 10 + [0] * 10, "32": [1] * 10 + [0] * 10, "48": [1] * 20}
    lat = {"16": 1.0, "32": 4.0, "48": 9.0}
    points = [TunePoint("a", "ort-cpu", s, (1, 3, int(s), int(s)), sum(h), sum(h), 20, lat[s], 1.0, 1.0)
              for s, h in hits.items()]
    result = TuneResult("val", ("x", "y"), 1, 20, points=points)
    result.hits = {("a", "ort-cpu", s): np.array(h, np.int8) for s, h in hits.items()}
    traffic = SimpleNamespace(sizes=np.array([[10, 10]] * 7 + [[40, 40]] * 3))
    planning = plan_buckets(result, traffic, np.stack([sides, sides], 1), Preprocess(), k=2, min_top1=0.9)
    chosen = planning.chosen
    assert [b.label for b in chosen.buckets] == ["16", "48"] and [b.share for b in chosen.buckets] == [0.7, 0.3]
    assert chosen.mean_ms == pytest.approx(3.4) and chosen.p95_ms == 9.0
    assert [(b.correct, b.images) for b in chosen.buckets] == [(10, 10), (10, 10)]
    assert planning.single.mean_ms == 9.0 and planning.single.buckets[0].label == "48"
    auto = plan_buckets(result, traffic, np.stack([sides, sides], 1), Preprocess(), k="auto", min_top1=0.9)
    # K=3 adds 32, which no image routes to: the whole labelled set at 32 (50%) stands in and fails 90%
    assert sorted(auto.by_k) == [1, 2] and auto.chosen.mean_ms == pytest.approx(3.4)
    assert len(auto.chosen.buckets) == 2
    with pytest.raises(UsageError, match="more buckets than the 3 size"):
        plan_buckets(result, traffic, np.stack([sides, sides], 1), Preprocess(), k=4, min_top1=0.9)


def test_a_buckets_accuracy_on_the_traffic_is_the_labelled_images_reweighted_to_its_sizes():
    """Labelled images of sides 20-39 all right, of 60-79 all wrong (20 each); the bucket's labelled top-1 is 50%.
    Traffic all near 70 -> expected ~0%; all near 30 -> ~100%; half and half -> 50%, and the interval narrows
    with more labelled images where the traffic is (Kish's effective size)."""
    sides = np.r_[np.arange(20, 40), np.arange(60, 80)].astype(float)
    hits = np.r_[np.ones(20), np.zeros(20)].astype(np.int8)
    large, _ = traffic_top1(sides, hits, np.full(50, 70.0))
    small, (low, high) = traffic_top1(sides, hits, np.full(50, 30.0))
    assert large == 0.0 and small == 1.0 and low > 0.8 and high == 1.0
    half, (low, high) = traffic_top1(sides, hits, np.r_[np.full(25, 30.0), np.full(25, 70.0)])
    assert half == pytest.approx(0.5) and 0.3 < low < 0.5 < high < 0.7
    # traffic spread like the labelled images: four times the labelled images, a narrower interval
    _, (low1, high1) = traffic_top1(sides, hits, sides)
    _, (low4, high4) = traffic_top1(np.tile(sides, 4), np.tile(hits, 4), sides)
    assert high4 - low4 < 0.6 * (high1 - low1)
    assert traffic_top1(sides, hits, np.array([])) == (None, None)


def test_traffic_beyond_the_labelled_sizes_of_a_bucket_is_said():
    """A bucket whose traffic has sides the labelled images routed there do not is named with the range."""
    points = [TunePoint("a", "ort-cpu", s, (1, 3, int(s), int(s)), 5, 5, 10, 1.0, 1.0, 1.0) for s in ("16", "48")]
    plan = SimpleNamespace(buckets=[SimpleNamespace(size=p.shape[2:], label=p.size) for p in points])
    labelled = np.r_[np.full(10, 12.0), np.full(10, 30.0)]
    assert coverage_notes(plan, np.r_[np.full(10, 12.0), np.full(10, 30.0)], labelled) == ()
    (note,) = coverage_notes(plan, np.r_[np.full(10, 12.0), np.full(10, 200.0)], labelled)
    assert note.startswith("bucket 48: 100% of its traffic has effective sides 200-200") and "(30-30)" in note


# ---- the command, on the reference model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("buckets")
    rng = np.random.default_rng(5)
    for c in range(3):
        (root / "val" / f"class{c}").mkdir(parents=True)
        for i in range(5):
            side = (12, 20, 40)[i % 3]
            Image.fromarray(rng.integers(0, 256, (side, side + i, 3), dtype=np.uint8)).save(
                root / "val" / f"class{c}" / f"{i}.png")
    (root / "traffic").mkdir()
    for i in range(30):
        side = 10 if i < 24 else 44  # skewed small, unlike the labelled set
        Image.fromarray(rng.integers(0, 256, (side, side + 1, 3), dtype=np.uint8)).save(root / "traffic" / f"{i}.png")
    (root / "empty").mkdir()
    return root


def run(*args):
    from gap_deploy.exporter.cli.tune import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_gap_tune_plans_buckets_and_one_bucket_is_its_own_choice(folders, reference_onnx, tmp_path):
    common = [f"a={reference_onnx}", "--data", folders / "val", "--imgsz", "8,16,24", "--no-native", "--duration",
              "0.05", "--min-top1", "0", "--traffic", folders / "traffic"]
    result = run(*common, "--buckets", "1", "--json", tmp_path / "one.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "one.json").read_text())
    chosen = data["decision"]["chosen"]
    (bucket,) = data["buckets"]["chosen"]["buckets"]
    assert str(bucket["size"][0]) == chosen["size"] and bucket["latency_ms"] == chosen["latency_ms"]
    assert data["buckets"]["traffic"]["read"] == 30
    two = run(*common, "--buckets", "2", "--json", tmp_path / "two.json")
    assert two.exit_code == 0, two.output
    both = json.loads((tmp_path / "two.json").read_text())
    plan = both["buckets"]["chosen"]
    latency = {p["size"]: p["latency_ms"] for p in both["points"]}  # this run's own timings
    assert len(plan["buckets"]) == 2 and sum(b["share"] for b in plan["buckets"]) == pytest.approx(1.0)
    assert plan["mean_ms"] == pytest.approx(sum(b["share"] * latency[str(b["size"][0])] for b in plan["buckets"]))
    assert "Buckets for the traffic (30 image(s))" in two.output and "sides" in two.output
    # the serving prediction: every bucket timed through gap-run's pipeline on the traffic's images
    assert all(b["stream_ms"] > 0 for b in plan["buckets"]) and "Serving (gap-run's pipeline" in two.output
    assert plan["stream_mean_ms"] == pytest.approx(sum(b["share"] * b["stream_ms"] for b in plan["buckets"]))
    assert all((b["top1_on_traffic"] is not None) == (b["share"] > 0) for b in plan["buckets"])


def test_gap_tune_serving_sample_zero_predicts_from_the_model_alone_and_the_plot_is_drawn(folders, reference_onnx,
                                                                                          tmp_path):
    from PIL import Image

    result = run(f"a={reference_onnx}", "--data", folders / "val", "--imgsz", "8,16,24", "--no-native", "--duration",
                 "0.05", "--min-top1", "0", "--traffic", folders / "traffic", "--buckets", "2", "--serving-sample",
                 "0", "--json", tmp_path / "t.json", "--plot-buckets", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "t.json").read_text())["buckets"]["chosen"]
    assert plan["stream_mean_ms"] is None and all(b["stream_ms"] is None for b in plan["buckets"])
    assert "Serving" not in result.output
    with Image.open(tmp_path / "b.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 200


@pytest.mark.parametrize("args, fragment, code", [
    (["--traffic", "{empty}", "--buckets", "2", "--min-top1", "0"], "no image files", 1),
    (["--traffic", "{traffic}", "--buckets", "5", "--min-top1", "0"], "more buckets than the 3 size", 2),
    (["--traffic", "{traffic}", "--buckets", "9", "--min-top1", "0"], "1 to 8 or auto", 2),
    (["--buckets", "2", "--min-top1", "0"], "go together", 2),
    (["--traffic", "{traffic}", "--buckets", "2", "--max-ms", "5"], "under --min-top1", 2),
    (["--min-top1", "0", "--plot-buckets", "{empty}/b.png"], "--plot-buckets draws the plan", 2),
    # the traffic's effective sides are 11 and 45 only: a third bucket would serve no image
    (["--traffic", "{traffic}", "--buckets", "3", "--min-top1", "0"], "the traffic has sizes: its 30 image(s) have "
     "2 distinct side(s)", 2),
    (["--traffic", "{broken}", "--buckets", "2", "--min-top1", "0"], "no header of the 3 image(s)", 1),
])
def test_bad_bucket_input_gets_one_clear_message(folders, reference_onnx, args, fragment, code):
    broken = folders / "broken"
    if not broken.exists():
        broken.mkdir()
        for name in ("a.png", "b.jpg", "c.png"):
            (broken / name).write_bytes(b"not an image header")
    args = [a.format(empty=folders / "empty", traffic=folders / "traffic", broken=broken) for a in args]
    result = run(f"a={reference_onnx}", "--data", folders / "val", "--imgsz", "8,16,24", "--no-native",
                 "--duration", "0.05", *args)
    assert_clean_failure(result, fragment, code=code)


def test_gap_run_routes_each_image_to_its_bucket_as_imgsz_would_run_it(tmp_path, reference_onnx):
    """gap-run --buckets: each image at the smallest bucket at least its side (the model has no resize policy, so
    its larger side), with exactly the answer gap-run --imgsz gives at that size."""
    from PIL import Image

    from gap_deploy.runtime.cli.run import main

    sides = {"a.png": (20, 25), "b.png": (50, 60), "c.png": (90, 70)}  # (height, width) -> 32, 64, 64 (largest)
    for name, (h, w) in sides.items():
        Image.fromarray(np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    routed = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path), "--buckets", "32,64", "--format", "jsonl"])
    assert routed.exit_code == 0, routed.output
    rows = {Path(r["file"]).name: r for r in map(json.loads, routed.stdout.splitlines()[:-1])}
    assert {n: r["size"] for n, r in rows.items()} == {"a.png": [32, 32], "b.png": [64, 64], "c.png": [64, 64]}
    for name, row in rows.items():
        alone = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path / name), "--imgsz", str(row["size"][0]),
                                          "--format", "jsonl"])
        assert json.loads(alone.stdout.splitlines()[0])["top"] == row["top"]
    both = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path), "--buckets", "32", "--imgsz", "32"])
    assert_clean_failure(both, "give one", code=2)


def test_the_contract_carries_its_buckets_and_a_size_given_outright_replaces_them():
    from gap_deploy.runtime.errors import MetadataError

    base = Preprocess(resize="shorter-side", size=(64, 64), crop_fraction=0.875)
    assert "buckets" not in json.loads(base.to_json())  # a contract without them reads as before
    routed = base.with_buckets([(32, 32), (96, 96)])
    again = Preprocess.from_json(routed.to_json())
    assert again.buckets == ((32, 32), (96, 96)) and again == routed
    assert ("route", "each image to the smallest of 32x32, 96x96 at least its side, else the largest") in again.steps()
    assert routed.sized((48, 48)).buckets is None  # --imgsz wins
    # shorter side x 0.875: 30 x 0.875 = 26.25 -> 32; 40 x 0.875 = 35 -> 96; anything larger -> 96
    assert [routed.routed(w, h).size for w, h in ((30, 50), (50, 40), (400, 300))] == [(32, 32), (96, 96), (96, 96)]
    for bad in ('[[32, 32], [32, 40]]', '[[0, 4]]', '"32"', '[[32, 32.5]]'):
        text = routed.to_json().replace('[[32, 32], [96, 96]]', bad)
        with pytest.raises(MetadataError):
            Preprocess.from_json(text)


def test_gap_tune_emits_a_routed_model_and_one_fixed_model_per_bucket(folders, reference_onnx, tmp_path):
    """--emit with --buckets: the routed ONNX runs each image at its bucket by itself (the same answers as
    gap-run --buckets on the original), each bucket's model is fixed to its shape, gap-build.sh holds a profile
    per bucket, and gap-run.sh runs from any folder."""
    import os
    import subprocess
    import sys

    import onnx

    from gap_deploy.runtime.cli.run import main as gap_run

    deploy = tmp_path / "deploy"
    result = run(f"a={reference_onnx}", "--data", folders / "val", "--imgsz", "8,16,24", "--no-native", "--duration",
                 "0.05", "--min-top1", "0", "--traffic", folders / "traffic", "--buckets", "2", "--emit", deploy)
    assert result.exit_code == 0, result.output
    plan = json.loads((deploy / "tune.json").read_text())["buckets"]["chosen"]
    sizes = [tuple(b["size"]) for b in plan["buckets"]]
    stem = reference_onnx.stem
    for h, w in sizes:
        dims = onnx.load(str(deploy / f"{stem}.{h}x{w}.onnx")).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == [1, 3, h, w]
    assert (deploy / "gap-build.sh").read_text().count("--profile ") == len(sizes)
    bucket_text = ",".join(f"{h}x{w}" for h, w in sizes)
    told = CliRunner().invoke(gap_run, [str(reference_onnx), str(folders / "traffic"), "--buckets", bucket_text,
                                        "--format", "jsonl", "-k", "2"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    by_itself = subprocess.run(["sh", str(deploy / "gap-run.sh"), str(folders / "traffic"), "--format", "jsonl",
                                "-k", "2"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert told.exit_code == by_itself.returncode == 0, by_itself.stderr
    a = [json.loads(line) for line in told.stdout.splitlines()[:-1]]
    b = [json.loads(line) for line in by_itself.stdout.splitlines()[:-1]]
    assert [(x["file"], x["size"]) for x in a] == [(y["file"], y["size"]) for y in b] and len(a) == 30
    assert all(x["top"][0]["name"] == y["top"][0]["name"] for x, y in zip(a, b))
    assert {tuple(x["size"]) for x in a} <= set(sizes)
    # each fixed model carries its contract at its own size: gap-run on it alone answers as --imgsz on the original
    for h, w in sizes:
        alone = CliRunner().invoke(gap_run, [str(deploy / f"{stem}.{h}x{w}.onnx"), str(folders / "traffic"),
                                             "--format", "jsonl", "-k", "1"])
        sized = CliRunner().invoke(gap_run, [str(reference_onnx), str(folders / "traffic"), "--imgsz", f"{h}x{w}",
                                             "--format", "jsonl", "-k", "1"])
        assert alone.exit_code == sized.exit_code == 0, alone.output
        rows = [json.loads(line) for line in alone.stdout.splitlines()[:-1]]
        assert len(rows) == 30 and {tuple(r["size"]) for r in rows} == {(h, w)}
        assert rows == [json.loads(line) for line in sized.stdout.splitlines()[:-1]]


@pytest.mark.slow
def test_gap_pack_buckets_sh_writes_static_programs_per_bucket_that_their_runtimes_load(folders, reference_onnx,
                                                                                        reference_ckpt, tmp_path):
    """The emitted gap-pack-buckets.sh, run as a user would: a static LiteRT and ExecuTorch program per bucket,
    each of exactly its bucket's shape in the runtime's own view (LiteRT's shape_signature, ExecuTorch's planned
    input), verified by gap-pack as written; Core ML (where coremltools is installed) with the buckets as its
    enumerated shapes, read back from the saved spec. A wrong call says how to call it."""
    import os
    import subprocess
    import sys

    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("executorch")
    deploy = tmp_path / "deploy"
    result = run(f"a={reference_onnx}", "--data", folders / "val", "--imgsz", "8,16,24", "--no-native", "--duration",
                 "0.05", "--min-top1", "0", "--traffic", folders / "traffic", "--buckets", "2", "--emit", deploy)
    assert result.exit_code == 0, result.output
    sizes = [tuple(b["size"]) for b in json.loads((deploy / "tune.json").read_text())["buckets"]["chosen"]["buckets"]]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = str(deploy / "gap-pack-buckets.sh")
    wrong = subprocess.run(["sh", script, "litert"], capture_output=True, text=True, env=env, timeout=60)
    assert wrong.returncode == 2 and "usage: sh" in wrong.stderr
    targets = "litert,executorch" + (",coreml" if _installed("coremltools") else "")
    done = subprocess.run(["sh", script, targets, str(reference_ckpt)], capture_output=True, text=True, env=env,
                          timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    from ai_edge_litert.interpreter import Interpreter
    from executorch.runtime import Runtime

    for h, w in sizes:
        (detail,) = Interpreter(model_path=str(deploy / f"litert_{h}x{w}" / "model.tflite")).get_input_details()
        assert list(detail["shape_signature"]) == [1, 3, h, w]
        method = Runtime.get().load_program(deploy / f"executorch_{h}x{w}" / "model.pte").load_method("forward")
        assert tuple(method.metadata.input_tensor_meta(0).sizes()) == (1, 3, h, w)
        for target in ("litert", "executorch"):
            verified = json.loads((deploy / f"{target}_{h}x{w}" / "model.json").read_text())["verification"]
            assert verified["passed"] and [r["shape"] for r in verified["shapes"]] == [[1, 3, h, w]]
    if "coreml" in targets:
        from gap_deploy.exporter.pack_edge import inspect_coreml

        assert inspect_coreml(deploy / "coreml" / "model.mlpackage")["input_shapes"] == [[1, 3, h, w]
                                                                                         for h, w in sizes]


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
