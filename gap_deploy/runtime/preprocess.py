"""The preprocessing contract: how an image file becomes the model's input tensor, and the one implementation of it.

Every artifact carries a :class:`Preprocess` (ONNX metadata key ``gap.preprocess``, copied into plan manifests,
bundles' model.json and Triton's config), and every place that turns image files into tensors (gap-run, gap-eval,
gap-tune, gap-debug --images, INT8 calibration, Triton's client, the Ray workers) calls :meth:`Preprocess.load`
here. The exporter fills the contract in from the user's own torchvision or timm eval transform and checks it
against that transform on image files before anything is written (exporter.preprocess).

The steps, in order:

1. **decode** the file with Pillow to 8-bit L/RGB/RGBA (1, 3 or 4 channels; 16-bit and float images are scaled
   by their depth, see runtime.images) -- what ``Image.open(f).convert("RGB")`` gives for 8-bit files;
2. **resize** by a policy: ``none`` (the image's own size), ``stretch`` (to the size, aspect not kept),
   ``shorter-side`` (the shorter side to ``min(size) / crop_fraction``, aspect kept, as torchvision's
   ``Resize(int)``), ``letterbox`` (fit inside the size, aspect kept, padded with ``pad_value``);
   ``stretch`` and ``shorter-side`` then **centre-crop** to the size (torchvision's ``CenterCrop``).
   The arithmetic is that of the space the user's transform resized in: ``uint8`` is Pillow on the 8-bit image
   (torchvision's Resize on a PIL image; Pillow always antialiases), ``float`` is
   ``torch.nn.functional.interpolate`` on [0, 1] floats (torchvision's Resize on a float tensor), reproduced
   here in NumPy with its index and weight rules, with or without antialias;
3. **scale** pixels to [0, ``pixel_scale``] (1: ``ToTensor``; 255: a float conversion without scaling);
4. **order** the channels (``RGB`` or ``BGR``), then **normalize** ``(x - mean) / std`` per model channel.

``decode="fast"`` trades exactness for speed where the contract allows it: a JPEG is decoded at 1/2, 1/4 or 1/8
scale by libjpeg (Pillow's draft mode, DCT-domain) when the resize target is at most half the source, and the
resize runs on 8-bit pixels with Pillow's reducing step. Its cost in top-1 is measured by ``gap-eval --decode
both`` and by gap-export's preprocessing check, never assumed.
"""

from __future__ import annotations

import functools
import json
import math
import operator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gap_deploy.runtime.errors import MetadataError, UsageError

if TYPE_CHECKING:
    from PIL import Image

POLICIES = ("none", "stretch", "shorter-side", "letterbox")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
SPACES = ("uint8", "float")
CHANNEL_ORDERS = ("RGB", "BGR")
DECODES = ("exact", "fast")
ORIENTATIONS = ("exif", "ignore")
#: the JSON keys of gap.preprocess (mean and std live in gap.mean / gap.std, read by every runtime)
_FIELDS = ("resize", "size", "crop_fraction", "interpolation", "antialias", "space", "channel_order",
           "pixel_scale", "pad_value", "orientation", "buckets")
#: the most sizes a contract routes images between (gap-tune --buckets)
MAX_BUCKETS = 8


@dataclass(frozen=True)
class Preprocess:
    resize: str = "none"
    #: (H, W) of the model input; None only with resize "none"
    size: tuple[int, int] | None = None
    #: stretch / shorter-side: the centre crop keeps this fraction of the resized image (1: no crop)
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"
    antialias: bool = True
    #: where the resize runs: "uint8" (Pillow, 8-bit) or "float" (torch's interpolate arithmetic)
    space: str = "float"
    channel_order: str = "RGB"
    #: what a full-scale pixel becomes before normalization: 1.0 ([0, 1], ToTensor) or 255.0
    pixel_scale: float = 1.0
    #: letterbox: the border's value on the 0-255 scale
    pad_value: int = 0
    #: "exif": turn each image as its EXIF Orientation tag says (as a photo viewer shows it); "ignore": the
    #: stored pixels. A contract written before this field existed reads as "exif".
    orientation: str = "exif"
    #: (H, W) sizes each image is routed between by its own size (runtime.buckets' rule: the smallest at least its
    #: effective side, else the largest), in place of ``size``; None: every image at ``size``. Written only when
    #: set, so a contract without it reads as before.
    buckets: tuple[tuple[int, int], ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    # ----------------------------------------------------------------------------------------- storage
    def to_json(self) -> str:
        values = {k: v for k, v in asdict(self).items() if k in _FIELDS}
        values["size"] = list(self.size) if self.size else None
        if self.buckets:
            values["buckets"] = [list(b) for b in self.buckets]
        else:
            values.pop("buckets")
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, mean=None, std=None, bad=None) -> Preprocess:
        """Read what :meth:`to_json` wrote; ``bad(why)`` makes the error (default: a MetadataError)."""
        bad = bad or (lambda why: MetadataError(f"the model's preprocessing contract is invalid: {why}.",
                                                hint="re-export the model with gap-export."))
        try:
            values = json.loads(text)
        except ValueError:
            raise bad("not valid JSON") from None
        if not isinstance(values, dict):
            raise bad("not a JSON object")
        unknown = sorted(set(values) - set(_FIELDS))
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}")
        size = values.get("size")
        if size is not None:
            if not (isinstance(size, list) and len(size) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
                raise bad(f"size {size!r} is not [height, width] in whole pixels")
            values["size"] = tuple(size)
        buckets = values.get("buckets")
        if buckets is not None:
            if not (isinstance(buckets, list) and all(
                    isinstance(b, list) and len(b) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in b) for b in buckets)):
                raise bad(f"buckets {buckets!r} is not a list of [height, width] in whole pixels")
            values["buckets"] = tuple(tuple(b) for b in buckets)
        for name, kind in (("crop_fraction", (int, float)), ("pixel_scale", (int, float)), ("pad_value", int),
                           ("antialias", bool)):
            if name in values and (not isinstance(values[name], kind)
                                   or (kind is not bool and isinstance(values[name], bool))):
                raise bad(f"{name} {values[name]!r} has the wrong type")
        contract = cls(**values, mean=mean, std=std)
        contract.validate(bad=bad)
        return contract

    def validate(self, channels: int | None = None, *, bad=None) -> Preprocess:
        """Every field within its range and the fields consistent with each other; returns self."""
        bad = bad or (lambda why: UsageError(f"invalid preprocessing: {why}."))

        def choice(name, value, allowed):
            if value not in allowed:
                raise bad(f"{name} {value!r} is not one of {', '.join(allowed)}")

        choice("resize", self.resize, POLICIES)
        choice("interpolation", self.interpolation, INTERPOLATIONS)
        choice("space", self.space, SPACES)
        choice("channel_order", self.channel_order, CHANNEL_ORDERS)
        choice("orientation", self.orientation, ORIENTATIONS)
        if self.resize == "none":
            if self.size is not None:
                raise bad("resize 'none' keeps each image's own size, so it takes no size")
        elif self.size is None or len(self.size) != 2 or min(self.size) < 1 or max(self.size) > 16384:
            raise bad(f"resize {self.resize!r} needs a size of 1 to 16384 pixels per side, not {self.size!r}")
        if self.buckets is not None:
            sides = [min(b) for b in self.buckets]
            if not 1 <= len(self.buckets) <= MAX_BUCKETS or len(set(sides)) != len(sides):
                raise bad(f"buckets {self.buckets!r}: 1 to {MAX_BUCKETS} sizes with distinct sides")
            if any(min(b) < 1 or max(b) > 16384 for b in self.buckets):
                raise bad(f"buckets {self.buckets!r}: every side 1 to 16384 pixels")
        self._check_numbers(channels, bad)
        return self

    def _check_numbers(self, channels: int | None, bad) -> None:
        """The numeric fields (crop, scale, padding, mean and std), and the pairings the resizers cannot do."""
        if not (isinstance(self.crop_fraction, (int, float)) and math.isfinite(self.crop_fraction)
                and 0.05 <= self.crop_fraction <= 1.0):
            raise bad(f"crop_fraction {self.crop_fraction!r} is outside 0.05 to 1 (the share of the resized image "
                      "the centre crop keeps)")
        if self.crop_fraction != 1.0 and self.resize not in ("stretch", "shorter-side"):
            raise bad(f"crop_fraction applies to the stretch and shorter-side policies, not {self.resize!r}")
        if self.pixel_scale not in (1.0, 255.0):
            raise bad(f"pixel_scale {self.pixel_scale!r} is not 1 (pixels in [0, 1]) or 255 (pixels in [0, 255])")
        if not 0 <= self.pad_value <= 255:
            raise bad(f"pad_value {self.pad_value!r} is outside 0 to 255")
        if self.space == "float" and self.interpolation == "lanczos":
            raise bad("lanczos has no float arithmetic (torch's interpolate has none): it needs space 'uint8'")
        if self.space == "uint8" and not self.antialias and self.interpolation != "nearest":
            raise bad("Pillow (space 'uint8') always antialiases: antialias false needs space 'float'")
        if channels is not None and self.channel_order == "BGR" and channels != 3:
            raise bad(f"channel order BGR needs 3 channels, the model takes {channels}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and channels is not None and len(values) not in (1, channels):
                raise bad(f"{len(values)} {name} values for {channels} channels")
        if self.std is not None and any(not v > 0 for v in self.std):
            raise bad("every std must be > 0")

    # ---------------------------------------------------------------------------------------- overrides
    def sized(self, size: tuple[int, int] | None) -> Preprocess:
        """``--imgsz``: the same contract at another input size (resize "none" becomes a stretch to it); a size
        given outright replaces the contract's buckets."""
        if size is None:
            return self
        return replace(self, resize="stretch" if self.resize == "none" else self.resize, size=tuple(size),
                       buckets=None)

    def with_buckets(self, sizes) -> Preprocess:
        """``gap-run --buckets``: each image routed between ``sizes`` by its own size (validated here)."""
        return replace(self, buckets=tuple(tuple(int(v) for v in s) for s in sizes) or None).validate()

    def routed(self, width: int, height: int) -> Preprocess:
        """The contract an image of this (EXIF-turned) size runs under: the bucket runtime.buckets routes it to,
        or this contract when it has no buckets."""
        if not self.buckets:
            return self
        from gap_deploy.runtime.buckets import effective_sides, route

        ordered = sorted(self.buckets, key=lambda b: (min(b), b))
        at = int(route(effective_sides(np.array([[height, width]]), self), [min(b) for b in ordered])[0])
        return self.sized(ordered[at])

    def _routed_for(self, source, name: str) -> Preprocess:
        """:meth:`routed` for an open, seekable binary file, from its header (the file is left at its start)."""
        from gap_deploy.runtime.images import header_size_of

        start = source.tell()
        width, height = header_size_of(source, name, orientation=self.orientation)
        source.seek(start)
        return self.routed(width, height)

    def normalized_with(self, mean, std) -> Preprocess:
        return replace(self, mean=tuple(mean) if mean is not None else None,
                       std=tuple(std) if std is not None else None)

    # ---------------------------------------------------------------------------------------- geometry
    @property
    def target(self) -> tuple[int, int]:
        """(H, W) the resize aims at: every policy but "none" has one (:meth:`validate` holds it to that)."""
        if self.size is None:
            raise UsageError(f"resize {self.resize!r} has no size to aim at.")
        return self.size[0], self.size[1]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) of an image of ``width`` x ``height`` after the resize step, before the crop or padding."""
        if self.resize == "none":
            return width, height
        out_h, out_w = self.target
        if self.resize == "stretch":
            return _scaled(out_w, self.crop_fraction), _scaled(out_h, self.crop_fraction)
        if self.resize == "shorter-side":  # torchvision's _compute_resized_output_size for one size
            target = _scaled(min(out_h, out_w), self.crop_fraction)
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = target, int(target * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        scale = min(out_h / height, out_w / width)  # letterbox
        return max(1, min(out_w, round(width * scale))), max(1, min(out_h, round(height * scale)))

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) of the centre crop of a resized ``width`` x ``height`` image, as
        torchvision's CenterCrop rounds it (Python's round); None when nothing is cropped or the crop is larger
        than the image on a side (then :meth:`_centre_crop` pads first, as CenterCrop does)."""
        if self.resize not in ("stretch", "shorter-side"):
            return None
        out_h, out_w = self.target
        if (width, height) == (out_w, out_h) or width < out_w or height < out_h:
            return None
        top, left = int(round((height - out_h) / 2.0)), int(round((width - out_w) / 2.0))
        return left, top, left + out_w, top + out_h

    def _centre_crop(self, pixels: np.ndarray) -> np.ndarray:
        """torchvision's CenterCrop on (H, W, C): zero padding where the crop is larger (left/top get the smaller
        half), then the crop at the rounded offsets."""
        if self.resize not in ("stretch", "shorter-side"):
            return pixels
        out_h, out_w = self.target
        height, width = pixels.shape[:2]
        if out_w > width or out_h > height:
            pad_w, pad_h = max(out_w - width, 0), max(out_h - height, 0)
            pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        box = self.crop_box(pixels.shape[1], pixels.shape[0])
        if box is None:
            return pixels
        left, top, right, bottom = box
        return pixels[top:bottom, left:right]

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(H, W) of the tensor made from an image of ``width`` x ``height``."""
        if self.resize == "none":
            return height, width
        return self.target

    # ------------------------------------------------------------------------------------------ apply
    def load(self, path: str | Path, channels: int = 3, *, decode: str = "exact") -> np.ndarray:
        """Image file -> normalized (channels, H, W) float32, as this contract says."""
        from gap_deploy.runtime.images import open_regular

        with open_regular(path) as handle:
            return self.decode(handle, channels, decode=decode, name=str(path))

    def decode(self, source, channels: int = 3, *, decode: str = "exact", name: str) -> np.ndarray:
        """:meth:`load` for an open binary file (bytes Ray read from any filesystem)."""
        if self.buckets:
            return self._routed_for(source, name).decode(source, channels, decode=decode, name=name)
        return self.finish(self.read(source, channels, decode=decode, name=name), decode=decode)

    def pixels(self, source, channels: int = 3, *, decode: str = "exact", name: str) -> np.ndarray:
        """Steps 1-3 (decode, resize and crop, scale, channel order): (channels, H, W) float32, not normalized."""
        if self.buckets:
            return self._routed_for(source, name).pixels(source, channels, decode=decode, name=name)
        return self.finish(self.read(source, channels, decode=decode, name=name), decode=decode, normalize=False)

    def read(self, source, channels: int = 3, *, decode: str = "exact", name: str) -> Decoded:
        """Step 1 alone: the decoded image, before any resize. gap-tune holds these and finishes each at every
        size it measures (the contract's space must be the same at each)."""
        from gap_deploy.runtime.images import decoded

        if decode not in DECODES:
            raise UsageError(f"decode {decode!r} is not one of {', '.join(DECODES)}.")
        image, full_size = decoded(source, channels, name, self.space_for(decode), self._draft(decode),
                                   self.output_size, self.orientation)
        return Decoded(image, full_size)

    def finish(self, image: Decoded, *, decode: str = "exact", normalize: bool = True) -> np.ndarray:
        """Steps 2-4 on what :meth:`read` returned: (channels, H, W) float32."""
        chw = self._finish(self._geometry(image.pixels, image.size, decode))
        return self.normalize(chw) if normalize else chw

    def from_image(self, image, *, decode: str = "exact") -> np.ndarray:
        """Steps 2-4 for an already decoded 8-bit PIL image (what gap-export's check hands the user's transform)."""
        from gap_deploy.runtime.images import as_float

        source = image if self.space_for(decode) == "uint8" else as_float(image)
        return self.finish(Decoded(source, image.size), decode=decode)

    def sized_pixels(self, path: str | Path, channels: int = 3) -> np.ndarray:
        """Steps 1-2 (decode, resize and crop or pad) of an image file: (H, W, C) uint8 at the model's size, what
        an app hands a platform's classifier whose model does steps 3-4 itself (float-space resizes are rounded
        to 8 bits, as a camera frame would be)."""
        from gap_deploy.runtime.images import decoded, open_regular

        with open_regular(path) as handle:
            image, size = decoded(handle, channels, str(path), self.space, None, self.output_size, self.orientation)
        hwc = self._geometry(image, size, "exact")
        if hwc.dtype != np.uint8:
            hwc = np.clip(np.rint(hwc * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(hwc)

    def from_pixels(self, hwc: np.ndarray) -> np.ndarray:
        """Steps 3-4 (scale, channel order, normalize) alone on (H, W, C) uint8 pixels that are already the
        model's size: what an app-ready model (exporter.pack_app) does inside its graph, so its reference."""
        if hwc.dtype != np.uint8 or hwc.ndim != 3:
            raise UsageError(f"from_pixels takes (H, W, C) uint8 pixels, not {hwc.dtype} {hwc.shape}.")
        return self.normalize(self._finish(hwc))

    def affine(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), one per model channel: steps 3-4 are ``x = pixel * a + b`` on 0-255 pixels taken in this
        contract's channel order (float32 arithmetic rounds differently from :meth:`from_pixels` only in the
        last bits)."""
        mean = np.broadcast_to(np.asarray(self.mean if self.mean is not None else (0.0,), np.float64), (channels,))
        std = np.broadcast_to(np.asarray(self.std if self.std is not None else (1.0,), np.float64), (channels,))
        scale = self.pixel_scale / 255.0
        return (scale / std).astype(np.float32), (-mean / std).astype(np.float32)

    def space_for(self, decode: str) -> str:
        return "uint8" if decode == "fast" and self._fast_allowed() else self.space

    def _fast_allowed(self) -> bool:
        # Pillow always antialiases: a contract without antialias keeps its exact arithmetic
        return self.resize != "none" and (self.antialias or self.interpolation == "nearest")

    def _draft(self, decode: str):
        """For fast decoding: the smallest (W, H) a JPEG may be decoded at for an image of a given size."""
        if decode != "fast" or not self._fast_allowed():
            return None

        def at_least(width: int, height: int) -> tuple[int, int] | None:
            w, h = self.resized_size(width, height)
            return (2 * w, 2 * h) if 2 * w <= width and 2 * h <= height else None
        return at_least

    def _geometry(self, image, full_size: tuple[int, int], decode: str) -> np.ndarray:
        """Resize, crop or pad: (H, W, C) uint8 or float32. ``full_size`` is the file's own (W, H): the
        resize target is computed from it, also when the decoder already scaled the image down (draft)."""
        width, height = full_size
        target = self.resized_size(width, height)
        if isinstance(image, np.ndarray):  # float space: only the rows and columns the crop keeps
            box = self.crop_box(*target)
            pixels = resize_float(image, target, self.interpolation, self.antialias, box=box)
            if box is None:
                pixels = self._centre_crop(pixels)
            return self._pad(pixels, target, 1 / 255) if self.resize == "letterbox" else pixels
        if image.size != target:
            gap = 2.0 if decode == "fast" else None
            image = image.resize(target, _pil_filter(self.interpolation), reducing_gap=gap)
        pixels = np.asarray(image)
        pixels = self._centre_crop(pixels[:, :, None] if pixels.ndim == 2 else pixels)
        return self._pad(pixels, target, 1) if self.resize == "letterbox" else pixels

    def _pad(self, pixels: np.ndarray, target: tuple[int, int], unit: float) -> np.ndarray:
        out_h, out_w = self.target
        canvas = np.full((out_h, out_w, pixels.shape[2]), self.pad_value * unit, dtype=pixels.dtype)
        top, left = (out_h - target[1]) // 2, (out_w - target[0]) // 2
        canvas[top:top + target[1], left:left + target[0]] = pixels
        return canvas

    def _finish(self, hwc: np.ndarray) -> np.ndarray:
        if hwc.dtype == np.uint8:  # as ToTensor: a float32 division by 255
            chw = hwc.transpose(2, 0, 1).astype(np.float32)
            if self.pixel_scale == 1.0:
                chw /= np.float32(255)
        else:
            chw = hwc.transpose(2, 0, 1).astype(np.float32, copy=True)
            if self.pixel_scale != 1.0:
                chw *= np.float32(self.pixel_scale)
        if self.channel_order == "BGR":
            chw = chw[::-1]
        return np.ascontiguousarray(chw)

    def normalize(self, chw: np.ndarray) -> np.ndarray:
        """Step 4: ``(x - mean) / std`` per channel, in float32 (torchvision's Normalize)."""
        if self.mean is None or self.std is None:
            return chw
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return (chw - mean) / std

    # ------------------------------------------------------------------------------------------- text
    def steps(self) -> list[tuple[str, str]]:
        """(step, what it does) rows: what gap-export prints and docs/concepts/preprocessing.md's table shows."""
        rows = [("decode", "Pillow, 8-bit " + {"uint8": "(resized as 8-bit)", "float": "(resized as float)"}
                 [self.space] + (", turned as EXIF says" if self.orientation == "exif" else ", EXIF orientation "
                                                                                          "ignored"))]
        if self.resize == "none":
            rows.append(("resize", "none: each image at its own size"))
        else:
            h, w = self.target
            how = f"{self.interpolation}{', antialias' if self.antialias else ', no antialias'} ({self.space})"
            if self.resize == "shorter-side":
                rows.append(("resize", f"shorter side to {_scaled(min(h, w), self.crop_fraction)}, {how}"))
            elif self.resize == "stretch":
                rows.append(("resize", f"stretch to {_scaled(h, self.crop_fraction)}x"
                                       f"{_scaled(w, self.crop_fraction)}, {how}"))
            else:
                rows.append(("resize", f"letterbox into {h}x{w}, {how}, padded with {self.pad_value}"))
            if self.crop_fraction != 1.0 or self.resize == "shorter-side":
                rows.append(("crop", f"centre {h}x{w} (crop fraction {self.crop_fraction:.4g})"))
        if self.buckets:
            sizes = ", ".join(f"{h}x{w}" for h, w in sorted(self.buckets, key=min))
            rows.append(("route", f"each image to the smallest of {sizes} at least its side, else the largest"))
        rows.append(("scale", "pixels to [0, 1]" if self.pixel_scale == 1.0 else "pixels to [0, 255]"))
        rows.append(("channels", self.channel_order))
        if self.mean is not None and self.std is not None:
            rows.append(("normalize", f"mean {_nums(self.mean)}, std {_nums(self.std)}"))
        return rows

    def describe(self) -> str:
        return "; ".join(f"{step}: {text}" for step, text in self.steps())


@dataclass(frozen=True)
class Decoded:
    """A decoded image: an 8-bit PIL image (space uint8) or (H, W, C) float32 in [0, 1] (space float), and the
    file's own (width, height) (a JPEG decoded in draft mode is smaller than the file)."""

    pixels: Image.Image | np.ndarray
    size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        if isinstance(self.pixels, np.ndarray):
            return int(self.pixels.nbytes)
        return self.pixels.width * self.pixels.height * len(self.pixels.getbands())


def _nums(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _scaled(size: int, crop_fraction: float) -> int:
    """The resize target whose centre crop of ``crop_fraction`` is ``size`` (timm: floor(size / crop_pct)); the
    small epsilon keeps 224 / (224 / 232) at 232 when the division lands a hair below it."""
    return size if crop_fraction == 1.0 else int(math.floor(size / crop_fraction + 1e-6))


def _pil_filter(interpolation: str):
    """Pillow's resampling filter of the same name (NEAREST, BILINEAR, BICUBIC, LANCZOS)."""
    from PIL import Image

    return Image.Resampling[interpolation.upper()]


# ------------------------------------------------------------------------------ torch's interpolate, reproduced
@functools.lru_cache(maxsize=64)
def axis_taps(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) arrays of shape (out_size, taps): ``out[i] = sum_k weight[i, k] * in[index[i, k]]`` along one
    axis, as ``torch.nn.functional.interpolate`` (align_corners=False, sizes given, antialias off) computes it on
    the CPU: ``nearest`` picks floor(dst * in / out); ``bilinear``/``bicubic`` sample at (dst + 0.5) * in / out -
    0.5 (bilinear clamps it at 0) with the edge indices clamped, bicubic with a = -0.75 (aten/src/ATen/native/
    UpSample.h: area_pixel_compute_source_index, cubic_convolution1/2). The source index is computed in float32,
    as torch does for float inputs. Cached by sizes: images of one size share them."""
    rows = np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    if interpolation == "nearest":
        index = np.minimum(np.floor(rows.astype(np.float32) * scale).astype(np.int64), in_size - 1)
        return _frozen(index[:, None]), _frozen(np.ones((out_size, 1), np.float32))
    src = (scale * (rows.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)).astype(np.float64)
    if interpolation == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = src.astype(np.int64)
        l1 = src - i0
        index = np.stack([i0, np.minimum(i0 + 1, in_size - 1)], axis=1)
        return _frozen(index), _frozen(np.stack([1.0 - l1, l1], axis=1).astype(np.float32))
    a = -0.75
    base = np.floor(src).astype(np.int64)
    t = src - base
    weights = np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                        ((a + 2) * t - (a + 3)) * t * t + 1,
                        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a], axis=1)
    index = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return _frozen(index), _frozen(weights.astype(np.float32))


def _frozen(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


def resize_float(pixels: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear",
                 antialias: bool = True, *, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Resize (H, W, C) float pixels to ``size`` = (W, H) as torch's interpolate does on float tensors, keeping
    only ``box`` (left, top, right, bottom) when a crop follows.

    With antialias (bilinear, bicubic) this is Pillow's float ("F" mode) resampling per channel: torch's
    antialiased kernel is Pillow's algorithm (its support, centre, truncation and renormalization, bicubic with
    a = -0.5; aten/src/ATen/native/cpu/UpSampleKernel.cpp), computed there in float32 and in Pillow in double,
    within 1e-5 of each other. Without antialias, and for nearest, the taps of :func:`axis_taps`."""
    height, width = pixels.shape[:2]
    out_w, out_h = size
    left, top, right, bottom = box if box is not None else (0, 0, out_w, out_h)
    if (out_w, out_h) == (width, height):
        return np.array(pixels[top:bottom, left:right], dtype=np.float32)
    data = np.ascontiguousarray(pixels, dtype=np.float32)
    if antialias and interpolation in ("bilinear", "bicubic"):
        from PIL import Image

        planes = [np.asarray(Image.fromarray(data[:, :, c]).resize((out_w, out_h), _pil_filter(interpolation)),
                             dtype=np.float32) for c in range(data.shape[2])]
        return np.ascontiguousarray(np.stack(planes, axis=2)[top:bottom, left:right])
    index, weight = (a[top:bottom] for a in axis_taps(height, out_h, interpolation))
    tall = functools.reduce(operator.add, (weight[:, k, None, None] * data[index[:, k]] for k in range(index.shape[1])))
    index, weight = (a[left:right] for a in axis_taps(width, out_w, interpolation))
    wide = functools.reduce(operator.add, (weight[None, :, k, None] * tall[:, index[:, k]]
                                           for k in range(index.shape[1])))
    return np.ascontiguousarray(wide, dtype=np.float32)


def legacy(size: tuple[int, int] | None, mean=None, std=None) -> Preprocess:
    """The contract of a model exported without one: each image at its own size, or stretched to ``--imgsz``
    with antialiased bilinear on float pixels (what gap-run did before contracts)."""
    return Preprocess(mean=tuple(mean) if mean else None, std=tuple(std) if std else None).sized(size)


# ---------------------------------------------------------------- the contract of a model exported without one
def load_image(path: str | Path, channels: int = 3, size: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels in [0, 1] as (channels, H, W) float32, stretched to ``size`` (H, W) when given: the contract of a
    model exported without one (runtime.preprocess.legacy), not normalized.

    Only regular files are opened (a FIFO would block). 16-bit and 32-bit integer images are scaled by
    their bit depth, float images by their range ([0, 1], [0, 255] or [0, 65535]), never clipped. The
    memory an image needs is checked from its header before it is decoded; a decompression bomb is an
    error for that file alone.
    """
    from gap_deploy.runtime.images import open_regular

    with open_regular(path) as handle:
        return legacy(size).pixels(handle, channels, name=str(path))


def decode_image(source, channels: int = 3, size: tuple[int, int] | None = None, *, name: str) -> np.ndarray:
    """:func:`load_image` for an open binary file (bytes read by Ray from any filesystem)."""
    return legacy(size).pixels(source, channels, name=name)


def resize_hwc(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of (H, W, C) float pixels to ``size`` (H, W), without rounding
    (runtime.preprocess.resize_float: the one resize implementation)."""
    return resize_float(pixels, (size[1], size[0]), "bilinear", True)


def normalize(chw: np.ndarray, metadata) -> np.ndarray:
    """``(chw - mean) / std`` with the model's mean and std (runtime.preprocess.Preprocess.normalize)."""
    return metadata.preprocessing().normalize(chw)
