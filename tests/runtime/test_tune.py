"""gap-tune: Wilson intervals, the Pareto front and the decision against independent computations, and the
command on a real model (ONNX Runtime) with real images."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gap_deploy.runtime.errors import UsageError
from gap_deploy.runtime.tune import TunePoint, decide, pareto_front, tied, wilson
from tests.conftest import assert_clean_failure


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_intervals_match_the_published_values(k, n, low, high):
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=6e-5)


def point(name, top1, ms, n=300, ips=None, artifact="a", backend="ort-cpu"):
    return TunePoint(artifact, backend, name, (1, 3, 32, 32), round(top1 * n), round(top1 * n), n, ms, ms * 1.2,
                     ips if ips is not None else 1000.0 / ms)


def random_points(seed: int, count: int = 40) -> list[TunePoint]:
    rng = np.random.default_rng(seed)
    top1 = rng.integers(0, 301, count) / 300  # ties in accuracy happen
    ms = np.round(rng.uniform(0.1, 5.0, count), 1)  # ... and in latency
    return [point(f"p{i}", float(a), float(b)) for i, (a, b) in enumerate(zip(top1, ms))]


def front_by_sweep(points):
    """Independent of runtime.tune: walk from the fastest point and keep each one that beats every faster one."""
    by_ms: dict[float, list] = {}
    for p in points:
        by_ms.setdefault(p.latency_ms, []).append(p)
    front, best = [], -1.0
    for ms in sorted(by_ms):
        top = max(q.correct for q in by_ms[ms])
        if top / 300 > best:
            front += [q for q in by_ms[ms] if q.correct == top]
            best = top / 300
    return front


@pytest.mark.parametrize("seed", range(6))
def test_the_front_holds_exactly_the_non_dominated_points(seed):
    points = random_points(seed)
    assert {p.size for p in pareto_front(points)} == {p.size for p in front_by_sweep(points)}


@pytest.mark.parametrize("seed", range(6))
def test_every_decision_equals_a_brute_force_choice(seed):
    points = random_points(seed)
    for threshold in (0.2, 0.5, 0.8):
        feasible = [p for p in points if p.correct >= threshold * 300 - 1e-9]
        if not feasible:
            continue
        expected = sorted(feasible, key=lambda p: (p.latency_ms, -p.correct))[0]
        assert decide(points, min_top1=threshold).chosen is expected
    for budget in (1.0, 2.5, 4.0):
        feasible = [p for p in points if p.latency_ms <= budget]
        if not feasible:
            continue
        best = max(feasible, key=lambda p: p.correct)

        def lo_hi(p):  # the textbook formula, written out here
            z, n, x = 1.959963984540054, p.images, p.correct / p.images
            c = (x + z * z / (2 * n)) / (1 + z * z / n)
            h = z * math.sqrt(x * (1 - x) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            return c - h, c + h

        peers = [p for p in feasible if lo_hi(p)[0] <= lo_hi(best)[1] and lo_hi(best)[0] <= lo_hi(p)[1]]
        expected = sorted(peers, key=lambda p: (p.latency_ms, -p.correct))[0]
        assert decide(points, max_ms=budget).chosen is expected
    for rate in (300.0, 1000.0):
        feasible = [p for p in points if p.throughput_ips >= rate]
        if feasible:
            chosen = decide(points, min_ips=rate).chosen
            assert chosen in feasible and all(tied(chosen, q) or q.correct < chosen.correct for q in feasible)


def test_a_planted_tie_goes_to_the_faster_point():
    slow = point("slow", 0.82, 3.0, n=100)
    fast = point("fast", 0.80, 2.0, n=100)  # 80% and 82% of 100 images: the intervals overlap
    assert tied(slow, fast)
    decision = decide([slow, fast], max_ms=5.0)
    assert decision.chosen is fast and decision.tied_with == (slow,) and "tied in accuracy" in decision.reason
    many_slow, many_fast = point("slow", 0.95, 3.0, n=1000), point("fast", 0.80, 2.0, n=1000)
    assert decide([many_slow, many_fast], max_ms=5.0).chosen is many_slow  # not tied: accuracy wins
    better = decide([slow, fast], min_top1=0.79)
    assert better.chosen is fast and better.better[0][0] is slow and better.better[0][2] == pytest.approx(1.0)


def test_impossible_constraints_say_what_came_closest():
    points = [point("a", 0.5, 1.0), point("b", 0.6, 2.0)]
    with pytest.raises(UsageError, match=r"no point reaches top-1 >= 90.0%; the most accurate is a/ort-cpu @ b "
                                         r"at 60.0%"):
        decide(points, min_top1=0.9)
    with pytest.raises(UsageError, match="no point meets median latency <= 0.5 ms; the fastest is a/ort-cpu @ a"):
        decide(points, max_ms=0.5)
    with pytest.raises(UsageError, match="exactly one constraint"):
        decide(points, max_ms=1, min_top1=0.1)


# ---- the command, on the reference model and real PNG files ------------------------------------------------

@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(3)
    for c in range(4):
        folder = root / f"class{c}"
        folder.mkdir()
        for i in range(6):
            h, w = 20 + 3 * i, 24 + 2 * c
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def run(*args):
    from gap_deploy.exporter.cli.tune import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("contract", [
    {}, {"resize": "shorter-side", "size": (20, 20), "crop_fraction": 0.875, "interpolation": "bicubic",
         "space": "uint8"}, {"resize": "letterbox", "size": (20, 30), "pad_value": 114}])
def test_an_image_decoded_once_and_finished_at_each_size_is_what_gap_run_makes(labelled, contract):
    """gap-tune holds each decoded image and finishes it at every size: the same tensor gap-run makes from the file
    with --imgsz, for the legacy contract and for stored ones."""
    from gap_deploy.runtime.preprocess import Preprocess
    from gap_deploy.runtime.tune import read_file

    base = Preprocess(**contract, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    path = labelled / "class1" / "3.png"
    held = read_file(base, path, 3)
    for size in [(17, 40), (33, 33)]:
        np.testing.assert_array_equal(base.sized(size).finish(held), base.sized(size).load(path, 3))


def test_the_sweep_on_a_real_model_agrees_with_gap_eval(tmp_path, labelled, reference_onnx):
    from gap_deploy.runtime.evaluate import evaluate

    out = tmp_path / "tune.json"
    result = run(f"a={reference_onnx}", "--data", labelled, "--sizes", "8,16", "--duration", "0.05",
                 "--min-top1", "0", "--json", out, "--plot", tmp_path / "tune.png")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [p["size"] for p in data["points"]] == ["native", "8", "16"] and data["images"] == 24
    expected = evaluate({"a": reference_onnx}, labelled, [None, (8, 8), (16, 16)])
    for p in data["points"]:
        assert p["top1"] == pytest.approx(expected.scores["a"][p["size"]].top1)  # the same images, resized alike
        assert p["latency_ms"] > 0 and p["throughput_ips"] > 0 and p["top1_low"] <= p["top1"] <= p["top1_high"]
    assert data["decision"]["chosen"]["size"] in ("8", "16", "native")
    assert (tmp_path / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Chosen for top-1 >= 0.0%" in result.output and "estimated" in result.output


def test_an_int8_onnx_is_timed_in_plain_onnxruntime_too(tmp_path, labelled, reference_onnx):
    """Issue 37: gap-tune times an INT8 ONNX in gap-deploy's session (ort-cpu) and in onnxruntime's own defaults
    (ort-plain, as an app runs the file); an FP32 ONNX only on the first. Both sessions give the same answers."""
    import onnx

    from gap_deploy.exporter.precision import to_int8
    from gap_deploy.runtime.onnx_file import save_onnx

    data = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    int8 = tmp_path / "m.int8.onnx"
    save_onnx(to_int8(onnx.load(str(reference_onnx)), data, layout="cpu"), int8)
    out = tmp_path / "tune.json"
    result = run(f"fp32={reference_onnx}", f"int8={int8}", "--data", labelled, "--sizes", "16", "--no-native",
                 "--duration", "0.05", "--min-top1", "0", "--json", out)
    assert result.exit_code == 0, result.output
    points = json.loads(out.read_text())["points"]
    assert sorted((p["artifact"], p["backend"]) for p in points) == \
        [("fp32", "ort-cpu"), ("int8", "ort-cpu"), ("int8", "ort-plain")]
    by_backend = {p["backend"]: p for p in points if p["artifact"] == "int8"}
    assert by_backend["ort-plain"]["correct"] == by_backend["ort-cpu"]["correct"]
    assert "plain_onnxruntime" in json.loads(out.read_text())


def test_a_plain_session_that_departs_is_said():
    from gap_deploy.runtime.tune import TunePoint, TuneResult, plain_notes

    def point(backend, ms):
        return TunePoint("int8", backend, "224", (1, 3, 224, 224), 9, 10, 10, ms, ms, 1000 / ms)

    result = TuneResult("val", ("a",), 1, 10)
    result.points = [point("ort-cpu", 1.0), point("ort-plain", 1.05)]
    assert plain_notes(result) == []  # within the noise
    result.points = [point("ort-cpu", 2.0), point("ort-plain", 1.0)]
    assert plain_notes(result) == []  # faster in a plain session costs an app nothing
    result.points = [point("ort-cpu", 1.0), point("ort-plain", 2.0)]
    assert plain_notes(result) == ["int8 @ 224: 2.000 ms in a plain onnxruntime session (ort-plain) against "
                                   "1.000 ms in gap-deploy's (ort-cpu): an app that embeds the .onnx gets the first."]


def test_emit_writes_the_deployment_of_the_chosen_point(tmp_path, labelled, reference_onnx):
    import onnx

    from gap_deploy.exporter.triton import check_repository

    deploy = tmp_path / "deploy"
    result = run(f"a={reference_onnx}", "--data", labelled, "--sizes", "16", "--no-native", "--duration", "0.05",
                 "--max-ms", "1000", "--emit", deploy)
    assert result.exit_code == 0, result.output
    static = onnx.load(str(deploy / "gapcnn.16x16.onnx"))
    assert [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 16]
    assert (deploy / "bundle" / "model.json").is_file()
    assert check_repository(deploy / "triton")[1] == []
    assert "--opt 1x3x16x16" in (deploy / "gap-build.sh").read_text()
    assert "--imgsz 16x16" in (deploy / "gap-run.sh").read_text()
    readme = (deploy / "README.md").read_text()
    assert "a/ort-cpu @ 16" in readme and "median latency <= 1000 ms" in readme
    # the folder runs from anywhere: its scripts find their files from their own location, images are arguments
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    image = next(Path(labelled).rglob("*.png"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = subprocess.run(["sh", str(deploy / "gap-run.sh"), str(image.resolve())], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(str(image.resolve())) and "class" in ran.stdout
    usage = subprocess.run(["sh", str(deploy / "gap-run.sh")], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "IMAGES..." in usage.stderr
    assert "kind: KIND_CPU" in next((deploy / "triton").rglob("config.pbtxt")).read_text()  # chosen on the CPU
    if importlib.util.find_spec("openvino") is not None:  # the app-ready OpenVINO line packs at the chosen size
        packed = subprocess.run(["sh", str(deploy / "gap-pack-app.sh")], cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=600)
        assert packed.returncode == 0, packed.stderr
        app = json.loads(next(deploy.glob("*.openvino")).joinpath("model.json").read_text())["app"]
        assert app["size"] == [16, 16]
        assert "--target litert --checkpoint YOUR_MODEL.pt --app --fixed 1x3x16x16" in readme
    again = run(f"a={reference_onnx}", "--data", labelled, "--sizes", "16", "--max-ms", "1000", "--emit", deploy)
    assert_clean_failure(again, "is not empty", code=2)  # never written over


@pytest.mark.parametrize("case, args, fragments, code", [
    ("no images", ["--sizes", "16"], ["holds no image files"], 1),
    ("below the minimum", ["--sizes", "2,16"], ["size(s) 2 are below the models' minimum input 4x4"], 2),
    ("impossible", ["--sizes", "16", "--min-top1", "1.0"], ["no point reaches top-1 >= 100.0%"], 2),
    ("two constraints", ["--min-top1", "0.5", "--max-ms", "3"], ["--min-top1 and --max-ms cannot go together"], 2),
    ("bad sizes", ["--sizes", "32:16"], ["is not N, HxW or START:STOP:STEP"], 2),
    ("emit without constraint", ["--emit", "x"], ["--emit needs a constraint"], 2),
])
def test_bad_input_gets_one_clear_message(tmp_path, labelled, reference_onnx, case, args, fragments, code):
    data = labelled
    if case == "no images":
        data = tmp_path / "empty"
        (data / "class0").mkdir(parents=True)
    result = run(f"a={reference_onnx}", "--data", data, "--duration", "0.05", *args)
    assert_clean_failure(result, *fragments, code=code)


def test_classes_the_model_does_not_have_are_refused(tmp_path, reference_onnx):
    (tmp_path / "cat").mkdir()
    result = run(reference_onnx, "--data", tmp_path, "--sizes", "16")
    assert_clean_failure(result, "are not classes of the model: cat", "class0")


def test_ctrl_c_keeps_and_writes_what_was_measured(tmp_path, labelled, reference_onnx, monkeypatch):
    import gap_deploy.runtime.bench as bench

    real, calls = bench.bench_session, []

    def interrupted_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_session", interrupted_third)
    out = tmp_path / "partial.json"
    result = run(f"a={reference_onnx}", "--data", labelled, "--sizes", "8,12,16", "--duration", "0.05", "--json", out)
    assert result.exit_code == 130
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and [p["size"] for p in data["points"]] == ["native", "8"]


def test_a_sweep_too_large_to_hold_streams_with_the_same_figures(labelled, reference_onnx):
    from gap_deploy.runtime.bench import BenchSettings
    from gap_deploy.runtime.tune import tune

    settings = BenchSettings(warmup_s=0, iterations=3)
    held = tune({"a": reference_onnx}, labelled, sizes=[(8, 8), (16, 16)], settings=settings)
    streamed = tune({"a": reference_onnx}, labelled, sizes=[(8, 8), (16, 16)], settings=settings, hold_bytes=0)
    assert not held.streamed and streamed.streamed
    assert [(p.size, p.correct, p.top5_correct, p.images, p.shape) for p in streamed.points] == \
        [(p.size, p.correct, p.top5_correct, p.images, p.shape) for p in held.points]


def test_an_artifact_named_with_a_space_is_emitted_under_a_triton_name_it_can_hold(tmp_path, labelled, reference_onnx):
    """Issue 38, 8b: "my model.onnx" could not be emitted for Triton, although only the Triton model's name (a folder
    name) needed changing: the emit failed on safe_name. Now the Triton name replaces the characters a name cannot
    hold; every other file keeps the artifact's own name. An -o/--emit that is a link to an empty folder is written
    through (one rule with gap-export's file outputs)."""
    import shutil

    from gap_deploy.exporter.triton import check_repository

    spaced = tmp_path / "my model.onnx"
    shutil.copy(reference_onnx, spaced)
    real = tmp_path / "real-deploy"
    real.mkdir()
    deploy = tmp_path / "deploy-link"
    deploy.symlink_to(real)
    result = run(f"a={spaced}", "--data", labelled, "--sizes", "16", "--no-native", "--duration", "0.05",
                 "--max-ms", "1000", "--emit", deploy)
    assert result.exit_code == 0, result.output
    assert deploy.is_symlink() and (real / "triton" / "my_model_16x16" / "config.pbtxt").is_file()
    assert check_repository(real / "triton")[1] == []
