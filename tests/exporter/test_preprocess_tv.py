"""From the image file to the label, judged by torchvision and timm themselves.

torchvision's wheels do not import against this environment's torch 2.13, so the user's side runs in .venv-tv
(torch 2.14.1 + torchvision 0.29.1 + timm 1.0.31, built by `make venv`): gap-export with --preprocess there (as
a user with torchvision runs it), and the user's own transform + onnxruntime on the exported ONNX, written to
JSON. The toolkit's side runs here, without torch: gap-run, gap-eval, Ray and a real tritonserver, each compared
file by file with the user's probabilities.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
TV = ROOT / ".venv-tv" / "bin"
if not (TV / "python").exists():
    pytest.skip("the torchvision environment .venv-tv is not built (make venv builds it)", allow_module_level=True)
pytestmark = pytest.mark.slow
CLASSES = [f"class{i}" for i in range(10)]

USER_TRANSFORMS = '''
import torch
from torchvision import transforms as T
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def bilinear():
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])


def bicubic():
    return T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(224),
                      T.ToTensor(), T.Normalize(MEAN, STD)])


def v2_bicubic():
    return v2.Compose([v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(224),
                       v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def tensor_antialias():
    return T.Compose([T.ToTensor(), T.Resize(256, antialias=True), T.CenterCrop(224), T.Normalize(MEAN, STD)])


# -- planted mismatches: each differs from its reference in one step
def tensor_no_antialias():
    return T.Compose([T.ToTensor(), T.Resize(256, antialias=False), T.CenterCrop(224), T.Normalize(MEAN, STD)])


def bgr():
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Lambda(lambda t: t.flip(0)),
                      T.Normalize(MEAN, STD)])


def scale_255():
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor(), T.Lambda(lambda t: t.float()),
                      T.Normalize(MEAN, STD)])


def small():
    return T.Compose([T.Resize(72), T.CenterCrop(64), T.ToTensor(), T.Normalize(MEAN, STD)])


def crop_232():
    return T.Compose([T.Resize(232), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])


def swapped():
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(STD, MEAN)])


# -- transforms that cannot be expressed
def random_crop():
    return T.Compose([T.RandomResizedCrop(224), T.ToTensor()])


def with_lambda():
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.Lambda(lambda im: im), T.ToTensor()])


def broken():
    raise RuntimeError("the user's factory fails")
'''

EXPECTED = r'''
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
sys.path.insert(0, sys.argv[1])
spec, onnx_path, out = sys.argv[2], sys.argv[3], sys.argv[4]
files = sys.argv[5:]
if spec == "timm":
    import timm.models, torch
    from timm.data import create_transform, resolve_data_config
    model = timm.models.test_resnet()
    transform = create_transform(**resolve_data_config({}, model=model))
else:
    import user_transforms
    transform = getattr(user_transforms, spec)()
session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
probs = {}
for f in files:
    x = transform(Image.open(f).convert("RGB")).numpy()[None]  # ImageFolder's loader, then the eval transform
    logits = session.run(None, {name: x})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    probs[f] = (e / e.sum()).tolist()
json.dump(probs, open(out, "w"))
'''


def tv(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """100 photos of mixed sizes and aspect ratios (JPEG and PNG, colour and gray) in one folder per class, the
    reference GAP CNN with real BatchNorm statistics, its class names and the user's transforms."""
    import torch
    from PIL import Image

    from gap_deploy.exporter.preprocess import natural_image
    from tests.conftest import make_reference, randomize_batchnorm

    root = tmp_path_factory.mktemp("preprocess-tv")
    model = make_reference()
    randomize_batchnorm(model)
    torch.save(model.state_dict(), root / "gapcnn.pt")
    (root / "names.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "user_transforms.py").write_text(USER_TRANSFORMS)
    (root / "expected.py").write_text(EXPECTED)
    rng = np.random.default_rng(7)
    sizes = [(500, 375), (375, 500), (640, 480), (257, 259), (1024, 683), (300, 900), (224, 224), (97, 333),
             (800, 450), (256, 300)]
    for i in range(100):
        width, height = sizes[i % len(sizes)]
        folder = root / "photos" / CLASSES[i % 10]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(natural_image(width, height, rng))
        if i % 7 == 3:
            image = image.convert("L")
        if i % 2:
            image.save(folder / f"{i:03d}.jpg", quality=int(rng.integers(70, 96)))
        else:
            image.save(folder / f"{i:03d}.png")
    return root


def class_folders(work: Path) -> list[str]:
    return [str(p) for p in sorted((work / "photos").iterdir())]


def photos(work: Path) -> list[Path]:
    from gap_deploy.runtime.evaluate import read_labelled_folder

    return list(read_labelled_folder(work / "photos", CLASSES, 10).files)


def expected_probs(work: Path, spec: str, onnx: Path, files: list[Path]) -> dict[str, np.ndarray]:
    out = work / f"expected-{spec}-{onnx.stem}.json"
    tv(TV / "python", work / "expected.py", work, spec, onnx, out, *files, cwd=work)
    return {k: np.asarray(v) for k, v in json.loads(out.read_text()).items()}


_EXPORTS: dict = {}


def export_with(work: Path, name: str):
    """gap-export --preprocess user_transforms.py:<name> in the torchvision environment, and the user's own
    probabilities: their transform + onnxruntime on the exported ONNX (once per module)."""
    if name not in _EXPORTS:
        onnx = work / f"{name}.onnx"
        result = tv(TV / "gap-export", "gapcnn.pt", "--dynamic", "--preprocess", f"user_transforms.py:{name}",
                    "--class-names", "names.txt", "-o", onnx, "--json", f"{name}.json", cwd=work)
        assert "Checked against user_transforms.py:" in result.stdout
        _EXPORTS[name] = (name, onnx, expected_probs(work, name, onnx, photos(work)),
                          json.loads((work / f"{name}.json").read_text()))
    return _EXPORTS[name]


@pytest.fixture(scope="module", params=["bilinear", "bicubic", "v2_bicubic", "tensor_antialias"])
def exported(work, request):
    return export_with(work, request.param)


def by_class(top: list[dict]) -> np.ndarray:
    probs = np.zeros(10)
    for entry in top:
        probs[CLASSES.index(entry["name"])] = entry["prob"]
    return probs


def test_the_contract_is_read_from_the_transform_and_identical_pipelines_differ_by_nothing(exported):
    name, onnx, _, report = exported
    pre = report["preprocess"]
    assert pre["passed"] and pre["top1_agreement"] == 1.0
    if name in ("bilinear", "bicubic"):  # Pillow both sides, then ToTensor's division: the same bytes
        assert pre["max_difference_levels"] == 0.0
        assert "uint8" in pre["contract"]["resize"]
    elif name == "v2_bicubic":  # Pillow both sides; v2's ToDtype multiplies by 1/255: one float32 ulp apart
        assert pre["max_difference_levels"] < 1e-4
        assert "uint8" in pre["contract"]["resize"]
    else:  # torch's interpolate against its NumPy reproduction: float rounding only
        assert pre["max_difference_levels"] < 0.01
        assert "(float)" in pre["contract"]["resize"]
    assert ("bicubic" in pre["contract"]["resize"]) == ("bicubic" in name)
    assert pre["contract"]["crop"] == "centre 224x224 (crop fraction 0.875)"
    import onnx as onnx_lib

    from gap_deploy.exporter.precision import metadata_of

    assert json.loads(metadata_of(onnx_lib.load(str(onnx))).preprocess)["resize"] == "shorter-side"


def test_gap_run_gives_the_user_s_probabilities_from_image_files(work, exported):
    from gap_deploy.runtime.cli.run import main

    name, onnx, expected, _ = exported
    result = CliRunner().invoke(main, [str(onnx), *class_folders(work), "--format", "json", "-k", "10"])
    assert result.exit_code == 0, result.output
    got = {item["file"]: by_class(item["top"]) for item in json.loads(result.stdout)["results"]}
    assert sorted(got) == sorted(expected) and len(got) == 100
    worst = max(float(np.abs(got[f] - expected[f]).max()) for f in expected)
    assert worst < 1e-4, f"{name}: probabilities differ by {worst}"


def test_gap_eval_gives_the_user_s_top1(work, exported):
    from gap_deploy.runtime.evaluate import evaluate

    _, onnx, expected, _ = exported
    result = evaluate({"m": onnx}, work / "photos")
    files = photos(work)
    assert result.scores["m"]["native"].predictions == [int(np.argmax(expected[str(f)])) for f in files]


@pytest.mark.parametrize("name", ["bicubic", "tensor_antialias"])  # a Pillow and a float contract
def test_ray_workers_give_the_user_s_probabilities(work, name, tmp_path):
    import ray

    from gap_deploy.runtime.batch import BatchJob, connect, read_results, run_batch

    name, onnx, expected, _ = export_with(work, name)
    os.environ.pop("RAY_ADDRESS", None)
    connect("auto", num_cpus=2)
    try:
        out = tmp_path / "rows.parquet"
        run_batch(BatchJob(onnx, tuple(class_folders(work)), out, topk=10, workers=2, cpus_per_worker=0.5))
        rows = read_results(out)
    finally:
        ray.shutdown()
    assert len(rows) == 100
    for row in rows:
        got = np.zeros(10)
        got[[CLASSES.index(n) for n in row["top_labels"]]] = row["top_scores"]
        np.testing.assert_allclose(got, expected[row["path"]], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["bicubic", "tensor_antialias"])  # a Pillow and a float contract
def test_a_real_tritonserver_gives_the_user_s_probabilities(work, name, tmp_path):
    pytest.importorskip("tritonclient.http")
    from gap_deploy.exporter.triton import ServeOptions, write_repository
    from gap_deploy.runtime.cli.run import main
    from tests.support.triton_server import distribution, tritonserver

    if distribution() is None:
        pytest.skip("the tritonserver bundled by nvidia-pytriton is not installed (make venv installs it)")
    name, onnx, expected, _ = export_with(work, name)
    paths = (str(ROOT), *site.getsitepackages())
    write_repository([onnx], tmp_path / "repo", ServeOptions(backend="python", python_paths=paths, max_batch=8))
    with tritonserver(tmp_path / "repo", tmp_path) as (url, _):
        result = CliRunner().invoke(main, ["--server", url, "--model", onnx.stem, *class_folders(work),
                                           "--format", "json", "-k", "10"])
    assert result.exit_code == 0, result.output
    got = {item["file"]: by_class(item["top"]) for item in json.loads(result.stdout)["results"]}
    assert len(got) == 100
    for file, probs in got.items():
        np.testing.assert_allclose(probs, expected[file], atol=1e-4, rtol=0)


def test_timm_s_own_eval_transform_from_its_pretrained_cfg(work):
    """--preprocess timm: timm's resolve_data_config + create_transform for the model (test_resnet: 160 px,
    crop_pct 0.95, bilinear, mean/std 0.5), checked at export and equal in gap-run."""
    from gap_deploy.runtime.cli.run import main

    tv(TV / "python", "-c", "import timm.models, torch; torch.manual_seed(0); "
       "torch.save(timm.models.test_resnet(num_classes=10).state_dict(), 'timm.pt')", cwd=work)
    result = tv(TV / "gap-export", "timm.pt", "--arch", "timm.models:test_resnet", "--num-classes", "10", "--dynamic",
                "--preprocess", "timm", "--class-names", "names.txt", "-o", "timm.onnx", cwd=work)
    assert "shorter side to 168, bilinear" in result.stdout and "crop fraction 0.9524" in result.stdout
    assert "largest tensor difference 0/255" in result.stdout
    files = photos(work)[:30]
    expected = expected_probs(work, "timm", work / "timm.onnx", files)
    run = CliRunner().invoke(main, [str(work / "timm.onnx"), *map(str, files), "--format", "json", "-k", "10"])
    assert run.exit_code == 0, run.output
    for item in json.loads(run.stdout)["results"]:
        np.testing.assert_allclose(by_class(item["top"]), expected[item["file"]], atol=1e-4, rtol=0)


@pytest.mark.parametrize("reference,planted,step", [
    ("bilinear", "bicubic", "Resize interpolation: the transform's is bicubic, the contract's bilinear"),
    ("tensor_antialias", "tensor_no_antialias",
     "Resize antialias: the transform resizes without antialias, the contract with antialias"),
    ("bilinear", "bgr", "channel order: the transform gives BGR, the contract RGB"),
    ("bilinear", "scale_255", "pixel scale: the transform's pixels run 0-255 before Normalize, the contract's 0-1"),
    ("bilinear", "crop_232", "Resize/CenterCrop: the transform resizes to 232 before the 224x224 crop"),
    ("bilinear", "swapped", "Normalize: the transform's mean is (0.229, 0.224, 0.225) and std (0.485, 0.456, 0.406)"),
])
def test_each_planted_mismatch_is_caught_at_export_and_named(work, reference, planted, step):
    out = work / f"planted-{planted}.onnx"
    result = tv(TV / "gap-export", "gapcnn.pt", "--dynamic", "--preprocess", f"user_transforms.py:{reference}",
                "--check-transform", f"user_transforms.py:{planted}", "-o", out, cwd=work, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert step in result.stderr and "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    assert not list(work.glob(f"planted-{planted}*"))


@pytest.mark.parametrize("spec,message", [
    ("user_transforms.py:random_crop", "step 1 of the transform, RandomResizedCrop(size=(224, 224)"),
    ("user_transforms.py:with_lambda", "step 3 of the transform, Lambda("),
    ("user_transforms.py:broken", "calling it failed: the user's factory fails"),
    ("missing.py:make", "--preprocess file missing.py does not exist"),
    ("no_such_module_xyz:make", "cannot import --preprocess module 'no_such_module_xyz'"),
    ("user_transforms.py:nothing_here", "has no attribute 'nothing_here'"),
    ("user_transforms.py", "is not of the form MODULE:CALLABLE"),
])
def test_a_transform_that_cannot_be_expressed_or_loaded_is_one_message(work, spec, message):
    out = work / "refused.onnx"
    result = tv(TV / "gap-export", "gapcnn.pt", "--preprocess", spec, "-o", out, cwd=work, check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 6
    assert not out.exists()


def test_the_torchvision_environment_is_what_it_says():
    result = tv(TV / "python", "-c", "import torch, torchvision, timm; print(torch.__version__, "
                "torchvision.__version__, timm.__version__)", cwd=ROOT)
    assert result.stdout.split()[1].startswith("0.29.1") and sys.version_info[:2] == (3, 11)


def test_a_phone_photo_is_classified_as_shown_unless_the_contract_ignores_exif(work):
    """Phones store most photos sideways with an EXIF Orientation tag. gap-run turns them as a viewer shows them
    (the contract's default), judged by the user's own transform on ``ImageOps.exif_transpose(Image.open(f))``;
    a model exported with --orientation ignore gets the stored pixels, judged by ``Image.open(f)`` alone."""
    from PIL import Image

    from gap_deploy.exporter.preprocess import natural_image
    from gap_deploy.runtime.cli.run import main

    phones = work / "phones"
    phones.mkdir(exist_ok=True)
    rng = np.random.default_rng(11)
    files = []
    for turn in (1, 3, 5, 6, 7, 8):
        image = Image.fromarray(natural_image(300, 520, rng))  # stored 300 wide, 520 high
        exif = Image.Exif()
        exif[0x0112] = turn
        files.append(phones / f"turn{turn}.jpg")
        image.save(files[-1], quality=92, exif=exif.tobytes())
    shown = work / "expected_shown.py"
    shown.write_text(EXPECTED.replace('transform(Image.open(f).convert("RGB"))',
                                      'transform(ImageOps.exif_transpose(Image.open(f)).convert("RGB"))')
                     .replace("from PIL import Image", "from PIL import Image, ImageOps"))
    name, onnx, _, _ = export_with(work, "bilinear")
    out = work / "expected-shown.json"
    tv(TV / "python", shown, work, name, onnx, out, *files, cwd=work)
    as_shown = {k: np.asarray(v) for k, v in json.loads(out.read_text()).items()}
    as_stored = expected_probs(work, name, onnx, files)

    def gap_run(model):
        result = CliRunner().invoke(main, [str(model), *map(str, files), "--format", "json", "-k", "10"])
        assert result.exit_code == 0, result.output
        return {item["file"]: by_class(item["top"]) for item in json.loads(result.stdout)["results"]}
    got = gap_run(onnx)
    worst = max(float(np.abs(got[f] - as_shown[f]).max()) for f in as_shown)
    assert worst < 1e-4
    # the check can tell the two apart: turning a photo moves this (random-weight, GAP) model's probabilities by
    # 1.4e-4 to 2.5e-4, far more than gap-run differs from the user's pipeline
    turned = [f for f in as_shown if not f.endswith("turn1.jpg")]
    assert all(float(np.abs(as_shown[f] - as_stored[f]).max()) > 10 * worst for f in turned), worst
    ignoring = work / "bilinear-ignore.onnx"
    tv(TV / "gap-export", "gapcnn.pt", "--dynamic", "--preprocess", "user_transforms.py:bilinear", "--orientation",
       "ignore", "--class-names", "names.txt", "-o", ignoring, cwd=work)
    got = gap_run(ignoring)
    worst = max(float(np.abs(got[f] - as_stored[f]).max()) for f in as_stored)
    assert worst < 1e-4 and all(float(np.abs(got[f] - as_shown[f]).max()) > 10 * worst for f in turned)


def test_int8_calibrates_at_the_size_the_preprocessing_makes(work):
    """A transform that makes 64x64 inputs and no --imgsz: the model is exported at 64x64 and INT8 calibrates at
    64x64 too (it calibrated at 224 before, on images the model never sees at that size)."""
    result = tv(TV / "gap-export", "gapcnn.pt", "--dynamic", "--preprocess", "user_transforms.py:small",
                "--precision", "int8", "--calib", work / "photos" / "class0", "--min-top1", "0", "-o",
                work / "small.onnx", cwd=work)
    assert "calibrating at 64x64" in result.stderr + result.stdout
