"""runtime.preprocess: the contract's storage and validation, its arithmetic against the libraries it reproduces
(torch.nn.functional.interpolate for float-space resizes, Pillow for 8-bit ones), and that every command makes its
tensors through it. The comparison with torchvision's own transforms runs in tests/exporter/test_preprocess_tv.py."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gap_deploy.runtime.errors import MetadataError, UsageError
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.preprocess import Preprocess, axis_taps, legacy, resize_float

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [((375, 500), (256, 341)), ((97, 33), (224, 224)), ((50, 60), (120, 30)), ((3000, 4000), (256, 341)),
          ((7, 5), (7, 5))]


@pytest.mark.parametrize("shape,out", SHAPES)
@pytest.mark.parametrize("mode,antialias", [("nearest", False), ("bilinear", True), ("bilinear", False),
                                            ("bicubic", True), ("bicubic", False)])
def test_float_resizes_equal_torch_interpolate(shape, out, mode, antialias):
    """The judge is torch itself: F.interpolate(align_corners=False, size=...) as torchvision calls it on tensors."""
    import torch
    import torch.nn.functional as F

    pixels = np.random.default_rng(sum(shape)).random((*shape, 3), dtype=np.float32)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    expected = F.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None], size=out, mode=mode,
                             antialias=antialias, **kwargs)[0].permute(1, 2, 0).numpy()
    got = resize_float(pixels, (out[1], out[0]), mode, antialias)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_a_crop_computes_only_its_rows_and_columns_and_gets_the_same_pixels():
    pixels = np.random.default_rng(1).random((90, 70, 3), dtype=np.float32)
    whole = resize_float(pixels, (50, 64), "bicubic", True)
    part = resize_float(pixels, (50, 64), "bicubic", True, box=(3, 5, 43, 45))
    np.testing.assert_allclose(part, whole[5:45, 3:43], atol=1e-6, rtol=0)  # BLAS may sum in another order


def test_taps_without_antialias_sum_to_one_and_stay_inside_the_image():
    for mode, taps in (("nearest", 1), ("bilinear", 2), ("bicubic", 4)):
        index, weight = axis_taps(1000, 37, mode)
        assert index.shape == weight.shape == (37, taps)
        np.testing.assert_allclose(weight.sum(axis=1), 1.0, atol=1e-6)
        assert index.min() >= 0 and index.max() <= 999


def _image(tmp_path, size=(61, 45), mode="RGB", name="a.png"):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    image.save(tmp_path / name)
    return tmp_path / name, pixels


def test_uint8_space_is_pillow_then_torchvision_s_centre_crop_rounding(tmp_path):
    """shorter-side 40 of a 61x45 image: 54x40 (int(40 * 61 / 45)), bicubic in Pillow, crop 32x32 at
    round((54 - 32) / 2) = 11 and round((40 - 32) / 2) = 4 -- written out here, not through the module."""
    path, pixels = _image(tmp_path)
    contract = Preprocess(resize="shorter-side", size=(32, 32), crop_fraction=0.8, interpolation="bicubic",
                          space="uint8", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    resized = np.asarray(Image.fromarray(pixels).resize((54, 40), Image.Resampling.BICUBIC))
    expected = (resized[4:36, 11:43].transpose(2, 0, 1).astype(np.float32) / np.float32(255) - 0.5) / 0.25
    np.testing.assert_array_equal(contract.load(path, 3), expected)


def test_letterbox_keeps_the_aspect_and_pads_with_the_value(tmp_path):
    path, _ = _image(tmp_path, size=(80, 40))
    contract = Preprocess(resize="letterbox", size=(64, 64), pad_value=114, space="uint8")
    chw = contract.pixels(open(path, "rb"), 3, name="a")
    assert chw.shape == (3, 64, 64)
    np.testing.assert_array_equal(chw[:, :16], np.float32(114) / np.float32(255))  # 64x32, centred
    np.testing.assert_array_equal(chw[:, 48:], np.float32(114) / np.float32(255))
    assert not np.all(chw[:, 16:48] == np.float32(114 / 255))


def test_bgr_pixel_scale_and_normalization(tmp_path):
    path, pixels = _image(tmp_path)
    bgr = Preprocess(channel_order="BGR", pixel_scale=255.0, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    got = bgr.load(path, 3)
    expected = (pixels[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) - np.float32([1, 2, 3])[:, None, None]) \
        / np.float32([2, 4, 8])[:, None, None]
    np.testing.assert_array_equal(got, expected)


def test_a_crop_larger_than_the_resized_image_is_padded_as_centercrop_pads(tmp_path):
    """A shorter-side contract at --imgsz 17x40 on a portrait image: torchvision's CenterCrop pads with zeros."""
    path, _ = _image(tmp_path, size=(30, 60))
    chw = Preprocess(resize="shorter-side", size=(17, 40), space="uint8").pixels(open(path, "rb"), 3, name="a")
    assert chw.shape == (3, 17, 40)
    assert np.all(chw[:, :, :10] == 0) and np.all(chw[:, :, 30:] == 0)  # 40 wide, 20 of image: 10 each side


@pytest.mark.parametrize("size", [(9, 13), None])
def test_the_legacy_contract_is_what_load_image_made(tmp_path, size):
    path, _ = _image(tmp_path)
    from gap_deploy.runtime.preprocess import load_image

    meta = ModelMetadata(in_channels=3)
    np.testing.assert_array_equal(meta.preprocessing(size).load(path, 3),
                                  legacy(size, *meta.normalization()).normalize(load_image(path, 3, size)))


def test_the_contract_travels_in_metadata_props():
    contract = Preprocess(resize="shorter-side", size=(224, 224), crop_fraction=0.875, interpolation="bicubic",
                          space="uint8")
    meta = ModelMetadata(in_channels=3, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), preprocess=contract.to_json())
    back = ModelMetadata.from_props(meta.to_props())
    assert back.preprocessing() == contract.normalized_with((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    assert back.preprocessing((160, 160)).size == (160, 160)
    assert back.preprocessing((160, 160)).crop_fraction == 0.875


@pytest.mark.parametrize("change,fragment", [
    ({"crop_fraction": 0}, "crop_fraction 0 is outside"),
    ({"crop_fraction": 5}, "crop_fraction 5 is outside"),
    ({"interpolation": "sinc"}, "interpolation 'sinc' is not one of"),
    ({"resize": "zoom"}, "resize 'zoom' is not one of"),
    ({"size": [0, 224]}, "needs a size of 1 to 16384"),
    ({"size": "224"}, "is not [height, width]"),
    ({"pixel_scale": 7}, "pixel_scale 7 is not 1"),
    ({"space": "float", "interpolation": "lanczos"}, "lanczos has no float arithmetic"),
    ({"antialias": "yes"}, "antialias 'yes' has the wrong type"),
    ({"surprise": 1}, "unknown field(s) surprise"),
])
def test_a_contract_in_metadata_that_lies_is_refused_by_name(change, fragment):
    values = json.loads(Preprocess(resize="shorter-side", size=(224, 224), crop_fraction=0.875).to_json())
    values.update(change)
    props = ModelMetadata(in_channels=3).to_props() | {"gap.preprocess": json.dumps(values)}
    with pytest.raises(MetadataError, match="gap.preprocess") as info:
        ModelMetadata.from_props(props)
    assert fragment in str(info.value)


def test_fields_that_cannot_go_together_are_refused():
    with pytest.raises(UsageError, match="always antialiases"):
        Preprocess(resize="stretch", size=(8, 8), space="uint8", antialias=False).validate()
    with pytest.raises(UsageError, match="BGR needs 3 channels"):
        Preprocess(channel_order="BGR").validate(1)
    with pytest.raises(UsageError, match="takes no size"):
        Preprocess(size=(8, 8)).validate()


def _package_files():
    for folder in ("runtime", "exporter"):
        yield from (ROOT / "gap_deploy" / folder).rglob("*.py")


def test_there_is_one_implementation_of_image_to_tensor():
    """Only runtime/images.py opens image files with Pillow and only runtime/preprocess.py resizes them; no other
    module of the package calls Image.open, an image's .resize/.draft/.reduce, or the legacy load_image +
    normalize pair (kept for tests and scripts), so gap-run, gap-eval, gap-tune, gap-debug, calibration, Triton's
    client and the Ray workers cannot drift apart."""
    allowed = {ROOT / "gap_deploy" / "runtime" / "images.py", ROOT / "gap_deploy" / "runtime" / "preprocess.py"}
    # OpenVINO's PrePostProcessor step that gap-pack --app writes into an app model's graph: it resizes nothing here
    in_model = {("gap_deploy/exporter/pack_app.py", "steps.resize")}
    offenders = []
    for path in _package_files():
        if path in allowed:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                target = ast.unparse(node.func.value)
                resizes = name in ("resize", "draft", "reduce") and target != "functools"
                if (str(path.relative_to(ROOT)), f"{target}.{name}") in in_model:
                    continue
                if resizes or (name == "open" and target in ("Image", "PIL.Image")):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {target}.{name}")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("runtime.preprocess"):
                names = {a.name for a in node.names}
                if names & {"load_image", "decode_image", "resize_hwc", "normalize"}:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {sorted(names)}")
    assert offenders == []


@pytest.mark.parametrize("module", ["classify", "evaluate", "tune", "batch", "triton_client"])
def test_every_consumer_goes_through_the_contract(module):
    source = (ROOT / "gap_deploy" / "runtime" / f"{module}.py").read_text()
    assert "preprocessing(" in source or "image_loader(" in source


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_exif_orientation_turns_the_photo_as_a_viewer_shows_it(tmp_path, decode):
    """A JPEG stored 40 wide and 80 high with Orientation 6 is shown 80 x 40: classified so by default (its pixels
    are PIL's own exif_transpose), stored-side with orientation "ignore"; fast decoding (libjpeg's draft) turns
    it too."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)).save(path, quality=95, exif=exif.tobytes())
    shown = Preprocess(space="uint8").load(path, decode=decode)
    assert shown.shape == (3, 40, 80)
    want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
    assert np.array_equal(shown, want)
    assert Preprocess(space="uint8", orientation="ignore").load(path).shape == (3, 80, 40)
    resized = Preprocess(resize="shorter-side", size=(16, 16), space="uint8").load(path, decode=decode)
    assert resized.shape == (3, 16, 16)
    stretched = Preprocess(resize="stretch", size=(10, 30), space="uint8")
    assert stretched.load(path, decode=decode).shape == (3, 10, 30)
    assert "turned as EXIF says" in Preprocess().describe()
    with pytest.raises(Exception, match="orientation"):
        Preprocess.from_json('{"orientation": "sideways"}')
