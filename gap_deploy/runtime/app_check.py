"""A bundle's app-ready model (gap-pack --app) run by the platform's own API on image files, against gap-run.

For each image file, two comparisons with what gap-run gives for that file at the app model's size (the bundle's
dynamic model, the model's preprocessing contract at that size):

* **at the model's size**: the platform is handed the 8-bit frame the contract's resize and crop make (what an
  app hands it when its frames are the model's size); only the model and its in-graph scaling and normalization
  differ from gap-run, so the probabilities must agree closely and the top-1 class must be the same.
* **the platform's own resize**: the platform is handed the whole decoded file and resizes it itself (MediaPipe
  with the contract's centred region of interest for a shorter-side contract; OpenVINO inside the model). Its
  resize is not Pillow's, so this is measured and reported, not required to match.

MediaPipe's ``ImageClassifier`` runs LiteRT app models; OpenVINO's runtime runs OpenVINO ones. Core ML cannot
run here. Nothing here imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gap_deploy.runtime.errors import UsageError
from gap_deploy.runtime.preprocess import Preprocess

#: the largest difference of a probability an app model may show against the FP32 ONNX at the model's size, by
#: the bundle's precision (FP32 arithmetic: the normalization folded into one multiply-add changes only the last
#: bits); OpenVINO is compiled with INFERENCE_PRECISION_HINT f32 (its CPU plugin picks bf16 where the CPU has it)
PROB_ATOL = {"fp32": 1e-4, "fp16": 5e-3}
#: the targets whose app model runs here, by the platform that runs it
PLATFORMS = {"ort": "ONNX Runtime", "litert": "MediaPipe ImageClassifier", "openvino": "OpenVINO"}


@dataclass
class AppCheck:
    bundle: Path
    platform: str
    size: tuple[int, int]
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    atol: float = 1e-4
    #: who resizes a frame of another size: the platform ("mediapipe", "openvino") or the app
    resize_by: str = "app"

    @property
    def same_size(self) -> dict:
        return _summary(self.rows, "same")

    @property
    def own_resize(self) -> dict:
        return _summary(self.rows, "own")

    @property
    def passed(self) -> bool:
        same = self.same_size
        return bool(self.rows) and not self.errors and same["top1_equal"] == same["images"] \
            and same["max_abs_diff"] <= self.atol

    def to_dict(self) -> dict:
        return {"bundle": str(self.bundle), "platform": self.platform, "size": list(self.size), "atol": self.atol,
                "resize_by": self.resize_by,
                "passed": self.passed, "same_size": self.same_size, "own_resize": self.own_resize,
                "rows": self.rows, "errors": self.errors}

    def format(self) -> str:
        same, own = self.same_size, self.own_resize
        h, w = self.size
        lines = [f"{self.platform} on {same['images']} image file(s), against gap-run at {h}x{w}:",
                 f"  at the model's size: top-1 equal on {same['top1_equal']}/{same['images']}, largest probability "
                 f"difference {same['max_abs_diff']:.2e} (allowed {self.atol:.0e}): "
                 f"{'PASSED' if self.passed else 'FAILED'}"]
        if self.resize_by == "app":
            lines.append("  other sizes: the app resizes them as the contract says (this model takes only its own)")
        else:
            lines.append(f"  {self.platform} resizing each file itself: top-1 equal on {own['top1_equal']}/"
                         f"{own['images']}, largest probability difference {own['max_abs_diff']:.2e} (its resize is "
                         "not the contract's: reported, not required)")
        lines += [f"  error: {e['file']}: {e['error']}" for e in self.errors]
        return "\n".join(lines)


def _summary(rows: list[dict], key: str) -> dict:
    diffs = [r[f"{key}_max_abs_diff"] for r in rows]
    return {"images": len(rows), "top1_equal": sum(r[f"{key}_top1"] == r["gap_run_top1"] for r in rows),
            "max_abs_diff": max(diffs, default=float("nan"))}


def region_of_interest(contract: Preprocess, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The centred region (left, top, right, bottom, normalized to the frame) a shorter-side-and-crop contract
    keeps of a ``width`` x ``height`` frame, for MediaPipe's ``ImageProcessingOptions``; None when the contract
    keeps the whole frame."""
    if contract.resize not in ("shorter-side", "stretch") or (contract.resize == "stretch"
                                                              and contract.crop_fraction == 1.0):
        return None
    rw, rh = contract.resized_size(width, height)
    h, w = contract.target
    half_w, half_h = min(1.0, w / rw) / 2, min(1.0, h / rh) / 2
    return 0.5 - half_w, 0.5 - half_h, 0.5 + half_w, 0.5 + half_h


def check_app(bundle: str | os.PathLike, images, *, log=lambda _: None) -> AppCheck:
    """Run the app model of ``bundle`` (an ORT, LiteRT or OpenVINO bundle written with gap-pack --app) on the image
    files ``images`` with the platform's own API, against gap-run on the bundle's dynamic model."""
    from gap_deploy import runtime
    from gap_deploy.runtime.bundle import checked_bundle_file, is_bundle, read_description
    from gap_deploy.runtime.classify import image_loader
    from gap_deploy.runtime.images import softmax

    folder = Path(bundle)
    if not is_bundle(folder):
        raise UsageError(f"{folder} is not a gap-pack bundle folder (no model.json).")
    description = read_description(folder)
    app = description.get("app")
    if not isinstance(app, dict) or description.get("target") not in PLATFORMS:
        raise UsageError(f"{folder} has no app-ready ORT, LiteRT or OpenVINO model to check.",
                         hint="write the bundle with gap-pack --app (--target ort, litert or openvino); a Core ML "
                              "app model runs only on Apple's OSes.")
    target, size = description["target"], (int(app["size"][0]), int(app["size"][1]))
    name = app.get("ort_file", app["file"])  # ORT: the .ort an app ships
    path = checked_bundle_file(folder, name, description["files"].get(name))
    if target == "openvino":
        checked_bundle_file(folder, Path(app["file"]).stem + ".bin",
                             description["files"].get(Path(app["file"]).stem + ".bin"))
    atol = PROB_ATOL["fp16" if description.get("precision") == "fp16" else "fp32"]
    result = AppCheck(folder, PLATFORMS[target], size, atol=atol, resize_by=str(app.get("resize_by", "app")))
    with runtime.load(folder) as session:
        contract = session.metadata.preprocessing(size, session.spec.channels)
        load = image_loader(session, size)
        with _Platform(target, path, contract) as platform:
            for image in images:
                try:
                    reference = softmax(np.asarray(session.run(load(image)[None]), np.float64))[0]
                    same, own = platform(Path(image))
                except (runtime.GapError, OSError) as exc:
                    result.errors.append({"file": str(image), "error": str(exc).splitlines()[0]})
                    continue
                result.rows.append({"file": str(image), "gap_run_top1": int(np.argmax(reference)),
                                    "same_top1": int(np.argmax(same)),
                                    "same_max_abs_diff": float(np.max(np.abs(same - reference))),
                                    "own_top1": int(np.argmax(own)),
                                    "own_max_abs_diff": float(np.max(np.abs(own - reference)))})
                log(f"{image}: gap-run top-1 {result.rows[-1]['gap_run_top1']}, {result.platform} "
                    f"{result.rows[-1]['same_top1']}")
    return result


class _Platform:
    """The platform's classifier as ``file -> (probabilities at the model's size, with its own resize)``."""

    def __init__(self, target: str, path: Path, contract: Preprocess):
        self.target, self.path, self.contract = target, path, contract

    def __enter__(self):
        if self.target == "litert":
            from gap_deploy.runtime._lazy import require

            mp = require("mediapipe", purpose="to run the app-ready model with MediaPipe's ImageClassifier",
                         hint="pip install mediapipe")
            from mediapipe.tasks import python as tasks
            from mediapipe.tasks.python import vision

            options = vision.ImageClassifierOptions(base_options=tasks.BaseOptions(model_asset_path=str(self.path)),
                                                    max_results=-1)
            self.mp, self.vision = mp, vision
            self.classifier = vision.ImageClassifier.create_from_options(options)
        elif self.target == "ort":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        else:
            from gap_deploy.runtime.backends.openvino import CPU_CONFIG, no_telemetry

            no_telemetry()
            import openvino as ov

            self.compiled = ov.Core().compile_model(str(self.path), "CPU", CPU_CONFIG)
            self.request = self.compiled.create_infer_request()
        return self

    def __exit__(self, *exc):
        if self.target == "litert":
            self.classifier.close()  # MediaPipe's dispatcher fails at interpreter exit otherwise

    def __call__(self, image: Path) -> tuple[np.ndarray, np.ndarray]:
        sized = self.contract.sized_pixels(image, 3)
        if self.target == "litert":
            return self._mediapipe(self.mp.Image(image_format=self.mp.ImageFormat.SRGB, data=sized), None), \
                self._mediapipe_own(image)
        if self.target == "ort":  # the app resizes: its own resize is the contract's
            same = np.asarray(self.session.run(None, {"image": sized[None]})[0], np.float64)[0]
            return same, same
        frame = self._frame(image) if self.compiled.inputs[0].get_partial_shape().is_dynamic else sized
        return self._openvino(sized), self._openvino(frame)

    def _mediapipe(self, picture, region) -> np.ndarray:
        options = None
        if region is not None:
            from mediapipe.tasks.python.components.containers.rect import RectF
            from mediapipe.tasks.python.vision.core.image_processing_options import ImageProcessingOptions

            options = ImageProcessingOptions(region_of_interest=RectF(left=region[0], top=region[1], right=region[2],
                                                                      bottom=region[3]))
        result = self.classifier.classify(picture, options) if options else self.classifier.classify(picture)
        scores = np.zeros(len(result.classifications[0].categories), np.float64)
        for category in result.classifications[0].categories:
            scores[category.index] = category.score
        return scores

    def _mediapipe_own(self, image: Path) -> np.ndarray:
        frame = self._frame(image)
        picture = self.mp.Image(image_format=self.mp.ImageFormat.SRGB, data=frame)
        return self._mediapipe(picture, region_of_interest(self.contract, frame.shape[1], frame.shape[0]))

    @staticmethod
    def _frame(image: Path) -> np.ndarray:
        """The whole file decoded to 8-bit RGB at its own size, as a camera or photo library hands it to the app
        (the contract's own decoder, without its resize)."""
        return Preprocess(space="uint8").sized_pixels(image, 3)

    def _openvino(self, frame: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: frame[None]})[self.compiled.outputs[0]]
        return np.asarray(out[0], np.float64)
