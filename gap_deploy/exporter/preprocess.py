"""The preprocessing contract from where the user wrote it, and checked against it on image files.

:func:`contract_from_transform` reads a torchvision eval transform (v1 or v2: Resize, CenterCrop, ToTensor or
PILToTensor/ToImage + ConvertImageDtype/ToDtype, Normalize) into a runtime.preprocess.Preprocess, refusing any
step it cannot express exactly. :func:`timm_transform` builds a timm model's own eval transform from its
``pretrained_cfg`` (timm's resolve_data_config and create_transform). :func:`check_preprocess` runs the user's
transform and the toolkit's implementation of the contract on the same image files, compares the tensors and the
exported model's top-1 on both, and names the step that differs when they disagree. torch, torchvision and timm
are only touched here and in the user's own code.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gap_deploy.runtime.errors import ExportError, UsageError
from gap_deploy.runtime.preprocess import INTERPOLATIONS, Preprocess, _scaled

#: the steps contract_from_transform reads, by class name (torchvision v1 and v2, and timm's MaybeToTensor)
SUPPORTED = ("Resize", "CenterCrop", "ToTensor", "MaybeToTensor", "PILToTensor", "ToImage", "ConvertImageDtype",
             "ToDtype", "Normalize", "ToPureTensor")
#: the largest element difference allowed, in 1/255 of the pixel range: one level (the issue's rule), plus the float32
#: rounding of the normalized tensor (a one-level difference measures 1.00002 after (x - mean) / std)
LIMIT = 1.0 + 1e-3
#: a top-1 flip between two tensors this close is only "explained" when the image is a near tie: its two most
#: probable classes within this much probability of each other on the contract's tensor
NEAR_TIE = 0.1


class PreprocessError(ExportError):
    """The user's transform cannot be expressed, or disagrees with the contract on image files."""


def _refuse(index: int, step, why: str) -> PreprocessError:
    return PreprocessError(
        f"step {index} of the transform, {_short(step)}: {why}",
        note="the preprocessing contract expresses Resize, CenterCrop, ToTensor (or PILToTensor/ToImage with "
             "ConvertImageDtype/ToDtype) and Normalize exactly; anything else would be approximated, and is not.",
        hint="give the eval transform (no random steps), or describe the preprocessing with gap-export's flags "
             "(--resize, --crop-fraction, --interpolation, --mean, --std, ...).")


def _short(step) -> str:
    text = repr(step).replace("\n", " ")
    return text if len(text) <= 100 else text[:97] + "..."


def _interpolation(step, index: int) -> str:
    mode = getattr(step, "interpolation", None)
    value = getattr(mode, "value", mode)
    if isinstance(value, int):  # a Pillow constant (torchvision accepts them)
        value = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}.get(value, str(value))
    if value not in INTERPOLATIONS:
        raise _refuse(index, step, f"interpolation {value!r} is not one of {', '.join(INTERPOLATIONS)}.")
    return value


def _pair(size, index: int, step) -> tuple[int, ...]:
    values = (size,) if isinstance(size, int) else tuple(size)
    if not values or len(values) > 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise _refuse(index, step, f"size {size!r} is not one or two positive whole numbers.")
    return values


def contract_from_transform(transform, channels: int) -> Preprocess:
    """The contract a torchvision (or timm) eval transform describes; PreprocessError naming the step otherwise.

    The transform is read, not run: a ``Compose`` (v1 or v2) of the steps in :data:`SUPPORTED`, in that order of
    stages (PIL image -> resize and crop -> tensor -> float -> Normalize). A Resize on a PIL image (or a uint8
    tensor) is Pillow's 8-bit arithmetic (space "uint8"); on a tensor it is torch's interpolate (space "float"),
    whose antialias setting then matters (None means off for tensors, as torchvision says). On a uint8 tensor,
    torch's uint8 kernel rounds to whole levels: within one level of the float result, which the check measures."""
    steps = list(transform.transforms) if type(transform).__name__ == "Compose" else [transform]
    reading = _Reading()
    for index, step in enumerate(steps, 1):
        name = type(step).__name__
        if name not in SUPPORTED:
            raise _refuse(index, step, f"{name} cannot be expressed exactly by the preprocessing contract.")
        reading.read(name, index, step)
    if reading.stage != "float":
        raise PreprocessError("the transform does not end in a float tensor (no ToTensor, or PILToTensor/ToImage "
                              "without ConvertImageDtype/ToDtype): the model's input is float.")
    assert reading.scale is not None  # every way to a float tensor sets the scale
    return _geometry(reading.resize, reading.crop, channels, reading.scale, reading.mean, reading.std)


class _Reading:
    """What the steps read so far say: the stage the image is at (pil, uint8 for a uint8 tensor, float), the
    resize and the crop with the step that gave each, the pixel scale, mean and std."""

    def __init__(self):
        self.stage = "pil"
        self.resize: tuple | None = None
        self.crop: tuple | None = None
        self.scale: float | None = None
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None

    def read(self, name: str, index: int, step) -> None:
        if name == "Resize":
            self._resize(index, step)
        elif name == "CenterCrop":
            if self.crop is not None or self.mean is not None:
                raise _refuse(index, step, "a second CenterCrop, or one after Normalize.")
            self.crop = (_pair(step.size, index, step), index, step)
        elif name in ("ToTensor", "MaybeToTensor", "PILToTensor", "ToImage"):
            if self.stage != "pil":
                raise _refuse(index, step, "the image is already a tensor here.")
            self.stage, self.scale = ("float", 1.0) if name in ("ToTensor", "MaybeToTensor") else ("uint8", None)
        elif name in ("ConvertImageDtype", "ToDtype"):
            self._to_float(name, index, step)
        elif name == "Normalize":
            if self.stage != "float":
                raise _refuse(index, step, "Normalize before the image is a float tensor.")
            self.mean, self.std = tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)

    def _resize(self, index: int, step) -> None:
        if self.resize is not None or self.crop is not None or self.mean is not None:
            raise _refuse(index, step, "a Resize after another Resize, a CenterCrop or Normalize.")
        if getattr(step, "max_size", None) is not None:
            raise _refuse(index, step, "max_size (a cap on the longer side) is not part of the contract.")
        interpolation = _interpolation(step, index)
        antialias = getattr(step, "antialias", True)
        if self.stage == "pil":  # Pillow: always antialiased (torchvision warns and ignores antialias=False)
            space, antialias = "uint8", True
        elif interpolation == "nearest":  # picking pixels: the same on uint8 and float
            space, antialias = "float", False
        else:  # a tensor: torch's interpolate (on a uint8 tensor its uint8 kernel, within a level; measured)
            space, antialias = "float", bool(antialias)  # torchvision: None is False on tensors
        self.resize = (_pair(step.size, index, step), interpolation, bool(antialias), space, index, step)

    def _to_float(self, name: str, index: int, step) -> None:
        dtype = getattr(step, "dtype", None)
        if isinstance(dtype, dict):  # v2: {tv_tensors.Image: torch.float32, "others": None}
            dtype = next((v for v in dtype.values() if v is not None), None)
        if not getattr(dtype, "is_floating_point", False):
            raise _refuse(index, step, f"converts to {dtype}, not a float type.")
        if self.stage == "uint8":
            self.stage = "float"
            self.scale = 1.0 if (name == "ConvertImageDtype" or getattr(step, "scale", False)) else 255.0
        elif self.stage != "float":
            raise _refuse(index, step, "converts a PIL image; put ToTensor, PILToTensor or ToImage first.")


def _geometry(resize, crop, channels: int, scale: float, mean, std) -> Preprocess:
    if resize is None:
        if crop is not None:
            raise _refuse(crop[1], crop[2], "a CenterCrop of the image at its own size: its share of each image "
                                             "differs; Resize first.")
        return Preprocess(pixel_scale=scale, mean=mean or (0.0,) * channels, std=std or (1.0,) * channels)
    size, interpolation, antialias, space, index, step = resize
    common = {"interpolation": interpolation, "antialias": antialias, "space": space, "pixel_scale": scale,
              "mean": mean or (0.0,) * channels, "std": std or (1.0,) * channels}
    if crop is None:
        if len(size) == 1:
            raise _refuse(index, step, f"Resize({size[0]}) without a CenterCrop keeps each image's aspect, so the "
                                       "model's input size differs per image; add the CenterCrop you evaluate "
                                       "with.")
        return Preprocess(resize="stretch", size=size, **common)
    out = crop[0] if len(crop[0]) == 2 else crop[0] * 2
    if len(size) == 1:
        fraction = min(out) / size[0]
        if _scaled(min(out), fraction) != size[0] or fraction > 1:
            raise _refuse(crop[1], crop[2], f"a {out[0]}x{out[1]} crop of a shorter side of {size[0]}: the crop is "
                                            "larger than the resized image.")
        return Preprocess(resize="shorter-side", size=out, crop_fraction=fraction, **common)
    fraction = out[0] / size[0]
    if fraction > 1 or _scaled(out[0], fraction) != size[0] or _scaled(out[1], fraction) != size[1]:
        raise _refuse(crop[1], crop[2], f"a {out[0]}x{out[1]} crop of a {size[0]}x{size[1]} resize keeps different "
                                        "shares of the height and the width; the contract keeps one crop fraction.")
    return Preprocess(resize="stretch", size=out, crop_fraction=fraction, **common)


def load_transform(spec: str, what: str = "--preprocess"):
    """The transform ``FILE.py:fn`` or ``module:fn`` returns (fn is called with no arguments; a transform object
    named directly is taken as it is)."""
    from gap_deploy.exporter.checkpoint import import_attribute

    found = import_attribute(spec, what, "e.g. eval_transforms.py:make_transform, a function returning your "
                                         "torchvision eval transform.", error=PreprocessError)
    import inspect

    if not (inspect.isfunction(found) or inspect.ismethod(found)):  # the transform object itself
        return found
    try:
        return found()
    except Exception as exc:
        from gap_deploy.runtime.errors import first_line

        raise PreprocessError(f"{what} {spec}: calling it failed: {first_line(exc)}",
                              hint="name a function that takes no arguments and returns the transform.") from None


def timm_transform(module):
    """A timm model's own eval transform: timm.data.create_transform(**resolve_data_config(model=module))."""
    from gap_deploy.runtime._lazy import require

    require("timm", purpose="for --preprocess timm")
    # timm is the user's own package (not a dependency): type checkers here need not find it
    from timm.data import create_transform, resolve_data_config  # pyright: ignore[reportMissingImports]

    if getattr(module, "pretrained_cfg", None) is None:
        raise PreprocessError("--preprocess timm: the model has no pretrained_cfg (it was not built by timm).",
                              hint="build it with --arch timm:create_model-style callables, or give --preprocess "
                                   "FILE.py:fn.")
    config = resolve_data_config({}, model=module)
    if config.get("crop_mode", "center") != "center":
        raise PreprocessError(f"--preprocess timm: crop_mode {config['crop_mode']!r} is not a centre crop.")
    return create_transform(**config, is_training=False)


# ----------------------------------------------------------------------------------------------- the check
@dataclass
class ImageCheck:
    file: str
    size: tuple[int, int]
    #: the largest |difference| between the two tensors, in 1/255 of the pixel range (1.0 is the limit)
    levels: float
    top1_contract: int
    top1_transform: int
    #: top-1 probability minus top-2 on the contract's tensor
    margin: float
    fast_levels: float | None = None
    fast_top1: int | None = None


@dataclass
class PreprocessCheck:
    contract: Preprocess
    transform: str
    rows: list[ImageCheck] = field(default_factory=list)
    finding: str | None = None

    @property
    def worst_levels(self) -> float:
        return max((r.levels for r in self.rows), default=0.0)

    @property
    def agreement(self) -> float:
        return float(np.mean([r.top1_contract == r.top1_transform for r in self.rows])) if self.rows else math.nan

    @property
    def fast_agreement(self) -> float | None:
        fast = [r for r in self.rows if r.fast_top1 is not None]
        return float(np.mean([r.fast_top1 == r.top1_transform for r in fast])) if fast else None

    @property
    def unexplained_flips(self) -> list[ImageCheck]:
        return [r for r in self.rows if r.top1_contract != r.top1_transform and r.margin >= NEAR_TIE]

    @property
    def passed(self) -> bool:
        return self.worst_levels <= LIMIT and not self.unexplained_flips

    def to_dict(self) -> dict:
        return {"contract": {step: text for step, text in self.contract.steps()},
                "contract_json": self.contract.to_json(), "mean": self.contract.mean, "std": self.contract.std,
                "transform": self.transform, "passed": self.passed, "finding": self.finding,
                "max_difference_levels": self.worst_levels, "top1_agreement": self.agreement,
                "fast_decode": {"max_difference_levels": max((r.fast_levels for r in self.rows
                                                              if r.fast_levels is not None), default=None),
                                "top1_agreement": self.fast_agreement},
                "images": [r.__dict__ | {"size": list(r.size)} for r in self.rows]}

    def format(self) -> str:
        lines = ["Preprocessing contract:"] + [f"  {step:>9}  {text}" for step, text in self.contract.steps()]
        lines.append(f"Checked against {self.transform} on {len(self.rows)} image file(s): largest tensor difference "
                     f"{self.worst_levels:.3g}/255 of the pixel range (limit 1), top-1 agreement "
                     f"{self.agreement:.0%}")
        if self.fast_agreement is not None:
            fast = max(r.fast_levels for r in self.rows if r.fast_levels is not None)
            lines.append(f"  with --decode fast: largest difference {fast:.3g}/255, top-1 agreement "
                         f"{self.fast_agreement:.0%}")
        return "\n".join(lines)


def _as_array(result, spec: str) -> np.ndarray:
    if hasattr(result, "detach"):
        result = result.detach().cpu().numpy()
    if not isinstance(result, np.ndarray) or result.ndim != 3:
        raise PreprocessError(f"the transform {spec} returned {type(result).__name__}"
                              f"{' of shape ' + str(result.shape) if hasattr(result, 'shape') else ''}, not a "
                              "(channels, height, width) tensor.")
    return np.asarray(result, dtype=np.float32)


def _levels(contract: Preprocess, ours: np.ndarray, theirs: np.ndarray) -> float:
    """The largest per-element difference in 1/255 of the pixel range: |d| * std / pixel_scale * 255."""
    if ours.shape != theirs.shape:
        return math.inf
    std = np.asarray(contract.std if contract.std else (1.0,), dtype=np.float64).reshape(-1, 1, 1)
    return float(np.max(np.abs(ours.astype(np.float64) - theirs) * std) / contract.pixel_scale * 255.0)


def check_preprocess(contract: Preprocess, transform, spec: str, files: Sequence[Path], channels: int,
                     infer: Callable[[np.ndarray], np.ndarray], *, fast: bool = True) -> PreprocessCheck:
    """Run ``transform`` (the user's) and ``contract`` (the toolkit's implementation) on each file, compare the
    tensors and the model's top-1 on both (``infer``: one CHW tensor -> its logits). Both start from the same decoded
    8-bit
    image (runtime.images' decoder: ``Image.open(f).convert("RGB")`` for 8-bit files, deeper ones scaled to 8
    bits by their depth). When they disagree, ``finding`` names the step (:func:`name_the_step`)."""
    from gap_deploy.runtime.images import decoded, open_regular
    from gap_deploy.runtime.images import softmax as softmax_fn

    report = PreprocessCheck(contract, spec)
    failing, agreeing = [], []
    for path in files:
        with open_regular(path) as handle:
            image, size = decoded(handle, channels, str(path), "uint8")  # a PIL image at the file's own size
        ours = contract.from_image(image)
        theirs = _as_array(transform(image.copy()), spec)
        levels = _levels(contract, ours, theirs)
        if math.isinf(levels):
            report.rows.append(ImageCheck(str(path), size, levels, -1, -1, 1.0))
            failing.append((image, theirs))
            continue
        logits = np.stack([infer(ours), infer(theirs)])
        probs = softmax_fn(logits.astype(np.float64))
        top = np.sort(probs[0])[::-1]
        row = ImageCheck(str(path), size, levels, int(logits[0].argmax()), int(logits[1].argmax()),
                         float(top[0] - (top[1] if len(top) > 1 else 0.0)))
        if fast:
            quick = contract.load(path, channels, decode="fast")
            row.fast_levels = _levels(contract, quick, theirs)
            row.fast_top1 = int(infer(quick).argmax()) if quick.shape == theirs.shape else -1
        report.rows.append(row)
        if levels > LIMIT or (row.top1_contract != row.top1_transform and row.margin >= NEAR_TIE):
            failing.append((image, theirs))
        else:
            agreeing.append((image, theirs))
    if failing:  # a candidate must agree on every image: the failing ones first, so most candidates fail fast
        report.finding = name_the_step(contract, failing + agreeing)
    return report


def name_the_step(contract: Preprocess, pairs: list) -> str:
    """Which single step of the contract, changed, makes it agree with the transform on every pair (image,
    transform's tensor): tried in order interpolation, antialias, resize space, channel order, pixel scale,
    crop fraction, and mean/std (estimated from the tensors)."""
    shapes = {theirs.shape for _, theirs in pairs}
    ours_shape = contract.from_image(pairs[0][0]).shape
    if shapes != {ours_shape}:
        got = next(iter(shapes))
        return (f"output size: the transform makes {'x'.join(map(str, got))} tensors, the contract "
                f"{'x'.join(map(str, ours_shape))} (the CenterCrop or Resize size, or --imgsz)")
    best, best_levels = None, LIMIT  # the closest single change within the limit; a near-exact one ends the search
    for candidate, says in _candidates(contract, pairs[:3]):
        try:
            candidate.validate()
        except UsageError:
            continue
        worst = 0.0
        for image, theirs in pairs:  # stops at the first image the candidate cannot beat the best on
            worst = max(worst, _levels(candidate, candidate.from_image(image), theirs))
            if worst > best_levels:
                break
        if worst <= 0.05:
            return says
        if worst <= best_levels:
            best, best_levels = says, worst
    if best is not None:
        return best
    return ("no single step explains it: compare the transform's steps with the contract printed above, one by "
            "one")


def _candidates(contract: Preprocess, pairs) -> Iterator[tuple[Preprocess, str]]:
    c = contract
    for other in INTERPOLATIONS:
        if other != c.interpolation and c.resize != "none":
            yield replace(c, interpolation=other), (f"Resize interpolation: the transform's is {other}, the "
                                                    f"contract's {c.interpolation}")
    if c.resize != "none" and c.interpolation != "nearest":
        def aa(flag):
            return "with antialias" if flag else "without antialias"
        if c.space == "float":
            yield replace(c, antialias=not c.antialias), (f"Resize antialias: the transform resizes "
                                                          f"{aa(not c.antialias)}, the contract {aa(c.antialias)}")
        else:
            yield replace(c, space="float", antialias=False), ("Resize antialias: the transform resizes without "
                                                               "antialias (on a float tensor), the contract with it")
        where = {"uint8": "8-bit images (a PIL image, or a uint8 tensor)", "float": "float tensors"}
        other = "float" if c.space == "uint8" else "uint8"
        yield replace(c, space=other), (f"Resize arithmetic: the transform resizes {where[other]}, the contract "
                                        f"{where[c.space]} (ToTensor/ToDtype before or after Resize)")
    if len(c.mean or ()) == 3 or c.channel_order == "BGR":
        swapped = "RGB" if c.channel_order == "BGR" else "BGR"
        yield replace(c, channel_order=swapped), (f"channel order: the transform gives {swapped}, the contract "
                                                  f"{c.channel_order}")
    other_scale = 255.0 if c.pixel_scale == 1.0 else 1.0
    yield replace(c, pixel_scale=other_scale), (
        f"pixel scale: the transform's pixels run 0-{other_scale:g} before Normalize, the contract's "
        f"0-{c.pixel_scale:g} (a ToTensor or ToDtype(scale=True) missing or added)")
    if c.resize in ("shorter-side", "stretch"):
        height, width = c.target
        low = min(height, width)
        now = _scaled(low, c.crop_fraction)
        for target in sorted(range(low, int(low * 2.5) + 1), key=lambda t: abs(t - now)):
            if target != now:
                fraction = low / target
                yield replace(c, crop_fraction=fraction), (
                    f"Resize/CenterCrop: the transform resizes to {target} before the {height}x{width} crop "
                    f"(crop fraction {fraction:.4g}), the contract to {now} ({c.crop_fraction:.4g})")
    estimate = _fit_normalization(c, pairs)
    if estimate is not None:
        mean, std = estimate
        yield replace(c, mean=mean, std=std), (
            f"Normalize: the transform's mean is {_nums(mean)} and std {_nums(std)}, the contract's "
            f"{_nums(c.mean)} and {_nums(c.std)}")


def _nums(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")" if values else "none"


def _fit_normalization(contract: Preprocess, pairs):
    """Per channel, the mean and std that map the contract's unnormalized pixels onto the transform's tensor
    (least squares), or None when no affine map fits."""
    bare = contract.normalized_with(None, None)
    xs, ys = [], []
    for image, theirs in pairs:
        x = bare.from_image(image)
        if x.shape != theirs.shape:
            return None
        xs.append(x.reshape(x.shape[0], -1))
        ys.append(theirs.reshape(theirs.shape[0], -1))
    x, y = np.concatenate(xs, axis=1).astype(np.float64), np.concatenate(ys, axis=1).astype(np.float64)
    mean, std = [], []
    for xc, yc in zip(x, y):
        if np.ptp(xc) == 0:
            return None
        slope, intercept = np.polyfit(xc, yc, 1)
        if slope <= 0:
            return None
        std.append(1.0 / slope)
        mean.append(-intercept / slope)
    return tuple(mean), tuple(std)


# ------------------------------------------------------------------------------------------ sample images
#: the images gap-export draws when no --images folder is given: (name, width, height, mode, format)
SAMPLES = (("landscape.jpg", 500, 375, "RGB", "JPEG"), ("portrait.jpg", 375, 500, "RGB", "JPEG"),
           ("wide.png", 1280, 720, "RGB", "PNG"), ("tiny.png", 33, 97, "RGB", "PNG"),
           ("gray.png", 320, 240, "L", "PNG"), ("alpha.png", 256, 320, "RGBA", "PNG"),
           ("deep16.png", 300, 224, "I;16", "PNG"))


def natural_image(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 with natural images' statistics: a 1/f amplitude spectrum (smooth regions, soft and
    sharp edges at every scale) with correlated colour channels, plus a few hard-edged shapes."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    planes = []
    shared = rng.standard_normal((height, fx.shape[1])) + 1j * rng.standard_normal((height, fx.shape[1]))
    for _ in range(3):
        own = rng.standard_normal((height, fx.shape[1])) + 1j * rng.standard_normal((height, fx.shape[1]))
        spectrum = (0.8 * shared + 0.4 * own) / radius
        spectrum[0, 0] = 0
        planes.append(np.fft.irfft2(spectrum, s=(height, width)))
    pixels = np.stack(planes, axis=2)
    low, high = np.percentile(pixels, [1, 99])
    pixels = (pixels - low) / max(high - low, 1e-9)
    for _ in range(4):  # hard edges: rectangles of flat colour
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        pixels[y0:y0 + rng.integers(1, max(2, height // 3)), x0:x0 + rng.integers(1, max(2, width // 3))] = \
            rng.random(3)
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def draw_samples(folder: Path, seed: int = 0) -> list[Path]:
    """Write :data:`SAMPLES` into ``folder``; their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for name, width, height, mode, fmt in SAMPLES:
        rgb = natural_image(width, height, rng)
        if mode == "RGB":
            image = Image.fromarray(rgb)
        elif mode == "L":
            image = Image.fromarray(rgb).convert("L")
        elif mode == "RGBA":
            alpha = np.linspace(64, 255, width, dtype=np.float64)[None, :].repeat(height, 0).astype(np.uint8)
            image = Image.fromarray(np.concatenate([rgb, alpha[:, :, None]], axis=2))  # mode RGBA
        else:  # 16-bit grayscale
            gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.int64) * 257
            gray += rng.integers(-128, 129, gray.shape)
            image = Image.fromarray(np.clip(gray, 0, 65535).astype(np.uint16))  # mode I;16
        path = folder / name
        image.save(path, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        paths.append(path)
    return paths


class SampleImages:
    """The check's image files: ``--images`` (at most ``limit``, sorted) or :data:`SAMPLES` drawn in a temporary
    folder removed afterwards. A context manager."""

    def __init__(self, folder: str | Path | None, limit: int = 32):
        self.folder, self.limit, self._tmp = folder, limit, None

    def __enter__(self) -> list[Path]:
        from gap_deploy.runtime.images import IMAGE_SUFFIXES, collect_images

        if self.folder is not None:
            files = collect_images([self.folder])[:self.limit]
            if not files:
                raise UsageError(f"--images {self.folder} holds no image files (looked for "
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))}).")
            return files
        self._tmp = tempfile.TemporaryDirectory(prefix="gap-preprocess-")
        return draw_samples(Path(self._tmp.name))

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
