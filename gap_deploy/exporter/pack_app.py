"""App-ready variants (gap-pack --app): beside an ORT, LiteRT, OpenVINO or Core ML bundle's dynamic model, one that
the platform's own API takes with no code around it.

Each takes the platform's image -- 8-bit pixels, NHWC for ORT, LiteRT and OpenVINO, a Core ML image -- at one fixed
size (``--fixed``, else the contract's size, else the export size), does steps 3-4 of the model's preprocessing
contract (runtime.preprocess: scale, channel order, normalize) inside the model, and gives probabilities:

* ORT (``model_app.ort`` and ``.onnx``): uint8 NHWC in through plain ONNX ops, softmax out; plain onnxruntime (and
  ORT Mobile) runs it with its default session; the app resizes.
* LiteRT (``model_app.tflite``): uint8 NHWC in, softmax out, TFLite metadata with the labels (tflite-support's
  image-classifier writer), so MediaPipe's ``ImageClassifier`` (Android, iOS, web, Python) runs it as it is;
  MediaPipe resizes the camera frame itself.
* OpenVINO (``model_app.xml``): OpenVINO's PrePostProcessor steps saved in the IR (u8 NHWC in, the resize when
  OpenVINO has the contract's own -- Pillow's antialiased bilinear and bicubic -- convert, mean and scale), softmax
  out.
* Core ML (``model_app.mlpackage``): an ``ImageType`` input (scale and bias from the contract when one std holds
  for every channel, else the normalization inside the program) and a ``ClassifierConfig`` with the labels, so
  Vision's ``VNCoreMLRequest`` returns classification observations.

A contract a platform cannot express (a letterbox for MediaPipe or Vision, which cannot pad) is refused before
anything is converted, with the reason and the closest option. Every app model is run by its platform's runtime
where that runs here (onnxruntime, LiteRT's interpreter, OpenVINO) on 8-bit images and compared with the FP32
ONNX fed the contract's own tensors; Core ML's is read back. The bundle's model.json describes it under "app".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

# PROB_ATOL: how far an app model's probabilities may be from the FP32 ONNX's on the same 8-bit pixels, the one
# table runtime.app_check judges the same models with on image files
from gap_deploy.runtime.app_check import PROB_ATOL
from gap_deploy.runtime.artifact import ArtifactSpec
from gap_deploy.runtime.errors import ExportError, UsageError, first_line
from gap_deploy.runtime.preprocess import Preprocess
from gap_deploy.runtime.shapes import Shape, format_shape

APP_TARGETS = ("ort", "litert", "openvino", "coreml")
STEM = "model_app"
#: images of other sizes through a resize inside the model (OpenVINO's Pillow-mode resize, in float): the
#: contract's own resize is the same filter, but an 8-bit (Pillow) contract rounds where OpenVINO does not
RESIZED_PROB_ATOL = 1e-3
#: OpenVINO's PrePostProcessor resize for the contract's (interpolation, antialias), where it is the same resize
OV_RESIZE = {("bilinear", True): "RESIZE_BILINEAR_PILLOW", ("bicubic", True): "RESIZE_BICUBIC_PILLOW",
             ("nearest", True): "RESIZE_NEAREST", ("nearest", False): "RESIZE_NEAREST"}
#: test images (H, W) an OpenVINO model with its own resize is also checked at: odd, non-square, smaller, larger
RESIZE_CHECK_SIDES = [(37, 53), (97, 31), (240, 320), (81, 81)]


@dataclass(frozen=True)
class AppPlan:
    """What the app model of one bundle will be: its size, the contract at that size, and who resizes."""

    target: str
    size: tuple[int, int]
    channels: int
    contract: Preprocess
    #: "mediapipe", "vision", "openvino" (inside the model), or "app" (the app hands the model its size)
    resize_by: str
    #: how the platform's resize relates to the contract's, said in model.json and the README
    resize_note: str
    #: Core ML / Vision: the crop-and-scale option; OpenVINO: the PrePostProcessor resize; else ""
    platform_resize: str = ""


def plan(target: str, spec: ArtifactSpec, fixed: Shape | None) -> AppPlan:
    """The app model ``target`` gets for ``spec`` at ``fixed`` (else the contract's or the export size); a
    UsageError, before anything is converted, when the platform cannot express the contract."""
    if target not in APP_TARGETS:
        raise UsageError(f"--app makes an app-ready model for {', '.join(APP_TARGETS)}; the {target} target keeps "
                         "its dynamic model only (its README applies the contract in code).")
    meta, channels = spec.metadata, spec.channels
    size = _size(spec, fixed)
    contract = meta.preprocessing(channels=channels).sized(size)
    if channels != 3:
        raise UsageError(f"--app: the model takes {channels} channel(s); the platforms' classifier APIs hand a "
                         "model RGB images (3 channels).", hint="pack the dynamic model without --app and convert "
                                                                "the images in the app.")
    if target == "litert":
        return _plan_mediapipe(contract, size, channels)
    if target == "coreml":
        return _plan_vision(contract, size, channels)
    if target == "ort":
        return AppPlan("ort", size, channels, contract, "app",
                       f"the app hands the model frames at {size[0]}x{size[1]}, resized as the contract says (README); "
                       "the rest is inside")
    return _plan_openvino(contract, size, channels)


def _size(spec: ArtifactSpec, fixed: Shape | None) -> tuple[int, int]:
    meta, channels = spec.metadata, spec.channels
    if fixed is not None:
        if fixed[0] != 1 or fixed[1] != channels:
            raise UsageError(f"--app --fixed {format_shape(fixed)}: an app model takes one image, 1x{channels}xHxW.")
        size = (fixed[2], fixed[3])
    else:
        contract = meta.preprocessing(channels=channels)
        size = contract.size or ((meta.export_height, meta.export_width) if meta.export_height and meta.export_width
                                 else None)
        if size is None:
            raise UsageError("--app needs the size the app model takes: the model has no contract size or export "
                             "size.", hint=f"give it: --fixed 1x{channels}x224x224")
    if size[0] < meta.min_height or size[1] < meta.min_width:
        raise UsageError(f"--app at {size[0]}x{size[1]} is below the model's minimum {meta.min_height}x"
                         f"{meta.min_width}.")
    return size[0], size[1]


def _plan_mediapipe(contract: Preprocess, size, channels) -> AppPlan:
    if contract.resize == "letterbox":
        raise UsageError("--app --target litert: the model's contract letterboxes (keeps the aspect and pads), and "
                         "MediaPipe's ImageClassifier cannot pad: it stretches the frame, or a region of interest "
                         "of it, to the model's size.",
                         hint="pack without --app and letterbox in the app before the dynamic model.tflite (model.json "
                              "holds the contract), or use --target openvino --app or --target ort --app, whose "
                              "models take the letterboxed frame at their fixed size.")
    if contract.resize == "shorter-side" or contract.crop_fraction != 1.0:
        note = ("the contract resizes the shorter side and crops the centre: give MediaPipe the centred region of "
                "interest the README computes, and it stretches that region to the model's size")
    else:
        note = "MediaPipe stretches the whole frame to the model's size, " + _as_contract(contract)
    return AppPlan("litert", size, channels, contract, "mediapipe", note + _arithmetic(contract, "MediaPipe"))


def _as_contract(contract: Preprocess) -> str:
    # a contract without a size ("none": each image at its own) runs here at one size, as gap-run --imgsz does
    return "as the contract does" if contract.resize == "stretch" else "as gap-run --imgsz does"


def _plan_vision(contract: Preprocess, size, channels) -> AppPlan:
    if contract.resize == "letterbox":
        raise UsageError("--app --target coreml: the model's contract letterboxes, and Vision's only padding "
                         "option (.scaleFit) pads with a colour Apple does not document.",
                         hint="pack without --app and letterbox in the app before the dynamic model.mlpackage, or "
                              "use --target openvino --app, whose model takes the letterboxed frame.")
    if contract.resize == "shorter-side":
        option, note = ".centerCrop", ("Vision scales the shorter side and crops the centre (VNImageCropAndScale"
                                       "Option.centerCrop)")
        if contract.crop_fraction != 1.0:
            note += f"; set the request's regionOfInterest to the central {contract.crop_fraction:.4g} of the frame"
    else:
        option, note = ".scaleFill", "Vision stretches the frame to the model's size (.scaleFill), " + \
            _as_contract(contract)
    return AppPlan("coreml", size, channels, contract, "vision", note + _arithmetic(contract, "Vision"), option)


def _plan_openvino(contract: Preprocess, size, channels) -> AppPlan:
    algorithm = OV_RESIZE.get((contract.interpolation, contract.antialias))
    if contract.resize in ("stretch", "none") and contract.crop_fraction == 1.0 and algorithm:
        return AppPlan("openvino", size, channels, contract, "openvino",
                       f"OpenVINO stretches any u8 frame to {size[0]}x{size[1]} inside the model ({algorithm}, "
                       "computed in float: the contract's 8-bit Pillow resize rounds, so scores differ slightly; "
                       "measured in the bundle's check)", algorithm)
    why = {"shorter-side": "resizes the shorter side and crops the centre, which needs per-frame crop offsets",
           "letterbox": "letterboxes, which needs per-frame padding"}.get(
        contract.resize, f"resizes with {contract.interpolation}" + ("" if contract.antialias else " without "
                                                                     "antialias") + ", which OpenVINO has not")
    return AppPlan("openvino", size, channels, contract, "app",
                   f"the contract {why}: the app hands the model frames at {size[0]}x{size[1]} (README), the rest is "
                   "inside")


def _arithmetic(contract: Preprocess, platform: str) -> str:
    measured = ("not measured here: Core ML runs only on Apple's OSes" if platform == "Vision"
                else "measured by scripts/app_check.py")
    return (f"; {platform}'s resize is not the contract's {contract.interpolation} "
            f"({'antialiased, ' if contract.antialias else ''}{contract.space}): frames of the model's size give "
            f"the same scores, other sizes differ slightly ({measured})")


# --- the wrapper every converted app model is made from -------------------------------------------------------

def wrapper(module, contract: Preprocess, channels: int, *, nhwc: bool, affine: bool = True):
    """``module`` behind steps 3-4 of ``contract`` and a softmax: takes 0-255 pixels, uint8 NHWC in RGB when
    ``nhwc`` (reversed inside for a BGR contract), else float NCHW as Core ML's ImageType hands them (already in
    the contract's channel order: the ImageType's colour layout); ``affine`` False leaves the scale and bias to the
    platform (Core ML's ImageType)."""
    import torch

    a, b = contract.affine(channels)

    class App(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module
            self.register_buffer("a", torch.from_numpy(a.copy()).view(1, channels, 1, 1))
            self.register_buffer("b", torch.from_numpy(b.copy()).view(1, channels, 1, 1))

        def forward(self, x):
            if nhwc:
                x = x.permute(0, 3, 1, 2)
            x = x.to(torch.float32)
            if contract.channel_order == "BGR" and nhwc:
                x = x.flip(1)
            if affine:
                x = x * self.a + self.b
            return torch.softmax(self.model(x), dim=1)

    return App().eval()


# --- LiteRT + MediaPipe's metadata ------------------------------------------------------------------------------

def build_litert(module, out: Path, app: AppPlan, labels: list[str], log) -> dict:
    """model_app.tflite: the wrapper converted by litert-torch at 1xHxWx3 uint8, with the image-classifier
    metadata (input normalization 0/1 -- the normalization is in the graph --, the labels) that MediaPipe reads."""
    import torch

    from gap_deploy.exporter.pack_edge import _converter_failed, captured_output
    from gap_deploy.runtime._lazy import require

    with captured_output():  # its imports print absl, oneDNN and torchao start-up lines
        litert_torch = require("litert_torch", purpose="for gap-pack --target litert --app",
                               hint="pip install 'gap-deploy[litert]' -c constraints/cpu.txt")
    writer = metadata_writer()
    h, w = app.size
    example = torch.zeros(1, h, w, app.channels, dtype=torch.uint8)
    log(f"Converting the app-ready LiteRT model ({h}x{w} uint8 RGB, normalization inside) ...")
    bare = out / ".app_bare.tflite"
    with captured_output() as tail:
        try:
            litert_torch.convert(wrapper(module, app.contract, app.channels, nhwc=True), (example,)).export(str(bare))
        except Exception as exc:
            raise _converter_failed("litert-torch's conversion of the app-ready model", exc, tail) from None
    label_file = out / ".app_labels" / "labels.txt"
    label_file.parent.mkdir()
    label_file.write_text("\n".join(labels) + "\n")
    image_classifier, writer_utils = writer
    try:
        made = image_classifier.MetadataWriter.create_for_inference(
            writer_utils.load_file(str(bare)), [0.0], [1.0], [str(label_file)])
        (out / f"{STEM}.tflite").write_bytes(made.populate())
    except Exception as exc:
        raise ExportError(f"writing the TFLite metadata failed: {first_line(exc)}") from None
    finally:
        bare.unlink(missing_ok=True)
        label_file.unlink(missing_ok=True)
        label_file.parent.rmdir()
    return {"file": f"{STEM}.tflite", "metadata": read_litert_metadata(out / f"{STEM}.tflite")}


def metadata_writer():
    """tflite-support's image-classifier metadata writer, (image_classifier, writer_utils). Its module is
    imported itself: the package's __init__ imports task modules built for protobuf 3, and gap-deploy's onnx
    needs protobuf 6+ (so tflite-support is installed with --no-deps). Its compiled part links libusb-1.0; where
    the system has none, the copy of the libusb-package wheel is loaded first."""
    import importlib
    import importlib.util

    hint = ("pip install --no-deps 'tflite-support==0.4.4' && pip install libusb-package  (tflite-support's "
            "declared protobuf<4 would break onnx, so it is installed without its dependencies; its metadata "
            "writer needs none of them)")
    if importlib.util.find_spec("tensorflow_lite_support") is None:
        raise ExportError("gap-pack --app for LiteRT writes MediaPipe's metadata with tflite-support, which is not "
                          "installed.", hint=hint)
    name = "tensorflow_lite_support.metadata.python.metadata_writers"
    try:
        return importlib.import_module(f"{name}.image_classifier"), importlib.import_module(f"{name}.writer_utils")
    except ImportError as exc:
        if "libusb" not in str(exc):
            raise ExportError(f"tflite-support's metadata writer does not import: {first_line(exc)}",
                              hint=hint) from None
    spec = importlib.util.find_spec("libusb_package")
    library = Path(next(iter(spec.submodule_search_locations or []), "")) / "libusb-1.0.so" if spec else None
    if library is None or not library.is_file():
        raise ExportError("tflite-support's metadata writer needs libusb-1.0, which this system lacks.",
                          hint="pip install libusb-package  (or: apt-get install libusb-1.0-0)")
    import ctypes

    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)  # its soname is libusb-1.0.so.0, what the writer links
    return importlib.import_module(f"{name}.image_classifier"), importlib.import_module(f"{name}.writer_utils")


def read_litert_metadata(path: Path) -> dict:
    """What a reader sees of an app model's TFLite metadata: the input's normalization and content, the labels
    file packed in the model (read back from the model's own bytes)."""
    import importlib
    import zipfile

    metadata_writer()  # tflite-support, which wrote it, holds the schemas too
    schema = importlib.import_module("tensorflow_lite_support.metadata.metadata_schema_py_generated")
    tflite = importlib.import_module("tensorflow_lite_support.metadata.schema_py_generated")
    data = path.read_bytes()
    model = tflite.Model.GetRootAsModel(data, 0)
    buffer = None
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"TFLITE_METADATA":
            buffer = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    if buffer is None:
        raise ExportError(f"{path.name} has no TFLite metadata.")
    metadata = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    graph = metadata.subgraphMetadata[0]
    norm = next((u.options for u in graph.inputTensorMetadata[0].processUnits or []
                 if isinstance(u.options, schema.NormalizationOptionsT)), None)
    with zipfile.ZipFile(path) as packed:
        labels = packed.read("labels.txt").decode("utf-8").splitlines()
    return {"name": (metadata.name or b"").decode(), "min_parser_version": (metadata.minParserVersion or b"").decode(),
            "input_mean": [float(v) for v in norm.mean] if norm else None,
            "input_std": [float(v) for v in norm.std] if norm else None,
            "labels_file": [f.name.decode() for f in graph.outputTensorMetadata[0].associatedFiles or []],
            "labels": labels}


def litert_infer(path: Path):
    """The app model run by LiteRT's interpreter: (N, H, W, 3) uint8 -> (N, classes) probabilities."""
    from ai_edge_litert.interpreter import Interpreter

    from gap_deploy.exporter.pack_edge import captured_output

    with captured_output():
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    source, result = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def infer(pixels: np.ndarray) -> np.ndarray:
        rows = []
        for image in pixels:
            interpreter.set_tensor(source, image[None])
            interpreter.invoke()
            rows.append(np.array(interpreter.get_tensor(result)[0], dtype=np.float32))
        return np.stack(rows)
    return infer


# --- ONNX Runtime (Mobile): the same steps as plain ONNX ops ----------------------------------------------------

def build_ort(onnx_model, out: Path, app: AppPlan, log) -> dict:
    """model_app.onnx + model_app.ort: the FP32 ONNX behind plain ONNX ops (uint8 NHWC input at the app size ->
    Transpose -> Cast -> Gather for a BGR contract -> Mul -> Add) and a Softmax, so plain onnxruntime (and ORT
    Mobile, which loads the .ort) takes 8-bit pixels and gives probabilities with no session option or extension."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gap_deploy.exporter.ort_format import to_ort
    from gap_deploy.runtime.onnx_file import save_onnx

    h, w = app.size
    log(f"Writing the app-ready ONNX Runtime model ({h}x{w} uint8 NHWC, normalization inside) ...")
    from gap_deploy.runtime.artifact import describe

    spec = describe(onnx_model)
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    graph = model.graph
    a, b = app.contract.affine(app.channels)
    prefix = "gap_app_"
    nodes = [helper.make_node("Transpose", ["image"], [prefix + "nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", [prefix + "nchw"], [prefix + "float"], to=TensorProto.FLOAT)]
    source = prefix + "float"
    if app.contract.channel_order == "BGR":
        nodes.append(helper.make_node("Gather", [source, prefix + "bgr"], [prefix + "ordered"], axis=1))
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), prefix + "bgr"))
        source = prefix + "ordered"
    nodes += [helper.make_node("Mul", [source, prefix + "a"], [prefix + "scaled"]),
              helper.make_node("Add", [prefix + "scaled", prefix + "b"], [spec.input_name])]
    graph.initializer.extend([numpy_helper.from_array(a.reshape(1, -1, 1, 1), prefix + "a"),
                              numpy_helper.from_array(b.reshape(1, -1, 1, 1), prefix + "b")])
    tail = helper.make_node("Softmax", [spec.output_name], ["probabilities"], axis=1)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest + [tail])
    others = [v for v in graph.input if v.name != spec.input_name]  # initializers listed as inputs, if any
    graph.ClearField("input")
    graph.input.extend([helper.make_tensor_value_info("image", TensorProto.UINT8, [1, h, w, app.channels]), *others])
    graph.ClearField("output")
    graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, None]))
    onnx.checker.check_model(model)
    onnx_file = out / f"{STEM}.onnx"
    save_onnx(model, onnx_file)
    work = out / ".app_ort"
    work.mkdir()
    ort_tmp, _ = to_ort(onnx_file, work)
    ort_tmp.replace(out / f"{STEM}.ort")
    for leftover in work.iterdir():
        leftover.unlink()
    work.rmdir()
    from gap_deploy.exporter.ort_format import usability

    return {"file": onnx_file.name, "ort": f"{STEM}.ort", "ort_file": f"{STEM}.ort",
            "usability": [vars(u) for u in usability(onnx_file, onnx_file.name)]}


def ort_infer(path: Path):
    """The app model in plain onnxruntime, its default session options: (N, H, W, C) uint8 -> probabilities."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def infer(pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(session.run(None, {"image": image[None]})[0]) for image in pixels]
                              ).astype(np.float32)
    return infer


# --- OpenVINO's PrePostProcessor ----------------------------------------------------------------------------------

def build_openvino(source: Path, out: Path, app: AppPlan, precision: str, meta_props: dict, log) -> dict:
    """model_app.xml + .bin: the ONNX converted by OpenVINO, its input fixed to 1x3xHxW, the PrePostProcessor's
    steps (u8 NHWC RGB in; reverse channels for a BGR contract; the resize when OpenVINO has the contract's; f32;
    mean and scale from the contract) and a softmax on the output, saved FP32 unless FP16 was asked for."""
    from gap_deploy.runtime.backends.openvino import RT_INFO_SECTION, no_telemetry

    no_telemetry()  # before openvino is imported
    import openvino as ov
    from openvino import opset13
    from openvino.preprocess import ColorFormat, PrePostProcessor, ResizeAlgorithm

    h, w = app.size
    log(f"Converting the app-ready OpenVINO model (u8 NHWC, {h}x{w} model input, preprocessing inside) ...")
    model = ov.convert_model(str(source))
    model.reshape({model.inputs[0].any_name: ov.PartialShape([1, app.channels, h, w])})
    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    tensor.set_color_format(ColorFormat.RGB)
    if app.resize_by == "openvino":
        tensor.set_spatial_dynamic_shape()
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess()
    steps.convert_element_type(ov.Type.f32)
    if app.contract.channel_order == "BGR":
        steps.convert_color(ColorFormat.BGR)
    if app.resize_by == "openvino":
        steps.resize(getattr(ResizeAlgorithm, app.platform_resize), h, w)
    a, b = app.contract.affine(app.channels)  # x = p * a + b  ==  (p - (-b / a)) / (1 / a)
    steps.mean([float(v) for v in (-b / a)]).scale([float(v) for v in (1.0 / a)])
    ppp.output().postprocess().custom(lambda node: opset13.softmax(node, 1).output(0))
    model = ppp.build()
    for key, value in meta_props.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key[len("gap."):]])
    model.set_rt_info("app", [RT_INFO_SECTION, "role"])
    xml = out / f"{STEM}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
    return {"file": xml.name, "weights": f"{STEM}.bin", "input": model.inputs[0].any_name,
            "input_shape": str(model.inputs[0].get_partial_shape())}


def openvino_infer(xml: Path):
    """The app IR compiled for OpenVINO's CPU: (1, H, W, 3) uint8 -> (1, classes) probabilities, per image."""
    from gap_deploy.runtime.backends.openvino import CPU_CONFIG, no_telemetry

    no_telemetry()
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", CPU_CONFIG)
    request = compiled.create_infer_request()

    def infer(pixels: np.ndarray) -> np.ndarray:
        return np.stack([np.array(request.infer({0: image[None]})[compiled.outputs[0]][0], dtype=np.float32)
                         for image in pixels])
    return infer


# --- Core ML's image input and classifier -------------------------------------------------------------------------

def build_coreml(module, out: Path, app: AppPlan, precision: str, labels: list[str], log) -> dict:
    """model_app.mlpackage: the wrapper traced and converted with an ImageType input (RGB, or BGR for a BGR
    contract) at 1x3xHxW, and a ClassifierConfig holding the labels; the scale and bias are the ImageType's when
    one std serves every channel (Core ML's scale is one number), else inside the program."""
    import torch

    from gap_deploy.exporter.pack_edge import _converter_failed, captured_output

    with captured_output():
        import coremltools as ct
    h, w = app.size
    a, b = app.contract.affine(app.channels)
    one_scale = bool(np.allclose(a, a[0], rtol=0, atol=0))
    image = ct.ImageType(name="image", shape=(1, app.channels, h, w),
                         color_layout=ct.colorlayout.BGR if app.contract.channel_order == "BGR" else ct.colorlayout.RGB,
                         scale=float(a[0]) if one_scale else 1.0,
                         bias=[float(v) for v in b] if one_scale else [0.0] * app.channels)
    module = wrapper(module, app.contract, app.channels, nhwc=False, affine=not one_scale)
    log(f"Converting the app-ready Core ML model (image input {h}x{w}, classifier with {len(labels)} labels) ...")
    with captured_output() as tail:
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, torch.zeros(1, app.channels, h, w))
            model: Any = ct.convert(traced, inputs=[image], classifier_config=ct.ClassifierConfig(list(labels)),
                               convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                               compute_precision=(ct.precision.FLOAT16 if precision == "fp16"
                                                  else ct.precision.FLOAT32))
            model.save(str(out / f"{STEM}.mlpackage"))
        except Exception as exc:
            raise _converter_failed("coremltools' conversion of the app-ready model", exc, tail) from None
    return {"file": f"{STEM}.mlpackage", "scale_and_bias": "ImageType" if one_scale else "inside the program",
            "crop_and_scale": app.platform_resize}


def inspect_coreml_app(package: Path) -> dict:
    """The app program read back: its image input (size, colour space), the per-channel ``pixel * a + b`` its
    first ops apply to the image (the ImageType's scale and bias, or the normalization inside; composed from the
    program's own constants), the classifier's labels and outputs, the element types its ops produce."""
    from gap_deploy.exporter.pack_edge import captured_output, inspect_coreml

    with captured_output():
        import coremltools as ct

        model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    description = spec.description
    image = description.input[0].type.imageType
    function = next(iter(spec.mlProgram.functions.values()))
    ops = list(function.block_specializations[function.opset].operations)
    consts = {op.outputs[0].name: _floats(op.attributes["val"]) for op in ops if op.type == "const"}
    classes = [v.immediateValue.tensor.strings.values[0] for op in ops if op.type == "classify"
               for v in _const_list(op, consts, ops)]
    a, b = _affine_on(description.input[0].name, ops, consts)
    inspected = inspect_coreml(package, model)
    # the saved program rebuilt as coremltools' MIL, each op's type inference run again (what can be run of it here)
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    with captured_output():
        program = load_mil(spec, spec.specificationVersion, str(model.weights_dir or ""))
    main = program.functions["main"]
    return {"input": description.input[0].name, "input_type": description.input[0].type.WhichOneof("Type"),
            "image": {"width": image.width, "height": image.height,
                      "color_space": cast(Any, ct.proto.FeatureTypes_pb2.ImageFeatureType).ColorSpace.Name(
                          image.colorSpace)},
            "pixel_a": a, "pixel_b": b, "classes": classes, "predicted_feature": description.predictedFeatureName,
            "probabilities": description.predictedProbabilitiesName,
            "op_output_types": inspected["op_output_types"], "spec_version": inspected["spec_version"],
            "mil": {"ops": len(list(main.operations)), "inputs": {k: str(v.shape) for k, v in main.inputs.items()},
                    "outputs": [o.name for o in main.outputs]}}


def _floats(value) -> list[float] | None:
    """A constant's float values (FLOAT32 as floats, FLOAT16 as the bytes Core ML stores them in); None else."""
    if not value.HasField("immediateValue"):
        return None
    tensor = value.immediateValue.tensor
    if tensor.floats.values:
        return list(tensor.floats.values)
    from coremltools.proto import MIL_pb2

    if tensor.bytes.values and value.type.tensorType.dataType == MIL_pb2.DataType.Value("FLOAT16"):
        return [float(v) for v in np.frombuffer(tensor.bytes.values, np.float16)]
    return None


def _const_list(op, consts, ops):
    """The ``classes`` argument of a classify op: a list of string constants."""
    argument = op.inputs["classes"].arguments[0]
    if argument.HasField("value"):
        return argument.value.immediateValue.list.values
    source = next(o for o in ops if o.outputs and o.outputs[0].name == argument.name)
    return source.attributes["val"].immediateValue.list.values


def _affine_on(name: str, ops, consts) -> tuple[list[float] | None, list[float] | None]:
    """Compose the chain of elementwise ops with constant operands (mul, add, sub, real_div, batch_norm) that
    starts at the tensor ``name``: (a, b) per channel, so that the chain computes ``x * a + b``; (None, None)
    when the first op on the image is none of these with constants."""
    a, b, current, found = np.ones(1), np.zeros(1), name, False
    for op in ops:
        args = {k: [x.name for x in v.arguments] for k, v in op.inputs.items()}
        if current not in args.get("x", []):
            continue
        if op.type == "batch_norm":
            gamma, beta, mean, var = (np.asarray(consts.get(args[k][0]) or [np.nan]) for k in
                                      ("gamma", "beta", "mean", "variance"))
            eps = np.asarray(consts.get(args["epsilon"][0]) or [1e-5]) if "epsilon" in args else 1e-5
            scale = gamma / np.sqrt(var + eps)
            a, b = a * scale, (b - mean) * scale + beta
        elif op.type == "cast":  # FP16 programs cast the image first: the values are unchanged
            pass
        elif op.type in ("mul", "add", "sub", "real_div") and args.get("y") and consts.get(args["y"][0]):
            y = np.asarray(consts[args["y"][0]])
            a, b = {"mul": (a * y, b * y), "add": (a, b + y), "sub": (a, b - y), "real_div": (a / y, b / y)}[op.type]
        else:
            break
        current, found = op.outputs[0].name, True
    return ([float(v) for v in np.broadcast_to(a, b.shape if b.size > a.size else a.shape)],
            [float(v) for v in np.broadcast_to(b, a.shape if a.size > b.size else b.shape)]) if found else (None, None)


# --- verification -------------------------------------------------------------------------------------------------

def check_images(app: AppPlan, count: int = 6, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """8-bit RGB test images at the app model's size (or ``size``): smooth gradients with noise (a classifier's
    input is neither flat nor white noise), one per seed."""
    h, w = size or app.size
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for i in range(count):
        base = np.stack([(xx / max(w - 1, 1)) * 255, (yy / max(h - 1, 1)) * 255,
                         ((xx + yy) % 64) * 4], axis=2)
        noisy = np.roll(base, i * 7, axis=i % 2) * (0.4 + 0.1 * i) + rng.normal(0, 20, base.shape)
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return images


def softmax(logits: np.ndarray) -> np.ndarray:
    """runtime.images.softmax in float64 (the reference's probabilities), as float32."""
    from gap_deploy.runtime.images import softmax as probabilities

    return probabilities(np.asarray(logits, np.float64)).astype(np.float32)


def verify(app: AppPlan, infer, onnx_model, precision: str, *, what: str) -> dict:
    """Run ``infer`` (the app model on its platform's runtime) on 8-bit images at the model's size, and -- when
    the model resizes -- at other sizes, against the FP32 ONNX on the contract's own tensors (its resize for
    those). ExportError (no bundle) when a probability differs by more than the tolerance."""
    from gap_deploy.runtime.parity import ort_cpu_infer

    reference = ort_cpu_infer(onnx_model)
    rows = []

    def row(label: str, pixels: np.ndarray, tensor: np.ndarray, atol: float) -> None:
        got, want = infer(pixels[None])[0], softmax(reference(tensor[None]))[0]
        rows.append({"image": label, "max_abs_diff": float(np.max(np.abs(got - want))),
                     "top1": int(np.argmax(got)), "top1_reference": int(np.argmax(want)), "atol": atol,
                     "passed": bool(np.max(np.abs(got - want)) <= atol)})

    atol = PROB_ATOL["fp16" if precision == "fp16" else "fp32"]
    for i, pixels in enumerate(check_images(app)):
        row(f"{app.size[0]}x{app.size[1]} #{i}", pixels, app.contract.from_pixels(pixels), atol)
    if app.resize_by == "openvino":
        for i, (h, w) in enumerate(RESIZE_CHECK_SIDES):
            pixels = check_images(app, i + 1, (h, w))[-1]
            from PIL import Image

            tensor = app.contract.from_image(Image.fromarray(pixels))  # the contract's own resize
            row(f"{h}x{w} resized inside", pixels, tensor, max(atol, RESIZED_PROB_ATOL))
    failed = [r for r in rows if not r["passed"]]
    table = "\n".join(f"{r['image']:>22}  max |p - p_ref| {r['max_abs_diff']:.2e} (<= {r['atol']:.0e})  top-1 "
                      f"{r['top1']} vs {r['top1_reference']}  {'ok' if r['passed'] else 'FAILED'}" for r in rows)
    if failed:
        raise ExportError(f"the app-ready {what} model does not match the ONNX on the contract's tensors; no bundle "
                          "was written.", note=table)
    return {"runtime": what, "rows": rows, "passed": True, "table": table}


# --- the bundle ---------------------------------------------------------------------------------------------------

def add_to_bundle(target: str, app: AppPlan, out: Path, *, module, onnx_model, source: Path, precision: str,
                  labels: list[str], meta_props: dict, log) -> tuple[dict, dict]:
    """Build, check and describe the app model of a staged bundle: (its model.json "files" entries, its
    model.json "app" section)."""
    from gap_deploy.runtime.files import sha256_file

    if target == "ort":
        made = build_ort(onnx_model, out, app, log)
        verification = verify(app, ort_infer(out / made["file"]), onnx_model, precision, what="ONNX Runtime")
        ort_check = verify(app, ort_infer(out / made["ort"]), onnx_model, precision, what="ONNX Runtime (.ort)")
        verification["rows"] += [{**r, "image": f"{r['image']} (.ort)"} for r in ort_check["rows"]]
        names = [made["file"], made["ort"]]
        layout, dtype = "NHWC", "uint8"
    elif target == "litert":
        made = build_litert(module, out, app, labels, log)
        verification = verify(app, litert_infer(out / made["file"]), onnx_model, precision, what="LiteRT")
        names = [made["file"]]
        layout, dtype = "NHWC", "uint8"
    elif target == "openvino":
        made = build_openvino(source, out, app, precision, meta_props, log)
        verification = verify(app, openvino_infer(out / made["file"]), onnx_model, precision, what="OpenVINO")
        names = [made["file"], made["weights"]]
        layout, dtype = "NHWC", "uint8"
    else:
        made = build_coreml(module, out, app, precision, labels, log)
        inspected = inspect_coreml_app(out / made["file"])
        _check_coreml_app(inspected, app, labels, precision)
        verification = {"runtime": "coremltools (read back; Core ML runs only on Apple's OSes)", "executed": False,
                        "inspected": inspected, "passed": True}
        names = [made["file"], *write_vision_check(app, out, onnx_model, labels)]
        layout, dtype = "image", "8-bit RGB image (CVPixelBuffer / CGImage)"
    files: dict[str, dict] = {}
    h, w = app.size
    for name in names:
        path = out / name
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            files[member.relative_to(out).as_posix()] = {
                "sha256": sha256_file(member), "bytes": member.stat().st_size,
                "format": "mlpackage" if path.is_dir() else member.suffix[1:],
                "role": "app" if name in (made["file"], made.get("weights"), made.get("ort")) else "app-check",
                "shape": [1, h, w, app.channels] if layout == "NHWC" else [1, app.channels, h, w]}
    section = {"file": made["file"], "size": [h, w], "layout": layout, "dtype": dtype, "channel_order": "RGB",
               "pixel_range": "0-255", "inside": ["scale", "channel order", "normalize", "softmax"]
               + (["resize"] if app.resize_by == "openvino" else []),
               "resize_by": app.resize_by, "resize_note": app.resize_note, "platform_resize": app.platform_resize,
               "output": "probabilities", "contract": app.contract.describe(),
               "verification": {k: v for k, v in verification.items() if k != "table"},
               **{k: v for k, v in made.items() if k not in ("file", "weights", "ort")}}
    if target == "litert":
        section["labels"] = "in the model's TFLite metadata (labels.txt), read by MediaPipe"
    log(f"app-ready {made['file']}: " + ("read back" if target == "coreml" else
                                         f"matches the ONNX on {len(verification['rows'])} image(s)"))
    return files, section


#: what the Mac check of a Core ML app model allows: Core ML may run an FP32 program on the GPU
VISION_ATOL = 1e-3


def write_vision_check(app: AppPlan, out: Path, onnx_model, labels: list[str]) -> list[str]:
    """app_check/: 8-bit frames at the app model's size and the FP32 ONNX's probabilities for them
    (expected.json), and check_vision.swift, which runs the app model through Vision on a Mac and compares."""
    import json
    from importlib.resources import files

    from PIL import Image

    from gap_deploy.runtime.parity import ort_cpu_infer

    reference = ort_cpu_infer(onnx_model)
    folder = out / "app_check"
    folder.mkdir()
    frames = []
    for i, pixels in enumerate(check_images(app)):
        name = f"frame_{i}.png"
        Image.fromarray(pixels).save(folder / name)
        probabilities = softmax(reference(app.contract.from_pixels(pixels)[None]))[0]
        frames.append({"file": name, "probabilities": [float(p) for p in probabilities]})
    (folder / "expected.json").write_text(json.dumps({"labels": list(labels), "atol": VISION_ATOL,
                                                      "frames": frames}, indent=1) + "\n")
    script = files("gap_deploy.exporter").joinpath("readmes").joinpath("check_vision.swift").read_text("utf-8")
    (out / "check_vision.swift").write_text(script)
    return ["app_check", "check_vision.swift"]


def app_readme(d: dict) -> str:
    """The README section of a bundle's app-ready model (its model.json "app")."""
    from gap_deploy.exporter.pack_edge import readme_template
    from gap_deploy.runtime.metadata import ModelMetadata

    app, target = d["app"], d["target"]
    h, w = app["size"]
    fields = {"height": h, "width": w, "num_classes": d["num_classes"], "inside": ", ".join(app["inside"]),
              "resize_note": app["resize_note"][0].upper() + app["resize_note"][1:]}
    rows = app["verification"].get("rows", [])
    fields["checked"] = (f"{len(rows)} image(s), largest probability difference "
                         f"{max((r['max_abs_diff'] for r in rows), default=float('nan')):.1e}")
    roi = app["resize_by"] == "mediapipe" and "region of interest" in app["resize_note"]
    if target == "litert":
        contract = (ModelMetadata.from_props(d["metadata"]).preprocessing((h, w), d["channels"])
                    if isinstance(d.get("metadata"), dict) else None)
        fields["region"] = "" if not roi or contract is None else "\n" + _region_text(contract, h, w) + "\n"
        fields["kotlin_roi"] = (", ImageProcessingOptions.builder().setRegionOfInterest(RectF(left, top, right, "
                                "bottom)).build()") if roi else ""
        fields["swift_roi"] = ", regionOfInterest: CGRect(x: left, y: top, width: right - left, height: bottom - " \
                              "top)" if roi else ""
        fields["js_roi"] = ", { regionOfInterest: { left, top, right, bottom } }" if roi else ""
        return readme_template("app_litert").format(**fields)
    if target == "ort":
        return readme_template("app_ort").format(**fields)
    if target == "openvino":
        inside = app["resize_by"] == "openvino"
        fields["input_note"] = "any size: OpenVINO resizes it inside" if inside else f"{h} x {w} exactly"
        fields["frame_note"] = "" if inside else f"; resized to {h}x{w} as the contract says first"
        return readme_template("app_openvino").format(**fields)
    inspected = app["verification"]["inspected"]
    fields.update(color=inspected["image"]["color_space"], scale_where="the image input's scale and bias"
                  if app.get("scale_and_bias") == "ImageType" else "the program's first ops (one std does not serve "
                  "every channel, and Core ML's image scale is one number)",
                  affine=", ".join(f"{a:.6g} x p + {b:.6g}"
                                   for a, b in zip(inspected["pixel_a"], inspected["pixel_b"])),
                  precision_type="FLOAT16" if d["precision"] == "fp16" else "FLOAT32",
                  crop_option=app["platform_resize"] or ".scaleFill",
                  vision_roi=("\nrequest.regionOfInterest = CGRect(x: 0.5 - f / 2, y: 0.5 - f / 2, width: f, height: f)"
                              "   // f: the crop fraction (for a square frame)") if "regionOfInterest" in
                  app["resize_note"] else "")
    return readme_template("app_coreml").format(**fields)


def _region_text(contract: Preprocess, h: int, w: int) -> str:
    """How an app computes MediaPipe's region of interest for a cropping contract (README)."""
    cf = contract.crop_fraction
    if contract.resize == "stretch":
        size = f"width = height = {cf:.6g}"
    else:
        side = min(h, w)
        size = (f"m = min(fw, fh); width = {cf * w / side:.6g} x m / fw; height = {cf * h / side:.6g} x m / fh")
    return (f"The contract keeps the centre of each frame ({contract.describe()}): give MediaPipe that region. For a "
            f"frame of fw x fh pixels: {size}; left = (1 - width) / 2, top = (1 - height) / 2, right = 1 - left, "
            "bottom = 1 - top (gap-deploy's `runtime.app_check.region_of_interest` computes the same).")


def _check_coreml_app(inspected: dict, app: AppPlan, labels: list[str], precision: str) -> None:
    wanted = "FLOAT16" if precision == "fp16" else "FLOAT32"
    other = [t for t in inspected["op_output_types"] if t.startswith("FLOAT") and t != wanted]
    problems = []
    if inspected["input_type"] != "imageType":
        problems.append(f"its input is {inspected['input_type']}, not an image")
    if (inspected["image"]["height"], inspected["image"]["width"]) != app.size:
        problems.append(f"its image is {inspected['image']['height']}x{inspected['image']['width']}")
    if inspected["classes"] != list(labels):
        problems.append("its classifier's labels are not the model's")
    if set(inspected["mil"]["outputs"]) != {inspected["predicted_feature"], inspected["probabilities"]}:
        problems.append(f"its program's outputs are {inspected['mil']['outputs']}, not a label and probabilities")
    a, b = app.contract.affine(app.channels)
    rtol = 2e-3 if precision == "fp16" else 1e-5  # FP16 constants hold 11 significant bits
    if inspected["pixel_a"] is None or not (np.allclose(np.broadcast_to(inspected["pixel_a"], a.shape), a, rtol=rtol)
                                            and np.allclose(np.broadcast_to(inspected["pixel_b"], b.shape), b,
                                                            rtol=rtol, atol=1e-6)):
        problems.append(f"its first ops compute pixel * {inspected['pixel_a']} + {inspected['pixel_b']} on the "
                        f"image, not the contract's pixel * {a.tolist()} + {b.tolist()}")
    if precision == "fp32" and other:
        problems.append(f"it computes in {', '.join(other)} although FP32 was asked for")
    if problems:
        raise ExportError(f"the app-ready Core ML program is not what was asked: {'; '.join(problems)}; no bundle "
                          "was written.")
