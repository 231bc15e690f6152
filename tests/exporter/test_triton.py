"""gap-triton repositories, checked offline against Triton's own ModelConfig schema and the artifacts."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient")

from gap_deploy.exporter.cli.triton import main  # noqa: E402
from gap_deploy.exporter.triton import ServeOptions, check_repository, parse_config, write_repository  # noqa: E402
from gap_deploy.runtime.errors import UsageError  # noqa: E402
from gap_deploy.runtime.files import sha256_bytes  # noqa: E402
from gap_deploy.runtime.manifest import EngineManifest  # noqa: E402
from gap_deploy.runtime.metadata import ModelMetadata  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402

PROFILES = [((1, 3, 4, 4), (1, 3, 224, 224), (8, 3, 512, 512)),
            ((1, 3, 513, 513), (1, 3, 768, 768), (4, 3, 1024, 1024))]


@pytest.fixture
def fp16_plan(tmp_path):
    """A plan with its gap-build manifest: the manifest is what the config is written from (no GPU needed)."""
    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"engine bytes")
    EngineManifest(tensorrt_version="11.4.0.106", gpu_name="NVIDIA H100", compute_capability="9.0",
                   precision="fp16", plan_sha256=sha256_bytes(b"engine bytes"), onnx_sha256="0" * 64,
                   profiles=[{"images": [list(s) for s in p]} for p in PROFILES],
                   metadata=ModelMetadata(arch="GapCNN", in_channels=3, num_classes=10, min_height=4, min_width=4,
                                          class_names=tuple(f"c{i}" for i in range(10)),
                                          precision="fp16").to_props()).write(plan)
    return plan


def config(repo, name):
    return (repo / name / "config.pbtxt").read_text()


def test_onnx_repository(tmp_path, reference_onnx):
    repo = tmp_path / "repo"
    write_repository([reference_onnx], repo, ServeOptions(ort_tensorrt=True))
    text = config(repo, "gapcnn")
    parsed = parse_config(text, "config")
    assert parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 16
    assert list(parsed.input[0].dims) == [3, -1, -1] and parsed.input[0].name == "images"
    assert list(parsed.output[0].dims) == [10] and parsed.output[0].label_filename == "labels.txt"
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    accelerator = parsed.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["trt_profile_min_shapes"] == "images:1x3x4x4"
    assert parsed.parameters["gap.min_height"].string_value == "4"  # the client preprocesses from these
    assert (repo / "gapcnn" / "1" / "model.onnx").read_bytes() == reference_onnx.read_bytes()
    assert (repo / "gapcnn" / "labels.txt").read_text().split() == [f"class{i}" for i in range(10)]
    assert check_repository(repo) == (["gapcnn"], [])
    assert parsed.instance_group[0].kind == parsed.instance_group[0].KIND_GPU  # TensorRT's accelerator needs one


@pytest.mark.parametrize("options, kind", [({}, "KIND_AUTO"), ({"ort_tensorrt": True}, "KIND_GPU"),
                                           ({"backend": "python"}, "KIND_CPU"), ({"kind": "KIND_GPU"}, "KIND_GPU")])
def test_the_instance_kind_is_what_the_backend_needs(tmp_path, reference_onnx, fp16_plan, options, kind):
    """Plain ONNX runs on either kind of machine: KIND_AUTO (model_config.proto: GPU instances where the listed
    GPUs are, CPU instances otherwise), so a repository for a CPU server loads there; a plan only on a GPU."""
    write_repository([reference_onnx], tmp_path / "repo", ServeOptions(**options))
    group = parse_config(config(tmp_path / "repo", "gapcnn"), "config").instance_group[0]
    assert group.Kind.Name(group.kind) == kind
    write_repository([fp16_plan], tmp_path / "plans", ServeOptions(name="gap_fp16"))
    group = parse_config(config(tmp_path / "plans", "gap_fp16"), "config").instance_group[0]
    assert group.Kind.Name(group.kind) == "KIND_GPU"


def test_plan_repository_follows_the_profiles(tmp_path, fp16_plan):
    repo = tmp_path / "repo"
    write_repository([fp16_plan], repo, ServeOptions(name="gap_fp16"))
    parsed = parse_config(config(repo, "gap_fp16"), "config")
    assert parsed.platform == "tensorrt_plan" and parsed.max_batch_size == 4  # the smaller profile max batch
    assert [list(g.profile) for g in parsed.instance_group] == [["0", "1"]]  # one group holding every profile
    warmup = parsed.model_warmup[0]
    assert warmup.batch_size == 1 and list(warmup.inputs["images"].dims) == [3, 224, 224]  # the opt shape
    assert check_repository(repo)[1] == []
    with pytest.raises(Exception, match="max_batch 8 is above what model.fp16.plan takes \\(4\\)"):
        write_repository([fp16_plan], tmp_path / "other", ServeOptions(max_batch=8))


def test_python_backend_repository(tmp_path, reference_onnx, fp16_plan):
    repo = tmp_path / "repo"
    write_repository([reference_onnx], repo, ServeOptions(backend="python", python_paths=("/opt/gap",)))
    parsed = parse_config(config(repo, "gapcnn"), "config")
    assert parsed.backend == "python" and parsed.parameters["artifact"].string_value == "gapcnn.onnx"
    assert parsed.instance_group[0].kind == parsed.instance_group[0].KIND_CPU
    assert (repo / "gapcnn" / "1" / "model.py").read_text().startswith('"""Triton python-backend model')
    assert check_repository(repo)[1] == []


BROKEN = [
    ("max_batch_size: 16", "max_batch_size: 64", "max_batch_size: config says 64", "plan"),
    ('name: "images"', 'name: "input"', "input.name: config says input, the model has images", "onnx"),
    ("data_type: TYPE_FP32 dims: [ 3, -1, -1 ]", "data_type: TYPE_FP16 dims: [ 3, -1, -1 ]",
     "input.data_type: config says TYPE_FP16", "onnx"),
    ("dims: [ 3, -1, -1 ]", "dims: [ 1, -1, -1 ]", "input.dims: config says [1, -1, -1]", "onnx"),
    ("dims: [ 10 ]", "dims: [ 1000 ]", "output.dims: config says [1000]", "onnx"),
    ('name: "logits"', 'name: "output0"', "output.name: config says output0", "onnx"),
    ('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"', "platform: config says tensorrt_plan", "onnx"),
    ('profile: [ "0", "1" ]', 'profile: [ "0", "7" ]', "instance_group.profile: config says 7", "plan"),
    ('name: "gapcnn"', 'name: "other"', "name: config says other", "onnx"),
    ("preferred_batch_size: [ 4, 8, 16 ]", "preferred_batch_size: [ 4, 32 ]",
     "dynamic_batching.preferred_batch_size: config says [32]", "onnx"),
    ("max_batch_size: 16", "max_batch: 16", "not a valid Triton ModelConfig: 3:1", "onnx"),
]


@pytest.mark.parametrize("old, new, message, kind", BROKEN)
def test_broken_configs_are_refused_with_their_reason(tmp_path, reference_onnx, fp16_plan, old, new, message, kind):
    repo = tmp_path / "repo"
    name = "gapcnn" if kind == "onnx" else "gap_fp16"
    write_repository([reference_onnx if kind == "onnx" else fp16_plan], repo,
                     ServeOptions(name=None if kind == "onnx" else name,
                                  max_batch=None if kind == "onnx" else 4))
    path = repo / name / "config.pbtxt"
    text = path.read_text()
    if kind == "plan" and old == "max_batch_size: 16":
        old = "max_batch_size: 4"
    assert old in text, text
    path.write_text(text.replace(old, new, 1))
    _, problems = check_repository(repo)
    assert any(message in str(p) for p in problems), "\n".join(map(str, problems))
    result = CliRunner().invoke(main, ["--check", str(repo)])
    assert_clean_failure(result, message)


def test_broken_layouts(tmp_path, reference_onnx):
    repo = tmp_path / "repo"
    write_repository([reference_onnx], repo)
    (repo / "gapcnn" / "labels.txt").write_text("a\nb\n")
    assert any("labels: config says 2 labels, the model has 10 classes" in str(p) for p in check_repository(repo)[1])
    (repo / "gapcnn" / "1" / "model.onnx").rename(repo / "gapcnn" / "1" / "other.onnx")
    assert any("layout: config says no 1/model.onnx" in str(p) for p in check_repository(repo)[1])


def test_cli_writes_and_refuses(tmp_path, reference_onnx):
    result = CliRunner().invoke(main, [str(reference_onnx), "-o", str(tmp_path / "repo"), "--name", "demo"])
    assert result.exit_code == 0, result.output
    assert re.search(r'name: "demo"', result.stdout)
    again = CliRunner().invoke(main, [str(reference_onnx), "-o", str(tmp_path / "repo"), "--name", "demo"])
    assert_clean_failure(again, "is never written over")
    assert_clean_failure(CliRunner().invoke(main, []), "give ARTIFACTS and -o REPO", code=2)


def test_several_artifacts_give_several_models(tmp_path, reference_onnx, fp16_plan):
    repo = tmp_path / "repo"
    written = write_repository([reference_onnx, fp16_plan], repo, ServeOptions(version=3))
    assert [p.name for p in written] == ["gapcnn", "model"]
    assert (repo / "model" / "3" / "model.plan").is_file() and (repo / "model" / "3" / "model.plan.json").is_file()
    assert check_repository(repo) == (["gapcnn", "model"], [])


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["/../x", "../outside", "a/b", ".hidden", "x" * 200, "new\nline"])
def test_a_model_name_never_becomes_a_path_outside_the_repository(tmp_path, reference_onnx, name):
    """Failed before: --name "/../x" wrote the model folder outside the repository."""
    repo = tmp_path / "work" / "repo"
    repo.parent.mkdir()
    result = CliRunner().invoke(main, [str(reference_onnx), "-o", str(repo), "--name", name])
    assert_clean_failure(result, "cannot be a file or folder name here")
    assert _tree(tmp_path / "work") == []  # nothing written anywhere, the repository included


def test_metadata_values_never_become_paths_and_collisions_write_nothing(tmp_path, reference_onnx):
    """Failed before: two artifacts named alike took their folder names from the metadata's precision, which
    can hold "x/../../outside", and a collision left a half-written repository."""
    import onnx

    from gap_deploy.runtime.errors import OutputPathError

    first, second = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    for path in (first, second):
        path.parent.mkdir()
        model = onnx.load(str(reference_onnx))
        for prop in model.metadata_props:
            if prop.key == "gap.precision":
                prop.value = "x/../../outside"
        onnx.save(model, str(path))
    repo = tmp_path / "repo"
    with pytest.raises(OutputPathError, match="cannot be a file or folder name"):
        write_repository([first, second], repo)
    assert not repo.exists() and _tree(tmp_path) == ["a", "a/m.onnx", "b", "b/m.onnx"]
    plain = tmp_path / "c" / "m.onnx"
    plain.parent.mkdir()
    plain.write_bytes(reference_onnx.read_bytes())
    with pytest.raises(UsageError, match="collide"):  # the same name twice, even with the fallback suffixes
        write_repository([plain, plain], repo)
    assert not repo.exists()


def test_the_checker_reads_version_folders_as_numbers(tmp_path, reference_onnx):
    """Failed before: version folders sorted as strings, so 2 was checked while Triton serves 10."""
    import shutil

    repo = tmp_path / "repo"
    write_repository([reference_onnx], repo, ServeOptions(version=2))
    shutil.copytree(repo / "gapcnn" / "2", repo / "gapcnn" / "10")
    (repo / "gapcnn" / "10" / "model.onnx").write_bytes(b"not a model")  # the version Triton would serve
    names, problems = check_repository(repo)
    assert problems and any("10" in str(p) for p in problems)


def test_a_warm_up_that_could_never_fit_is_refused(tmp_path, reference_onnx):
    """Failed before: a forged gap.min_height of 99999 put a 1x3x99999x99999 warm-up into the config."""
    import onnx

    from gap_deploy.runtime.errors import ResourceError

    model = onnx.load(str(reference_onnx))
    for prop in model.metadata_props:
        if prop.key in ("gap.min_height", "gap.min_width"):
            prop.value = "99999"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ResourceError):
        write_repository([path], tmp_path / "repo")
    assert not (tmp_path / "repo" / "m").exists()


def test_a_foreign_python_model_is_not_reported_as_checked(tmp_path, reference_onnx):
    """Failed before: --check said every config agrees for a python model.py that is not gap-deploy's."""
    repo = tmp_path / "repo"
    write_repository([reference_onnx], repo, ServeOptions(backend="python"))
    assert check_repository(repo)[1] == []
    (repo / "gapcnn" / "1" / "model.py").write_text("import os\n")
    problems = check_repository(repo)[1]
    assert any("not gap-deploy's (not checked" in str(p) for p in problems)


# ---- Triton's own load-time rules (gpu-review-4 D1, D2, L1; each failed before the fix) ---------------------

@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory, reference_ckpt):
    """gap-export's default: batch, height and width fixed (no --dynamic)."""
    from gap_deploy.exporter import export_onnx, load_model

    out = tmp_path_factory.mktemp("static") / "static.onnx"
    export_onnx(load_model(reference_ckpt), out, dynamic=False, imgsz=(64, 48))
    return out


def test_a_static_batch_onnx_is_served_without_batching(tmp_path, static_onnx):
    """onnxruntime_backend src/onnxruntime_utils.cc, CompareDimsSupported: with max_batch_size > 0 "the first
    dimension must be -1", so a [1, 3, 64, 48] model under max_batch_size 1 does not load. Failed before: gap-triton
    wrote max_batch_size 1 with dims [3, 64, 48] and --check passed it."""
    repo = tmp_path / "repo"
    write_repository([static_onnx], repo)
    parsed = parse_config(config(repo, "static"), "config")
    assert parsed.max_batch_size == 0 and list(parsed.input[0].dims) == [1, 3, 64, 48]
    assert not parsed.HasField("dynamic_batching")
    warm = parsed.model_warmup[0]
    assert warm.batch_size == 1 and list(warm.inputs["images"].dims) == [1, 3, 64, 48]
    assert check_repository(repo) == (["static"], [])
    path = repo / "static" / "config.pbtxt"
    text = path.read_text()
    path.write_text(text.replace("max_batch_size: 0", "max_batch_size: 1").replace("dims: [ 1, 3, 64, 48 ]",
                                                                                   "dims: [ 3, 64, 48 ]"))
    result = CliRunner().invoke(main, ["--check", str(repo)])
    assert_clean_failure(result, "max_batch_size: config says 1", "first dim of -1", "max_batch_size: 0")
    with pytest.raises(UsageError, match="fixed batch of 1"):
        write_repository([static_onnx], tmp_path / "other", ServeOptions(max_batch=4))


PER_PROFILE = """instance_group [
  { count: 1 kind: KIND_GPU gpus: [ 0 ] profile: [ "0" ] },
  { count: 1 kind: KIND_GPU gpus: [ 0 ] profile: [ "1" ] }
]"""


@pytest.mark.parametrize("layout, listed", [
    (PER_PROFILE, "[0]"), ("instance_group [ { count: 2 kind: KIND_GPU } ]", "[none: profile 0 only]")])
def test_a_group_without_every_profile_is_refused(tmp_path, fp16_plan, layout, listed):
    """model_config.proto, ModelInstanceGroup.profile: Triton picks among the profiles of the instance's own group
    (profile 0 when none is listed) and does not route requests by shape. Failed before: gap-triton wrote one group
    per profile, and --check passed that layout."""
    repo = tmp_path / "repo"
    write_repository([fp16_plan], repo, ServeOptions(name="m"))
    path = repo / "m" / "config.pbtxt"
    text = path.read_text()
    start, end = text.index("instance_group ["), text.index("]\n", text.index("instance_group [")) + 2
    path.write_text(text[:start] + layout + "\n" + text[end:])
    result = CliRunner().invoke(main, ["--check", str(repo)])
    assert_clean_failure(result, "instance_group[0].profile: config says " + listed,
                         "Triton does not route requests to an instance by shape", 'profile: [ "0", "1" ]')


def test_a_warm_up_outside_every_profile_is_refused(tmp_path, fp16_plan):
    """core src/backend_model_instance.cc, TritonModelInstance::WarmUp: a failed warm-up sample fails the
    instance, so the load. Failed before: only the warm-up's height against the model's minimum was checked."""
    repo = tmp_path / "repo"
    write_repository([fp16_plan], repo, ServeOptions(name="m"))
    path = repo / "m" / "config.pbtxt"
    path.write_text(path.read_text().replace("dims: [ 3, 224, 224 ]", "dims: [ 3, 600, 224 ]"))
    result = CliRunner().invoke(main, ["--check", str(repo)])
    assert_clean_failure(result, "model_warmup: config says shape 1x3x600x224", "a warm-up outside every profile")


def test_the_ort_tensorrt_accelerator_keeps_the_onnx_s_own_precision(tmp_path, reference_onnx):
    """onnxruntime_backend maps precision_mode FP16/INT8 to trt_fp16_enable/trt_int8_enable, which makes ONNX
    Runtime's TensorRT EP build a weakly typed network. Failed before: an FP16 model got precision_mode FP16."""
    import onnx

    model = onnx.load(str(reference_onnx))
    for prop in model.metadata_props:
        if prop.key == "gap.precision":
            prop.value = "fp16"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    repo = tmp_path / "repo"
    write_repository([path], repo, ServeOptions(ort_tensorrt=True))
    accelerator = parse_config(config(repo, "m"), "config").optimization.execution_accelerators
    params = accelerator.gpu_execution_accelerator[0].parameters
    assert "precision_mode" not in params and params["trt_engine_cache_enable"] == "1"


def test_a_version_compatible_plan_says_what_tritonserver_needs(tmp_path, fp16_plan):
    """tensorrt_backend README: version-compatible plans load only with
    --backend-config=tensorrt,version-compatible=true."""
    manifest = EngineManifest.read(fp16_plan)
    import dataclasses

    dataclasses.replace(manifest, version_compatible=True).write(fp16_plan)
    result = CliRunner().invoke(main, [str(fp16_plan), "-o", str(tmp_path / "repo"), "--name", "vc"])
    assert result.exit_code == 0, result.output
    assert "--backend-config=tensorrt,version-compatible=true" in result.output
    assert (tmp_path / "repo" / "vc" / "config.pbtxt").read_text().startswith("# a version-compatible plan")
    assert check_repository(tmp_path / "repo")[1] == []


def test_a_version_folder_of_non_ascii_digits_is_not_a_version(tmp_path, reference_onnx):
    """Failed before: "١" passed str.isdigit(), so --check read it as a version Triton serves."""
    repo = tmp_path / "repo"
    write_repository([reference_onnx], repo)
    (repo / "gapcnn" / "1").rename(repo / "gapcnn" / "١")
    _, problems = check_repository(repo)
    assert any("no numbered version folder" in str(p) for p in problems)


@pytest.mark.parametrize("where", ["artifact", "in_repo", "in_checked"])
def test_gap_triton_json_never_lands_on_an_input_or_in_a_repository(tmp_path, reference_onnx, where):
    """--json over the artifact, inside the repository it writes, or inside the one --check reads: refused before
    anything is written, the artifact unchanged."""
    import shutil

    from click.testing import CliRunner

    from gap_deploy.exporter.cli.triton import main
    from tests.conftest import assert_clean_failure

    model = tmp_path / "m.onnx"
    shutil.copy(reference_onnx, model)
    before = model.read_bytes()
    checked = tmp_path / "checked"
    write_repository([model], checked, ServeOptions())
    args = {"artifact": [str(model), "-o", str(tmp_path / "repo"), "--json", str(model)],
            "in_repo": [str(model), "-o", str(tmp_path / "repo"), "--json", str(tmp_path / "repo" / "x.json")],
            "in_checked": ["--check", str(checked), "--json", str(checked / "m" / "config.pbtxt")]}[where]
    result = CliRunner().invoke(main, args)
    assert_clean_failure(result, "--json")
    assert model.read_bytes() == before and not (tmp_path / "repo").exists()
    assert (checked / "m" / "config.pbtxt").read_text().startswith('name: "m"')
