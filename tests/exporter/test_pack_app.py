"""gap-pack --app: the app-ready models of LiteRT, OpenVINO and Core ML bundles, judged by the platforms' own APIs.

MediaPipe's ImageClassifier (the mediapipe package, run here) classifies image files with the LiteRT app model,
OpenVINO runs its app IR on raw 8-bit frames, and both are compared with gap-run on the same files at the same size
(runtime.app_check); the Core ML app program is read back (image input, scale and bias, labels, precision). The
reference CNN and two families, each with another preprocessing contract (none, shorter-side + crop in 8 bits,
BGR stretch in float to a non-square size), on 56 image files of mixed sizes and formats.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gap_deploy.exporter.pack import pack
from gap_deploy.runtime.errors import ExportError, UsageError
from gap_deploy.runtime.preprocess import Preprocess
from tests.support.app_cases import CONTRACTS, LABELS, REFERENCE_LABELS, make_images, make_source


def _needs(*modules):
    for module in modules:
        pytest.importorskip(module)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """model -> (FP32 ONNX with its contract, checkpoint path, arch)."""
    folder = tmp_path_factory.mktemp("app_sources")
    return {name: make_source(name, folder) for name in CONTRACTS}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("app_images"))


@pytest.fixture(scope="module")
def app_bundles(tmp_path_factory, sources):
    """(target, model) -> bundle folder written with --app, made once for the module."""
    from gap_deploy.exporter.checkpoint import load_model

    folder = tmp_path_factory.mktemp("app_bundles")
    made = {}

    def get(target, model, **options):
        key = (target, model, tuple(sorted(options.items())))
        if key not in made:
            onnx_path, ckpt, arch = sources[model]
            loaded = load_model(ckpt, arch=arch) if target not in ("ort", "openvino") else None
            out = folder / f"{target}_{model}_{len(made)}"
            pack(onnx_path, out, target=target, checkpoint=loaded, app=True, **options)
            made[key] = out
        return made[key]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CONTRACTS))
def test_mediapipe_s_image_classifier_gives_gap_run_s_answer_from_image_files(app_bundles, images, model):
    _needs("litert_torch", "mediapipe", "tensorflow_lite_support")
    from gap_deploy.runtime.app_check import check_app

    bundle = app_bundles("litert", model)
    result = check_app(bundle, images)
    same, own = result.same_size, result.own_resize
    assert len(images) >= 50 and same["images"] == len(images) and not result.errors
    assert same["top1_equal"] == len(images), result.format()
    assert same["max_abs_diff"] <= 1e-4, result.format()
    assert result.passed
    # MediaPipe resizing whole files itself is measured and kept in the report, not hidden
    assert own["images"] == len(images) and np.isfinite(own["max_abs_diff"])
    description = json.loads((bundle / "model.json").read_text())
    app = description["app"]
    assert app["metadata"]["labels"] == description["class_names"]
    assert (app["size"], app["layout"], app["dtype"]) == ([56, 56] if model == "ResNetish" else
                                                          [48, 64] if model == "MobileNetish" else [64, 64],
                                                          "NHWC", "uint8")
    readme = (bundle / "README.md").read_text()
    assert "ImageClassifier.createFromOptions" in readme and "@mediapipe/tasks-vision" in readme
    assert ("setRegionOfInterest" in readme) == (model == "ResNetish")  # the shorter-side crop is a region


@pytest.mark.slow
def test_mediapipe_names_the_classes_from_the_model_s_own_metadata(app_bundles, images):
    _needs("litert_torch", "mediapipe", "tensorflow_lite_support")
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    bundle = app_bundles("litert", "ResNetish")
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(bundle /
                                                                                         "model_app.tflite")),
                                            max_results=3)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        categories = classifier.classify(mp.Image.create_from_file(str(images[0]))).classifications[0].categories
    assert [c.category_name for c in categories] == [LABELS[c.index] for c in categories]
    assert len(categories) == 3 and categories[0].score >= categories[1].score


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CONTRACTS))
def test_plain_onnxruntime_takes_8_bit_frames_and_gives_gap_run_s_answer(app_bundles, images, model):
    """The ORT app model is plain ONNX ops: onnxruntime's default session (no option, no extension) runs the .ort
    an ORT Mobile app ships; gap-run's dynamic model.ort is still the one runtime.load picks."""
    import onnxruntime as ort

    from gap_deploy.runtime.app_check import check_app
    from gap_deploy.runtime.bundle import bundle_model

    bundle = app_bundles("ort", model)
    result = check_app(bundle, images)
    assert result.same_size["top1_equal"] == len(images) >= 50 and result.passed, result.format()
    session = ort.InferenceSession(str(bundle / "model_app.ort"))
    (image,) = session.get_inputs()
    assert image.type == "tensor(uint8)" and image.shape[0] == 1 and image.shape[3] == 3
    assert session.get_outputs()[0].name == "probabilities"
    assert bundle_model(bundle, None).name == "model.ort"
    description = json.loads((bundle / "model.json").read_text())
    assert {name: entry["role"] for name, entry in description["files"].items() if entry.get("role")} == {
        "model_app.onnx": "app", "model_app.ort": "app"}
    assert {row["accelerator"] for row in description["app"]["usability"]} >= {"NNAPI", "CoreML MLProgram"}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CONTRACTS))
def test_openvino_runs_raw_8_bit_frames_as_gap_run_does(app_bundles, images, model):
    _needs("openvino")
    from gap_deploy.exporter.pack_app import RESIZED_PROB_ATOL
    from gap_deploy.runtime.app_check import check_app

    bundle = app_bundles("openvino", model)
    app = json.loads((bundle / "model.json").read_text())["app"]
    result = check_app(bundle, images)
    assert result.same_size["top1_equal"] == len(images) >= 50, result.format()
    assert result.passed, result.format()
    if model == "ResNetish":  # a shorter-side crop needs per-frame offsets: the app hands the model its size
        assert app["resize_by"] == "app" and "resize" not in app["inside"]
    else:  # a stretch: OpenVINO resizes inside, with Pillow's antialiased bilinear
        assert app["resize_by"] == "openvino" and app["platform_resize"] == "RESIZE_BILINEAR_PILLOW"
        assert result.own_resize["max_abs_diff"] <= RESIZED_PROB_ATOL, result.format()
    import openvino as ov

    model_ir = ov.Core().read_model(str(bundle / "model_app.xml"))
    assert model_ir.inputs[0].get_element_type() == ov.Type.u8
    assert str(model_ir.inputs[0].get_partial_shape())[-2:] == "3]"  # NHWC, RGB


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CONTRACTS))
def test_a_core_ml_app_program_reads_back_as_an_image_classifier(app_bundles, sources, model):
    _needs("coremltools")
    from gap_deploy.exporter.pack_app import inspect_coreml_app, softmax
    from gap_deploy.runtime.parity import ort_cpu_infer

    bundle = app_bundles("coreml", model)
    inspected = inspect_coreml_app(bundle / "model_app.mlpackage")
    contract = CONTRACTS[model] or Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert inspected["input_type"] == "imageType"
    assert (inspected["image"]["height"], inspected["image"]["width"]) == {"ResNetish": (56, 56),
                                                                          "MobileNetish": (48, 64)}.get(model, (64, 64))
    assert inspected["image"]["color_space"] == ("BGR" if model == "MobileNetish" else "RGB")
    assert inspected["classes"] == list(LABELS if model != "reference" else REFERENCE_LABELS)
    a, b = contract.affine(3)
    assert np.allclose(inspected["pixel_a"], a, rtol=1e-5) and np.allclose(inspected["pixel_b"], b, rtol=1e-5)
    assert set(t for t in inspected["op_output_types"] if t.startswith("FLOAT")) == {"FLOAT32"}
    # the saved program rebuilds as coremltools' MIL (each op's type inference run again): image in, label and
    # probabilities out
    h, w = inspected["image"]["height"], inspected["image"]["width"]
    assert inspected["mil"]["inputs"] == {"image": f"(1, 3, {h}, {w})"}
    assert inspected["mil"]["outputs"] == ["classLabel", "classLabel_probs"] and inspected["mil"]["ops"] > 10
    app = json.loads((bundle / "model.json").read_text())["app"]
    # one std for every channel: Core ML's own image scale and bias; else the normalization is in the program
    assert app["scale_and_bias"] == ("ImageType" if model == "MobileNetish" else "inside the program")
    assert app["crop_and_scale"] == (".centerCrop" if model == "ResNetish" else ".scaleFill")
    # the Mac check's frames and expected probabilities are the FP32 ONNX's on the contract's tensors
    from PIL import Image

    expected = json.loads((bundle / "app_check" / "expected.json").read_text())
    frame = np.asarray(Image.open(bundle / "app_check" / expected["frames"][0]["file"]))
    sized = contract.sized((app["size"][0], app["size"][1]))
    want = softmax(ort_cpu_infer(sources[model][0])(sized.from_pixels(frame)[None]))[0]
    assert np.allclose(expected["frames"][0]["probabilities"], want, atol=1e-6)
    assert "VNCoreMLRequest" in (bundle / "README.md").read_text()
    assert (bundle / "check_vision.swift").is_file()


@pytest.mark.slow
def test_a_bgr_core_ml_app_program_with_one_std_per_channel_takes_bgr_and_normalizes_inside(tmp_path,
                                                                                         reference_ckpt):
    """Core ML's ImageType hands the program BGR already (its colour layout): the normalization inside must not
    reverse the channels again."""
    _needs("coremltools")
    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.exporter.pack_app import inspect_coreml_app

    contract = Preprocess(resize="stretch", size=(40, 56), channel_order="BGR", mean=(0.1, 0.2, 0.3),
                          std=(0.2, 0.3, 0.4))
    onnx_path = export_onnx(load_model(reference_ckpt), tmp_path / "bgr.onnx", imgsz=(64, 64),
                            preprocess=contract).path
    pack(onnx_path, tmp_path / "b", target="coreml", app=True, checkpoint=load_model(reference_ckpt))
    inspected = inspect_coreml_app(tmp_path / "b" / "model_app.mlpackage")
    a, b = contract.affine(3)
    assert inspected["image"]["color_space"] == "BGR"
    assert np.allclose(inspected["pixel_a"], a, rtol=1e-5) and np.allclose(inspected["pixel_b"], b, rtol=1e-5)
    assert json.loads((tmp_path / "b" / "model.json").read_text())["app"]["scale_and_bias"] == "inside the program"


@pytest.mark.slow
def test_the_runtime_still_runs_the_dynamic_model_of_an_app_bundle(app_bundles):
    _needs("openvino", "litert_torch")
    from gap_deploy import runtime
    from gap_deploy.runtime.bundle import bundle_model

    for target, dynamic in (("openvino", "model.xml"), ("litert", "model.tflite")):
        bundle = app_bundles(target, "reference")
        assert bundle_model(bundle, None).name == dynamic
        with runtime.load(bundle) as session:
            assert session.run(np.zeros((1, 3, 37, 53), np.float32)).shape == (1, 10)


@pytest.mark.slow
def test_app_models_are_fp32_unless_fp16_is_asked_for(app_bundles):
    _needs("openvino", "litert_torch")
    import xml.etree.ElementTree as ET

    from ai_edge_litert.interpreter import Interpreter

    def const_types(bundle):
        return {layer.find("data").get("element_type") for layer in ET.parse(bundle / "model_app.xml").iter("layer")
                if layer.get("type") == "Const" and layer.find("data") is not None}
    assert "f16" not in const_types(app_bundles("openvino", "reference"))  # OpenVINO's save_model default is FP16
    assert "f16" in const_types(app_bundles("openvino", "reference", precision="fp16"))
    tensors = Interpreter(model_path=str(app_bundles("litert", "reference") / "model_app.tflite")).get_tensor_details()
    assert not [t["name"] for t in tensors if t["dtype"] == np.float16]
    if importlib.util.find_spec("coremltools") is not None:  # coremltools' ML programs compute in FP16 by default
        from gap_deploy.exporter.pack_app import inspect_coreml_app

        def float_types(bundle):
            types = inspect_coreml_app(bundle / "model_app.mlpackage")["op_output_types"]
            return {t for t in types if t.startswith("FLOAT")}
        assert float_types(app_bundles("coreml", "reference")) == {"FLOAT32"}
        assert "FLOAT16" in float_types(app_bundles("coreml", "reference", precision="fp16"))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ort", "litert", "openvino"])
def test_an_app_model_that_departs_from_the_contract_is_not_published(tmp_path, sources, monkeypatch, target):
    """A wrong normalization inside the app model (the scale of the wrapper and of OpenVINO's steps made 5% off)
    fails the platform runtime's check; no bundle appears."""
    _needs({"ort": "onnxruntime", "openvino": "openvino", "litert": "litert_torch"}[target])
    from gap_deploy.exporter.checkpoint import load_model

    real = Preprocess.affine
    monkeypatch.setattr(Preprocess, "affine", lambda self, channels: (real(self, channels)[0] * 1.05,
                                                                      real(self, channels)[1]))
    onnx_path, ckpt, arch = sources["reference"]
    with pytest.raises(ExportError, match="app-ready .* does not match"):
        pack(onnx_path, tmp_path / "b", target=target, app=True,
             checkpoint=load_model(ckpt, arch=arch) if target == "litert" else None)
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def letterboxed(tmp_path_factory, reference_ckpt):
    from gap_deploy.exporter import export_onnx, load_model

    contract = Preprocess(resize="letterbox", size=(64, 64), pad_value=114, space="uint8")
    path = tmp_path_factory.mktemp("letterbox") / "lb.onnx"
    return export_onnx(load_model(reference_ckpt), path, imgsz=(64, 64), preprocess=contract).path


@pytest.mark.parametrize("target, fragment, closest", [
    ("litert", "MediaPipe's ImageClassifier cannot pad", "--target openvino --app"),
    ("coreml", "pads with a colour Apple does not document", "--target openvino --app"),
])
def test_a_contract_the_platform_cannot_express_is_refused_before_anything_is_written(tmp_path, letterboxed,
                                                                                      reference_ckpt, target,
                                                                                      fragment, closest):
    _needs("coremltools" if target == "coreml" else "litert_torch")
    from gap_deploy.exporter.checkpoint import load_model

    with pytest.raises(UsageError) as caught:
        pack(letterboxed, tmp_path / "b", target=target, app=True, checkpoint=load_model(reference_ckpt))
    assert fragment in str(caught.value) and closest in (caught.value.hint or "")
    assert not (tmp_path / "b").exists()


def test_gap_pack_app_refusals_are_one_message_and_exit_2(tmp_path, reference_onnx, reference_ckpt, letterboxed):
    from click.testing import CliRunner

    from gap_deploy.exporter.cli.pack import main
    from tests.conftest import assert_clean_failure

    cases = [
        ([str(reference_onnx), "--target", "ncnn", "--app"], "--app makes the app-ready model"),
        ([str(reference_onnx), "--target", "executorch", "--app"], "--app makes the app-ready model"),
        ([str(reference_onnx), "--target", "openvino", "--app", "--fixed", "1x3x64x64", "--fixed", "1x3x32x32"],
         "one --fixed shape"),
        ([str(reference_onnx), "--target", "openvino", "--app", "--fixed", "2x3x64x64"], "takes one image"),
        ([str(reference_onnx), "--target", "openvino", "--app", "--fixed", "1x3x1x1"], "below the model's minimum"),
        ([str(letterboxed), "--target", "litert", "--app", "--checkpoint", str(reference_ckpt)], "cannot pad"),
    ]
    for args, fragment in cases:
        out = tmp_path / "out"
        result = CliRunner().invoke(main, [*args, "-o", str(out)])
        assert_clean_failure(result, fragment, code=2)
        assert not out.exists()


def test_the_app_size_is_fixed_then_the_contract_s_then_the_export_size(reference_onnx, sources):
    import onnx

    from gap_deploy.exporter.pack_app import plan
    from gap_deploy.runtime.artifact import describe

    reference = describe(onnx.load(str(reference_onnx)))
    assert plan("openvino", reference, None).size == (64, 64)  # no contract size: the export size
    assert plan("openvino", reference, (1, 3, 97, 31)).size == (97, 31)
    shorter = describe(onnx.load(str(sources["ResNetish"][0])))
    assert plan("litert", shorter, None).size == (56, 56)  # the contract's
    assert plan("litert", shorter, None).resize_by == "mediapipe"
    assert "region of interest" in plan("litert", shorter, None).resize_note


def test_region_of_interest_is_the_centre_the_contract_keeps():
    from gap_deploy.runtime.app_check import region_of_interest

    contract = Preprocess(resize="shorter-side", size=(56, 56), crop_fraction=0.875, space="uint8")
    # a 200 x 100 frame: shorter side 100 -> 64, so 128 x 64; the 56 x 56 centre is 56/128 wide, 56/64 high
    left, top, right, bottom = region_of_interest(contract, 200, 100)
    assert np.allclose([right - left, bottom - top], [56 / 128, 56 / 64]) and np.isclose(left + right, 1.0)
    assert region_of_interest(Preprocess(resize="stretch", size=(56, 56)), 200, 100) is None


@pytest.mark.slow
def test_the_app_scripts_check_and_time_a_bundle(app_bundles, images, tmp_path, capsys):
    """scripts/app_check.py (the platform on your files: exit 0 when it agrees, 2 on bad input) and
    scripts/bench_app.py (the in-graph preprocessing against NumPy's, as ratios in one run)."""
    import importlib.util
    import sys

    def script(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[2] / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(name, module)
        spec.loader.exec_module(module)
        return module

    bundle = app_bundles("ort", "reference")
    report = tmp_path / "check.json"
    assert script("app_check").main([str(bundle), str(images[0].parent), "--json", str(report)]) == 0
    checked = json.loads(report.read_text())
    assert checked["passed"] and checked["same_size"]["images"] == len(images)
    assert script("app_check").main([str(bundle), str(tmp_path / "nothing_here")]) == 2
    before = (bundle / "model.json").read_bytes()
    for inside in (bundle / "model.json", bundle / "report.json", images[0]):  # never over an input
        assert script("app_check").main([str(bundle), str(images[0]), "--json", str(inside)]) == 2
    assert (bundle / "model.json").read_bytes() == before and not (bundle / "report.json").exists()
    assert script("bench_app").main([str(bundle), "--rounds", "1", "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert ".ort: app model" in out and "ratio" in out


def test_ncnn_and_executorch_readmes_carry_the_contract_s_numbers():
    """ncnn's substract_mean_normalize values come from the contract: (pixel - mean_vals) * norm_vals on 0-255
    pixels equals (pixel / 255 - mean) / std; a BGR contract reads the frame as RGB2BGR."""
    from gap_deploy.exporter.pack_edge import edge_readme
    from gap_deploy.runtime.metadata import ModelMetadata

    contract = Preprocess(resize="stretch", size=(64, 64), channel_order="BGR", mean=(0.5, 0.4, 0.3),
                          std=(0.25, 0.2, 0.5))
    props = ModelMetadata(num_classes=10, in_channels=3, min_height=8, min_width=8, mean=contract.mean,
                          std=contract.std, preprocess=contract.to_json()).to_props()
    d = {"target": "ncnn", "accepts": {"batch": [1, 1], "height": [8, None], "width": [8, None]}, "files": {
        "model.param": {}}, "precision": "fp32", "channels": 3, "num_classes": 10, "input": "in0", "output": "out0",
        "channel_order": "BGR", "mean": list(contract.mean), "std": list(contract.std), "source": "m.onnx",
        "metadata": props, "blobs": ["in0", "out0"], "verification": {"rows": []}}
    readme = edge_readme(d)
    mean_vals = [m * 255 for m in contract.mean]
    norm_vals = [1 / (255 * s) for s in contract.std]
    assert "const float mean_vals[] = {" + ", ".join(f"{v:.6g}f" for v in mean_vals) + "}" in readme
    assert "const float norm_vals[] = {" + ", ".join(f"{v:.6g}f" for v in norm_vals) + "}" in readme
    assert "PIXEL_RGB2BGR" in readme and "stretch to 64x64" in readme
    assert "stretch to 64x64" in edge_readme({**d, "target": "executorch"})


def test_a_signed_app_bundle_covers_its_app_model(tmp_path, reference_onnx, build_keys, monkeypatch):
    """The bundle's signature holds the app model too: a changed model_app.ort is refused by verification."""
    from gap_deploy.runtime.errors import GapError
    from gap_deploy.runtime.signing import verify_path

    key, public = build_keys
    monkeypatch.setenv("GAP_DEPLOY_SIGN_KEY", str(key))
    bundle = tmp_path / "b"
    pack(reference_onnx, bundle, app=True)
    verify_path(bundle, public)
    with (bundle / "model_app.ort").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(GapError, match="model_app.ort"):
        verify_path(bundle, public)
