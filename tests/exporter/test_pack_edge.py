"""gap-pack's ncnn, LiteRT, ExecuTorch and Core ML targets, with the real converters and runtimes: each bundle is
run by its own runtime and compared with the FP32 ONNX at several sizes (Core ML, which cannot execute on Linux,
is reloaded and inspected); no converter's FP16 default is taken silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gap_deploy import runtime
from gap_deploy.exporter.pack import pack
from gap_deploy.runtime.errors import ArtifactError, ExportError, InputError, UsageError

TARGETS = {"ncnn": "ncnn", "litert": "ai_edge_litert", "executorch": "executorch", "coreml": "coremltools"}
#: shapes checked here beside gap-pack's own sweep: odd, non-square, batches; the minimum is added per model
SHAPES = [(1, 3, 37, 53), (2, 3, 64, 48), (3, 3, 61, 45), (1, 3, 224, 160), (1, 3, 97, 31)]
FAMILIES = ["ResNetish", "MobileNetish"]


def _needs(target):
    pytest.importorskip(TARGETS[target])
    if target == "litert":
        pytest.importorskip("litert_torch")
    if target == "ncnn":
        pytest.importorskip("pnnx")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, reference_onnx, reference_ckpt):
    """model name -> (FP32 ONNX, checkpoint): the reference CNN and two families."""
    import torch

    import tests.support.families as fam
    from gap_deploy.exporter import export_onnx, load_model

    folder = tmp_path_factory.mktemp("edge_sources")
    found = {"reference": (reference_onnx, reference_ckpt, None)}
    for name in FAMILIES:
        torch.manual_seed(0)
        ckpt = folder / f"{name}.pt"
        module = getattr(fam, name)()
        from tests.conftest import randomize_batchnorm

        randomize_batchnorm(module)
        torch.save(module.state_dict(), ckpt)
        arch = f"tests.support.families:{name}"
        onnx_path = export_onnx(load_model(ckpt, arch=arch), folder / f"{name}.onnx", dynamic=True,
                                imgsz=(64, 64)).path
        found[name] = (onnx_path, ckpt, arch)
    return found


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, sources):
    """(target, model) -> bundle folder, made once for the module."""
    from gap_deploy.exporter.checkpoint import load_model

    folder = tmp_path_factory.mktemp("edge_bundles")
    made = {}

    def get(target, model):
        if (target, model) not in made:
            _needs(target)
            onnx_path, ckpt, arch = sources[model]
            loaded = load_model(ckpt, arch=arch) if target in ("litert", "executorch", "coreml") else None
            out = folder / f"{target}_{model}"
            pack(onnx_path, out, target=target, checkpoint=loaded)
            made[(target, model)] = out
        return made[(target, model)]
    return get


def _bare_onnx(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["reference", *FAMILIES])
@pytest.mark.parametrize("target", ["ncnn", "litert", "executorch"])
def test_a_bundle_matches_the_onnx_at_every_size_on_its_own_runtime(bundles, sources, target, model):
    bundle = bundles(target, model)
    description = json.loads((bundle / "model.json").read_text())
    assert description["target"] == target and description["precision"] == "fp32"
    verification = description["verification"]
    assert verification["passed"] and len(verification["shapes"]) >= 5  # checked before the bundle appeared
    largest = 640 if target != "executorch" else description["accepts"]["height"][1]
    assert description["accepts"]["largest_checked"] == [largest, largest]
    assert [1, 3, largest, largest] in [row["shape"] for row in verification["shapes"]]
    onnx_path = sources[model][0]
    bare = _bare_onnx(onnx_path)
    with runtime.load(bundle) as session:
        assert session.backend == {"ncnn": "ncnn-cpu", "litert": "litert-cpu", "executorch": "et-xnnpack"}[target]
        assert session.metadata.num_classes == 10 and session.spec.input_name == bare.get_inputs()[0].name
        minimum = session.metadata.min_height
        for i, shape in enumerate([(1, 3, minimum, minimum), *SHAPES]):
            x = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
            want = bare.run(None, {bare.get_inputs()[0].name: x})[0]
            got = session.run(x)
            assert got.shape == want.shape
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5, (target, model, shape)
        with pytest.raises(InputError, match="below this model's minimum"):
            session.run(np.zeros((1, 3, minimum - 1, minimum), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["reference", *FAMILIES])
def test_a_core_ml_bundle_is_inspected_and_says_it_was_not_executed(bundles, model):
    bundle = bundles("coreml", model)
    description = json.loads((bundle / "model.json").read_text())
    verification = description["verification"]
    assert verification["executed"] is False and "macOS only" in verification["why"]
    inspected = verification["inspected"]
    assert inspected["input_ranges"][2][0] == description["min_height"] and inspected["input_ranges"][1] == [3, 3]
    assert {"conv", "reduce_mean"} & set(inspected["ops"])
    assert "FLOAT16" not in inspected["op_output_types"] and inspected["op_output_types"]["FLOAT32"] > 0
    assert "not executed" in (bundle / "README.md").read_text().lower()
    data = np.load(bundle / "check_data.npz")
    assert len(data.files) >= 8  # inputs and the ONNX's logits, to check on a Mac
    with pytest.raises(ArtifactError, match="runs only on Apple"):
        runtime.load(bundle)


def _ncnn_run(bundle, x, fp16):
    import ncnn

    net = ncnn.Net()
    if not fp16:
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.load_param(str(bundle / "model.param"))
    net.load_model(str(bundle / "model.bin"))
    blobs = json.loads((bundle / "model.json").read_text())["blobs"]
    ex = net.create_extractor()
    ex.input(blobs[0], ncnn.Mat(x[0]).clone())
    return np.array(ex.extract(blobs[1])[1])


def test_ncnn_s_fp16_defaults_are_not_taken_silently(tmp_path, bundles, reference_onnx):
    """pnnx writes FP16 weights unless fp16=0 and ncnn's Option computes in FP16 unless switched off (both
    shown here on the same model); gap-pack's FP32 bundle has neither, its FP16 bundle says so."""
    _needs("ncnn")
    import ncnn

    assert ncnn.Net().opt.use_fp16_storage and ncnn.Net().opt.use_fp16_arithmetic  # ncnn's defaults
    fp32 = bundles("ncnn", "reference")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    want = _bare_onnx(reference_onnx).run(None, {"images": x})[0][0]
    rel = lambda got: float(np.abs(got - want).max() / np.abs(want).max())  # noqa: E731
    assert rel(_ncnn_run(fp32, x, fp16=True)) > 1e-4  # ncnn's default options would change the model
    assert rel(_ncnn_run(fp32, x, fp16=False)) < 1e-5
    with runtime.load(fp32) as session:
        assert session.device["fp16_storage"] is False and session.device["fp16_arithmetic"] is False
    fp16 = tmp_path / "fp16"
    pack(reference_onnx, fp16, target="ncnn", precision="fp16")
    description = json.loads((fp16 / "model.json").read_text())
    assert description["precision"] == "fp16" and description["verification"]["tolerance"]["rtol"] > 1e-4
    # pnnx stores FP16 weights: the weight file is about half the FP32 one
    assert (fp16 / "model.bin").stat().st_size < 0.6 * (fp32 / "model.bin").stat().st_size
    with runtime.load(fp16) as session:
        assert session.metadata.precision == "fp16" and session.device["fp16_arithmetic"] is True


def test_litert_and_executorch_bundles_hold_fp32_only(bundles):
    """Neither converter has an FP16 default; this checks that none crept in (every float tensor of the .tflite,
    the program's input and output)."""
    _needs("litert")
    _needs("executorch")
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(bundles("litert", "reference") / "model.tflite")).get_tensor_details()
    floats = {np.dtype(t["dtype"]).name for t in tensors if np.dtype(t["dtype"]).kind == "f"}
    assert floats == {"float32"}
    from executorch.runtime import Runtime

    meta = Runtime.get().load_program(bundles("executorch", "reference") / "model.pte").load_method("forward").metadata
    assert "Float" in str(meta.input_tensor_meta(0)) and "Half" not in str(meta)


def test_core_ml_s_fp16_default_is_not_taken_silently(tmp_path, sources, monkeypatch):
    """coremltools' ML programs compute in FP16 unless compute_precision says otherwise: shown on the same model;
    an FP32 request that yields FP16 ops is refused (the check can fail), --precision fp16 is said."""
    _needs("coreml")
    import coremltools as ct
    import torch

    from gap_deploy.exporter import pack_edge
    from gap_deploy.exporter.checkpoint import load_model

    onnx_path, ckpt, _ = sources["reference"]
    loaded = load_model(ckpt)
    traced = torch.jit.trace(loaded.module, torch.zeros(1, 3, 64, 64))
    ct.convert(traced, inputs=[ct.TensorType(name="images", shape=(1, 3, 64, 64))], convert_to="mlprogram",
               minimum_deployment_target=ct.target.iOS16).save(str(tmp_path / "default.mlpackage"))
    assert "FLOAT16" in pack_edge.inspect_coreml(tmp_path / "default.mlpackage")["op_output_types"]

    pack(onnx_path, tmp_path / "fp16", target="coreml", checkpoint=loaded, precision="fp16")
    description = json.loads((tmp_path / "fp16" / "model.json").read_text())
    assert description["precision"] == "fp16"
    assert "FLOAT16" in description["verification"]["inspected"]["op_output_types"]

    real = pack_edge.convert_coreml
    monkeypatch.setattr(pack_edge, "convert_coreml", lambda *a, **k: real(a[0], a[1], a[2], "fp16", *a[4:], **k))
    with pytest.raises(ExportError, match="computes in FLOAT16 although FP32"):
        pack(onnx_path, tmp_path / "forced", target="coreml", checkpoint=loaded)
    assert not (tmp_path / "forced").exists()


def test_a_core_ml_bundle_with_enumerated_shapes_reads_back_with_exactly_those(tmp_path, sources):
    """gap-pack --target coreml --fixed S1 --fixed S2 (gap-tune --buckets' sizes): the program's input takes
    exactly those shapes (coremltools' EnumeratedShapes, read back from the saved spec), model.json says so, and
    the check data for a Mac is at those shapes."""
    _needs("coreml")
    import numpy as np

    from gap_deploy.exporter.checkpoint import load_model

    onnx_path, ckpt, _ = sources["reference"]
    shapes = [(1, 3, 32, 32), (1, 3, 48, 40)]
    pack(onnx_path, tmp_path / "b", target="coreml", checkpoint=load_model(ckpt), fixed=shapes)
    description = json.loads((tmp_path / "b" / "model.json").read_text())
    inspected = description["verification"]["inspected"]
    assert inspected["input_shapes"] == [list(s) for s in shapes] and inspected["input_ranges"] == []
    assert description["check"]["shapes"] == ["1x3x32x32", "1x3x48x40"]
    with np.load(tmp_path / "b" / "check_data.npz") as data:
        assert [data[f"input_{i}"].shape for i in range(2)] == shapes
    # one shape: a static input (coremltools' EnumeratedShapes refuses a single shape with a ValueError)
    pack(onnx_path, tmp_path / "one", target="coreml", checkpoint=load_model(ckpt), fixed=shapes[1:])
    one = json.loads((tmp_path / "one" / "model.json").read_text())
    assert one["verification"]["inspected"]["input_shapes"] == [[1, 3, 48, 40]]
    assert "A static program: accepts exactly 1x3x48x40" in (tmp_path / "one" / "README.md").read_text()
    with pytest.raises(UsageError, match="NNAPI and Core ML"):
        pack(onnx_path, tmp_path / "n", target="ncnn", fixed=shapes)


@pytest.mark.parametrize("target", ["litert", "executorch"])
def test_a_static_program_per_bucket_is_what_its_runtime_loads_and_runs(tmp_path, sources, target):
    """gap-pack --target litert|executorch --fixed S (one per gap-tune bucket): the runtime's own view of the
    program has that one shape and no dynamic dim (LiteRT's shape_signature; ExecuTorch's planned input), it
    matches the ONNX there, another shape is refused cleanly, and its contract prepares images at S."""
    _needs(target)
    from PIL import Image

    from gap_deploy.exporter.checkpoint import load_model

    onnx_path, ckpt, _ = sources["reference"]
    shape = (1, 3, 32, 40)
    pack(onnx_path, tmp_path / "b", target=target, checkpoint=load_model(ckpt), fixed=[shape])
    description = json.loads((tmp_path / "b" / "model.json").read_text())
    assert description["accepts"]["shapes"] == [list(shape)]
    assert [row["shape"] for row in description["verification"]["shapes"]] == [list(shape)]
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "A static program: accepts exactly 1x3x32x40" in readme
    worst = description["verification"]["shapes"][0]["rel_err"]
    assert f"at 1 shape(s) (worst relative error {worst:.1e}" in readme
    if target == "litert":
        from ai_edge_litert.interpreter import Interpreter

        (detail,) = Interpreter(model_path=str(tmp_path / "b" / "model.tflite")).get_input_details()
        assert list(detail["shape_signature"]) == list(shape)  # -1 would mark a dynamic dim
    else:
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(tmp_path / "b" / "model.pte").load_method("forward")
        assert tuple(method.metadata.input_tensor_meta(0).sizes()) == shape
    x = np.random.default_rng(4).standard_normal((3, *shape[1:])).astype(np.float32)
    with runtime.load(tmp_path / "b") as session:
        assert session.spec.static_size == (32, 40)
        expected = _bare_onnx(onnx_path).run(None, {"images": x})[0]
        np.testing.assert_allclose(np.stack(session.run_many(list(x))), expected, rtol=1e-4, atol=1e-4)
        with pytest.raises(InputError, match="this static model takes only 32"):
            session.run(np.zeros((1, 3, 48, 48), np.float32))
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((90, 70, 3), np.uint8)).save(image)
    from click.testing import CliRunner

    from gap_deploy.runtime.cli.run import main as gap_run

    done = CliRunner().invoke(gap_run, [str(tmp_path / "b"), str(image), "--format", "jsonl", "-k", "1"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.splitlines()[0])["size"] == [32, 40]
    if target == "executorch":  # its method gives no dynamic marks: model.json's claim is checked against it
        import shutil

        shutil.copytree(tmp_path / "b", tmp_path / "lie")
        lie = json.loads((tmp_path / "lie" / "model.json").read_text())
        lie["metadata"]["gap.static_shape"] = "1x3x48x48"
        (tmp_path / "lie" / "model.json").write_text(json.dumps(lie))
        with pytest.raises(ArtifactError, match="says a static program of 1x3x48x48; the program's input is planned "
                                                "for 1x3x32x40"):
            runtime.load(tmp_path / "lie")
    with pytest.raises(UsageError, match="one static program of one shape"):
        pack(onnx_path, tmp_path / "two", target=target, checkpoint=load_model(ckpt), fixed=[shape, (1, 3, 48, 48)])
    assert not (tmp_path / "two").exists()


def test_executorch_s_planned_range_is_measured_and_enforced(tmp_path, sources):
    """ExecuTorch plans memory for the largest input: the bundle's sweep includes it, a larger image is refused
    before ExecuTorch sees it, and a batch beyond the plan runs in chunks."""
    _needs("executorch")
    from gap_deploy.exporter.checkpoint import load_model

    onnx_path, ckpt, _ = sources["reference"]
    pack(onnx_path, tmp_path / "b", target="executorch", checkpoint=load_model(ckpt), max_side=96, max_batch=3)
    description = json.loads((tmp_path / "b" / "model.json").read_text())
    assert description["accepts"] == {"batch": [1, 3], "height": [4, 96], "width": [4, 96],
                                      "largest_checked": [96, 96]}
    assert [1, 3, 96, 96] in [row["shape"] for row in description["verification"]["shapes"]]
    bare = _bare_onnx(onnx_path)
    with runtime.load(tmp_path / "b") as session:
        with pytest.raises(InputError, match="above the largest side this model was planned for \\(96\\)"):
            session.run(np.zeros((1, 3, 128, 128), np.float32))
        x = np.random.default_rng(3).standard_normal((7, 3, 96, 96)).astype(np.float32)
        np.testing.assert_allclose(session.run(x), bare.run(None, {"images": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"target": "litert"}, "converts from PyTorch: pass --checkpoint"),
    ({"target": "litert", "precision": "fp16", "checkpoint": object()}, "FP32 only here"),
    ({"target": "ncnn", "max_side": 128}, "no such bound"),
    ({"target": "ncnn", "fixed": [(1, 3, 32, 32)]}, "runs any size"),
    ({"target": "ncnn", "checkpoint": object()}, "converts the ONNX itself"),
    ({"target": "tflite"}, "choose one of"),
    ({"target": "ort", "min_side": 8}, "--min-side raises"),
])
def test_pack_refuses_what_an_edge_target_does_not_take(tmp_path, reference_onnx, kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        pack(reference_onnx, tmp_path / "b", **kwargs)
    assert not (tmp_path / "b").exists()


def test_an_edge_bundle_is_checked_like_every_artifact(tmp_path, bundles):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(bundles("ncnn", "reference"), bundle)
    with pytest.raises(ArtifactError, match="from the gap-pack bundle folder"):
        runtime.load(bundle / "model.param")  # the file alone carries no input description
    with pytest.raises(UsageError, match="cannot run an ncnn model"):
        runtime.load(bundle, "ort-cpu")
    description = json.loads((bundle / "model.json").read_text())
    description["metadata"]["gap.min_height"] = "lots"
    (bundle / "model.json").write_text(json.dumps(description))
    with pytest.raises(ArtifactError, match="gap.min_height"):
        runtime.load(bundle)
    weights = bundle / "model.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        runtime.load(bundle)


def _labelled_folder(root):
    from PIL import Image

    for i in range(2):
        (root / f"class{i}").mkdir(parents=True)
        Image.new("RGB", (24, 20), (200 * i, 30, 30)).save(root / f"class{i}" / "a.png")
        Image.new("RGB", (17, 31), (30, 200 * i, 90)).save(root / f"class{i}" / "b.png")
    return root


@pytest.mark.slow
def test_gap_bench_compares_the_targets_in_one_run(tmp_path, bundles, reference_onnx):
    """One gap-bench run times ONNX Runtime and every runnable target at the same shapes and checks their logits
    against the first artifact's on the same input."""
    from click.testing import CliRunner

    from gap_deploy.runtime.cli.bench import main as gap_bench

    targets = [t for t in ("ncnn", "litert", "executorch") if _has(t)]
    args = [str(reference_onnx), "--threads", "1", "--iterations", "5", "--warmup", "0", "--shape", "1x3x37x53",
            "--shape", "2x3x64x48", "--json", str(tmp_path / "b.json")]
    for target in targets:
        args += ["--compare", str(bundles(target, "reference"))]
    result = CliRunner().invoke(gap_bench, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["backend"] for r in rows] == (["ort-cpu"] + [f"{'ncnn-cpu litert-cpu et-xnnpack'.split()[i]}"
                                                           for i, t in enumerate(("ncnn", "litert", "executorch"))
                                                           if t in targets]) * 2
    for row in rows[1:]:
        if row["backend"] != "ort-cpu":
            assert row["latency_vs_first"] > 0 and row["parity"]["passed"]
            assert row["parity"]["reference"] == str(reference_onnx) and row["artifact"] != str(reference_onnx)
    assert "the first" in result.output


def _has(target):
    import importlib.util

    return importlib.util.find_spec(TARGETS[target]) is not None


@pytest.mark.slow
def test_gap_run_eval_and_tune_take_the_edge_bundles(tmp_path, bundles, reference_onnx):
    """The bundles run behind the same Session: the classifying and measuring commands take them beside the ONNX
    and give the same answers."""
    from click.testing import CliRunner

    from gap_deploy.exporter.cli.tune import main as gap_tune
    from gap_deploy.runtime.cli.eval import main as gap_eval
    from gap_deploy.runtime.cli.run import main as gap_run

    data = _labelled_folder(tmp_path / "data")
    targets = [t for t in ("ncnn", "litert", "executorch") if _has(t)]
    answers = {}
    for name, path in [("ort", reference_onnx)] + [(t, bundles(t, "reference")) for t in targets]:
        images = [str(f) for f in sorted(data.rglob("*.png"))]
        result = CliRunner().invoke(gap_run, [str(path), *images, "--json", "-k", "1"])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)["results"]
        answers[name] = [(r["file"], r["top"][0]["index"], round(r["top"][0]["prob"], 4)) for r in rows]
    assert len(answers["ort"]) == 4
    assert all(a == answers["ort"] for a in answers.values())
    named = [f"ort={reference_onnx}"] + [f"{t}={bundles(t, 'reference')}" for t in targets]
    result = CliRunner().invoke(gap_eval, [*named, "--data", str(data), "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(gap_tune, [*named, "--data", str(data), "--sizes", "16", "--duration", "0.05",
                                           "--min-top1", "0", "--json", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    points = json.loads((tmp_path / "t.json").read_text())["points"]
    assert {p["artifact"] for p in points} == {"ort", *targets}
    assert len({p["top1"] for p in points}) == 1  # the same accuracy on every runtime


#: which target takes which of the other families (measured; the "which family runs where" table of
#: docs/commands/gap-pack.md): a
#: refusal must be clean (a GapError, no bundle folder left), a bundle must pass its own runtime's check
REFUSED = {
    "EfficientNetish": set(),
    "DenseNetish": set(),
    # pnnx aborts on the channel shuffle; torch.export guards the 1x1 map after the stride-4 stem; coremltools
    # cannot trace the shuffle's view with dynamic sizes
    "ShuffleNetish": {"ncnn", "litert", "executorch", "coreml"},
    # ceil-mode pools: torch.export keeps only multiples of 8 in one program; OpenVINO (raises) and ncnn (NaN)
    # differ from ONNX Runtime at the minimum size, where a pooling window is larger than its input: packed with
    # the --min-side the refusal names
    "SqueezeNetish": {"litert", "executorch"},
    # issue 39's blocks, each family written here: LayerNorm + GELU (litert-torch cannot lower the stem's size
    # arithmetic with dynamic sides), hard-swish and hard-sigmoid SE (packs everywhere), a ceil-mode average-pool
    # downsample (torch.export guards the sides' remainder; OpenVINO and ncnn fail at the smallest sides), ghost
    # modules and partial residuals (channel concatenations cut to width: LiteRT's XNNPACK delegate fails to
    # reshape them at sizes other than the conversion's)
    "ConvNeXtish": {"litert"},
    "MobileNetV3ish": set(),
    "ResNetDish": {"litert", "executorch"},
    "GhostNetish": {"litert"},
    "ReXNetish": {"litert"},
}
MIN_SIDE = {"SqueezeNetish": {"openvino", "ncnn"}, "ResNetDish": {"openvino", "ncnn"}}
#: refusals whose hint is a static program (gap-pack --fixed at the export size), which the test packs and checks
FIXED = {"ShuffleNetish": {"litert", "executorch"}, "SqueezeNetish": {"litert", "executorch"},
         "ConvNeXtish": {"litert"}, "ResNetDish": {"litert", "executorch"}, "GhostNetish": {"litert"},
         "ReXNetish": {"litert"}}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(REFUSED))
def test_every_family_on_every_target_is_packed_and_checked_or_cleanly_refused(tmp_path, family):
    import torch

    import tests.support.families as fam
    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.runtime.errors import GapError
    from tests.conftest import randomize_batchnorm

    torch.manual_seed(0)
    module = getattr(fam, family)()
    randomize_batchnorm(module)
    torch.save(module.state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", arch=f"tests.support.families:{family}")
    onnx_path = export_onnx(loaded, tmp_path / "m.onnx", dynamic=True, imgsz=(64, 64)).path
    outcome = {}
    for target in ("openvino", *TARGETS):
        if target != "openvino" and not _has(target):
            continue
        out = tmp_path / target
        try:
            pack(onnx_path, out, target=target, checkpoint=loaded if target in ("litert", "executorch", "coreml")
                 else None)
            description = json.loads((out / "model.json").read_text())
            verification = description["verification"]
            assert verification.get("passed") or verification.get("executed") is False
            outcome[target] = "packed"
        except GapError as exc:
            assert not out.exists() and "Traceback" not in str(exc)
            outcome[target] = "refused"
            side = getattr(exc, "min_side", None)
            if side is not None:
                assert f"--min-side {side}" in exc.hint  # the refusal names the fix
                pack(onnx_path, out, target=target, min_side=side)
                with runtime.load(out) as session:
                    assert session.metadata.min_height == side
                    with pytest.raises(InputError, match="below this model's minimum"):
                        session.run(np.zeros((1, 3, side - 1, side - 1), np.float32))
                outcome[target] = "min-side"
            elif "--fixed 1x3x64x64" in (exc.hint or ""):  # the refusal names a static program: follow it
                static = tmp_path / f"{target}_fixed"
                pack(onnx_path, static, target=target, checkpoint=loaded, fixed=[(1, 3, 64, 64)])
                verification = json.loads((static / "model.json").read_text())["verification"]
                assert verification["passed"] and [r["shape"] for r in verification["shapes"]] == [[1, 3, 64, 64]]
                outcome[target] = "fixed"
    expected = {t: ("fixed" if t in FIXED.get(family, ()) else "refused" if t in REFUSED[family] else "min-side"
                    if t in MIN_SIDE.get(family, ()) else "packed") for t in outcome}
    assert outcome == expected


def test_gap_pack_cli_writes_an_edge_bundle_and_refuses_cleanly(tmp_path, reference_onnx, reference_ckpt):
    _needs("ncnn")
    from click.testing import CliRunner

    from gap_deploy.exporter.cli.pack import main as gap_pack
    from tests.conftest import assert_clean_failure

    result = CliRunner().invoke(gap_pack, [str(reference_onnx), "--target", "ncnn", "-o", str(tmp_path / "b"),
                                           "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["target"] == "ncnn" and report["files"] == ["model.bin", "model.param"]
    assert report["parity"]["model.param"]["passed"] and len(report["parity"]["model.param"]["shapes"]) >= 5
    for args, fragment, code in [
        (["--target", "litert"], "pass --checkpoint", 2),
        (["--target", "ncnn", "--arch", "x:y"], "describe --checkpoint; none was given", 2),
        (["--target", "executorch", "--checkpoint", str(tmp_path / "missing.pt")], "does not exist", 1),
    ]:
        out = tmp_path / f"refused{len(args)}"
        result = CliRunner().invoke(gap_pack, [str(reference_onnx), "-o", str(out), *args])
        assert_clean_failure(result, fragment, code=code)
        assert not out.exists()


def test_a_precision_variant_is_not_packed_for_an_edge_target(tmp_path, reference_onnx):
    """The edge targets convert the FP32 model and are judged against the FP32 ONNX; an FP16 ONNX is refused
    with the way to an FP16 bundle."""
    import onnx

    from gap_deploy.exporter.precision import to_fp16
    from gap_deploy.runtime.onnx_file import save_onnx

    variant = tmp_path / "m.fp16.onnx"
    save_onnx(to_fp16(onnx.load(str(reference_onnx))), variant)
    with pytest.raises(UsageError, match="fp16 variant"):
        pack(variant, tmp_path / "b", target="ncnn")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("forged, fragment", [
    ({"../model.tflite": {"sha256": "0" * 64}}, "no plain file name"),
    ({"model.param": {"sha256": "0" * 64}}, "without its weights model.bin"),
    ({"model.pte": {"sha256": "0" * 64}}, "does not match the SHA-256"),
])
def test_a_forged_edge_bundle_description_is_refused(tmp_path, reference_onnx, forged, fragment):
    """model.json is a file anyone can write: its names never leave the bundle, its SHA-256s must hold, and a
    graph without its weights is refused (before any runtime reads a byte)."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    (tmp_path / "model.tflite").write_bytes(b"outside")
    for name in ("model.param", "model.pte"):
        (bundle / name).write_bytes(b"forged")
    (bundle / "model.json").write_text(json.dumps({"files": forged, "input": "images", "output": "logits",
                                                   "metadata": {"gap.in_channels": "3", "gap.num_classes": "2"}}))
    with pytest.raises(ArtifactError, match=fragment):
        runtime.load(bundle)


def test_an_executorch_fp16_bundle_is_asked_for_said_and_judged_as_fp16(tmp_path, bundles, sources):
    """--precision fp16 lowers a half copy of the model to XNNPACK's FP16 kernels: the program takes float16 (the
    runner converts), model.json says fp16, and it is judged with the FP16 tolerance; FP32 stays the default."""
    _needs("executorch")
    from gap_deploy.exporter.checkpoint import load_model

    onnx_path, ckpt, arch = sources["ResNetish"]
    pack(onnx_path, tmp_path / "fp16", target="executorch", checkpoint=load_model(ckpt, arch=arch),
         precision="fp16")
    description = json.loads((tmp_path / "fp16" / "model.json").read_text())
    assert description["precision"] == "fp16" and description["verification"]["passed"]
    assert description["verification"]["tolerance"]["rtol"] > 1e-4  # the FP16 gate, not the FP32 one
    worst = max(r["rel_err"] for r in description["verification"]["shapes"])
    assert 1e-5 < worst < 1e-2  # really computed in FP16 (an FP32 program is near 1e-7)
    with runtime.load(tmp_path / "fp16") as session:
        assert session.device["program_dtype"] == "float16" and session.metadata.precision == "fp16"
    with runtime.load(bundles("executorch", "ResNetish")) as session:
        assert session.device["program_dtype"] == "float32"


LIES = {
    "classes": ({"gap.num_classes": "12"}, ("gap.class_names",), "says 12 classes; the {rt} model gives 1x10"),
    "channels": ({"gap.in_channels": "1", "gap.mean": "[0.5]", "gap.std": "[0.5]"}, (),
                 "says 1 input channel(s); the {rt} model it describes takes 3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("lie", sorted(LIES))
@pytest.mark.parametrize("target", ["ncnn", "litert", "executorch"])
def test_a_bundle_description_that_lies_about_its_model_is_not_believed(bundles, target, lie, tmp_path):
    """Issue 38, class 2: model.json is a file anyone can write (it lists the other files' SHA-256s, not its own).
    Failed before: a description claiming other classes, channels or a smaller minimum than the model it holds
    was believed, and gap-run classified with exit 0. Now the loaded model is asked (its channels where the
    runtime reports them; one inference at the described minimum) before anything runs."""
    import shutil

    from gap_deploy import runtime
    from gap_deploy.runtime.errors import ArtifactError

    changes, dropped, message = LIES[lie]
    folder = tmp_path / "forged"
    shutil.copytree(bundles(target, "reference"), folder)
    description = json.loads((folder / "model.json").read_text())
    description["metadata"] = {k: v for k, v in {**description["metadata"], **changes}.items() if k not in dropped}
    (folder / "model.json").write_text(json.dumps(description))
    runtime_name = {"ncnn": "ncnn", "litert": "LiteRT", "executorch": "ExecuTorch"}[target]
    with pytest.raises(ArtifactError) as caught:
        runtime.load(folder)
    text = str(caught.value)
    assert message.format(rt=runtime_name) in text, text
    with runtime.load(bundles(target, "reference")) as session:  # the true description is believed
        assert session.run(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 10)


@pytest.mark.slow
def test_a_described_minimum_the_model_does_not_run_at_is_not_believed(tmp_path):
    """Issue 38, class 2, the minimum: SqueezeNetish gives NaN on ncnn at its 9x9 minimum, so it packs with
    --min-side 31; a model.json edited back to 9x9 was believed (NaN logits, exit 0). Now the loaded model runs once
    at the described minimum and the bundle is refused. (A minimum at which a model computes finite numbers from
    padding cannot be told from the model alone: a signed bundle is what makes model.json unforgeable.)"""
    _needs("ncnn")
    import torch

    import tests.support.families as fam
    from gap_deploy import runtime
    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.runtime.errors import ArtifactError

    torch.manual_seed(0)
    torch.save(fam.SqueezeNetish().state_dict(), tmp_path / "sq.pt")
    onnx_path = export_onnx(load_model(tmp_path / "sq.pt", arch="tests.support.families:SqueezeNetish"),
                            tmp_path / "sq.onnx", dynamic=True, imgsz=(64, 64)).path
    bundle = tmp_path / "b"
    pack(onnx_path, bundle, target="ncnn", min_side=31)
    with runtime.load(bundle) as session:
        assert session.metadata.min_height == 31
    description = json.loads((bundle / "model.json").read_text())
    description["metadata"].update({"gap.min_height": "9", "gap.min_width": "9"})
    (bundle / "model.json").write_text(json.dumps(description))
    with pytest.raises(ArtifactError, match="non-finite logits at b/model.json's minimum input 1x3x9x9|minimum input "
                                            "1x3x9x9 is not a size"):
        runtime.load(bundle)


@pytest.mark.slow
def test_an_image_beyond_an_executorch_bound_fails_alone(bundles, tmp_path):
    """Issue 38, class 8: one image larger than the program's planned side stopped the whole run (the ExecuTorch
    runner raised inside a batch); the images after it were never classified and --json printed nothing. The bound
    is now part of the input spec, checked per image like the minimum."""
    from click.testing import CliRunner
    from PIL import Image

    from gap_deploy.runtime.cli.run import main as gap_run

    _needs("executorch")
    images = tmp_path / "imgs"
    images.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.png", (700, 20)), ("c.png", (33, 35))):
        Image.new("RGB", size, (30, 90, 150)).save(images / name)
    result = CliRunner().invoke(gap_run, [str(bundles("executorch", "reference")), str(images), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    rows = {Path(r["file"]).name: r for r in report["results"]}
    errors = {Path(r["file"]).name: r["error"] for r in report["errors"]}
    assert set(rows) == {"a.png", "c.png"} and "top" in rows["a.png"] and "top" in rows["c.png"]
    assert set(errors) == {"b.png"} and "above the largest side this model was planned for" in errors["b.png"]


@pytest.mark.slow
def test_a_program_that_aborts_executorch_is_refused_and_the_caller_goes_on(bundles, tmp_path):
    """Issue 38, class 3: a .pte whose XNNPACK backend id holds a byte that is not UTF-8 (SHA-256 in model.json
    updated) makes ExecuTorch's bindings end in std::terminate: SIGABRT, the whole process gone (reproduced here,
    exit 134). The first load of each file now happens in a child process. Failed before: this test's process
    aborted (pytest itself died)."""
    import hashlib
    import shutil

    from gap_deploy import runtime
    from gap_deploy.runtime.errors import ArtifactError

    _needs("executorch")
    folder = tmp_path / "damaged"
    shutil.copytree(bundles("executorch", "reference"), folder)
    program = folder / "model.pte"
    data = bytearray(program.read_bytes())
    at = data.index(b"XnnpackBackend")
    old = hashlib.sha256(bytes(data)).hexdigest()
    data[at + 8] = 0xFF
    program.write_bytes(bytes(data))
    text = (folder / "model.json").read_text()
    assert old in text
    (folder / "model.json").write_text(text.replace(old, hashlib.sha256(bytes(data)).hexdigest()))
    with pytest.raises(ArtifactError, match="ExecuTorch crashed \\(SIGABRT\\) loading .*model.pte"):
        runtime.load(folder)
    with runtime.load(bundles("executorch", "reference")) as session:  # this process is alive and loads the sound one
        assert session.run(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 10)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["litert", "coreml"])
def test_gap_pack_prints_its_own_lines_only_and_core_ml_says_what_it_checked(tmp_path, reference_onnx,
                                                                              reference_ckpt, target):
    """A whole process, as a user runs it: the converters' and runtimes' start-up lines (absl, oneDNN, torchao's
    failed .so loads, TFLite's delegate) stay out of gap-pack's output, and Core ML, which cannot run here, says
    what was checked as the other targets say their parity line."""
    import subprocess
    import sys

    _needs(target)
    done = subprocess.run([sys.executable, "-m", "gap_deploy", "pack", str(reference_onnx), "--target", target,
                           "--checkpoint", str(reference_ckpt), "-o", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    import re

    glog = re.compile(r"^[IWEF]\d{4} ")  # absl/glog lines: a level letter and the month and day
    noise = [line for line in lines if glog.match(line) or any(
        word in line for word in ("Failed to load", "absl", "oneDNN", "XNNPACK delegate", "_pytree"))]
    assert noise == [], noise
    if target == "coreml":
        assert any(line.startswith("model.mlpackage: reloaded and inspected, not executed") for line in lines)
    else:
        assert any(line.startswith("model.tflite: matches gapcnn.onnx") for line in lines)
