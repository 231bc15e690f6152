"""runtime.load and Session: backend choice, input checks, threads, mixed sizes, bad files."""

import json
import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner

ort = pytest.importorskip("onnxruntime")

from gap_deploy import runtime  # noqa: E402
from gap_deploy.runtime.errors import ArtifactError, BackendUnavailableError, InputError, InputTypeError, UsageError  # noqa: E402


@pytest.fixture(scope="module")
def session(reference_onnx):
    with runtime.load(reference_onnx) as s:
        yield s


@pytest.fixture(scope="module")
def bare(reference_onnx):
    plain = ort.InferenceSession(str(reference_onnx), providers=["CPUExecutionProvider"])
    return lambda x: plain.run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})[0]


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_session_describes_the_model(session):
    assert session.backend == "ort-cpu"
    assert session.inputs[0].name == "images" and session.inputs[0].shape == ("batch", 3, "height", "width")
    assert session.outputs[0].name == "logits"
    assert session.metadata.num_classes == 10 and session.metadata.min_height == 4


def test_unavailable_backend_is_an_error_listing_what_works(reference_onnx):
    with pytest.raises(BackendUnavailableError, match=r"'ort-cuda' is not available(.|\n)*available here: ort-cpu"):
        runtime.load(reference_onnx, backend="ort-cuda")


def test_engine_backend_for_onnx_is_refused(reference_onnx):
    with pytest.raises(UsageError, match="cannot run an ONNX model"):
        runtime.load(reference_onnx, backend="trt")


def test_available_backends_reports_reasons():
    status = runtime.available_backends()
    assert status["ort-cpu"] is None
    assert set(status) == {"ort-cpu", "ort-plain", "ort-cuda", "ort-trt", "trt", "ov-cpu", "ncnn-cpu", "litert-cpu",
                           "et-xnnpack"}
    assert status["ort-plain"] is None
    assert all(v is None or isinstance(v, str) and v for v in status.values())


@pytest.mark.parametrize("images, error, message", [
    (rand(3, 32, 32), InputError, r"must be 4-D \(N, C, H, W\); got 3-D(.|\n)*images\[None\]"),
    (rand(1, 1, 3, 32, 32), InputError, "must be 4-D"),
    (rand(0, 3, 32, 32), InputError, "batch size 0"),
    (rand(1, 1, 32, 32), InputError, "has 1 channels; this model takes 3"),
    (rand(1, 32, 32, 3), InputError, r"has 32 channels(.|\n)*NHWC"),
    (rand(1, 3, 3, 40), InputError, "is 3x40, below this model's minimum of 4x4"),
    (rand(1, 3, 40, 2), InputError, "below this model's minimum"),
    (np.zeros((1, 3, 8, 8), np.uint8), InputTypeError, r"dtype uint8; this model takes float32(.|\n)*cast=True"),
    (np.zeros((1, 3, 8, 8), np.int64), InputTypeError, "dtype int64"),
    ([[[[0.0]]]], InputTypeError, "must be a numpy.ndarray, got list"),
])
def test_bad_inputs_are_caught_before_the_backend(session, images, error, message):
    with pytest.raises(error, match=message):
        session.run(images)


def test_errors_are_value_and_type_errors(session):
    with pytest.raises(ValueError):
        session.run(rand(1, 2, 8, 8))
    with pytest.raises(TypeError):
        session.run(np.zeros((1, 3, 8, 8), np.int32))


def test_float64_is_converted_and_gives_the_right_answer(session, bare):
    x = rand(2, 3, 37, 53, dtype=np.float64)
    np.testing.assert_allclose(session.run(x), bare(x.astype(np.float32)), rtol=1e-6)


def test_float16_input_is_widened(session, bare):
    x = rand(1, 3, 16, 16).astype(np.float16)
    np.testing.assert_array_equal(session.run(x), bare(x.astype(np.float32)))


def test_integer_input_only_with_cast(session, bare):
    x = np.random.default_rng(0).integers(0, 3, (1, 3, 9, 9)).astype(np.int64)
    np.testing.assert_array_equal(session.run(x, cast=True), bare(x.astype(np.float32)))


@pytest.mark.parametrize("view", ["transposed", "strided", "fortran"])
def test_non_contiguous_inputs_give_the_right_answer(session, bare, view):
    base = rand(2, 3, 40, 60, seed=3)
    if view == "transposed":
        x = rand(2, 3, 60, 40, seed=3).transpose(0, 1, 3, 2)
    elif view == "strided":
        x = rand(2, 3, 80, 120, seed=3)[:, :, ::2, ::2]
    else:
        x = np.asfortranarray(base)
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(session.run(x), bare(np.ascontiguousarray(x)))


def test_nan_check_is_optional(session):
    x = rand(1, 3, 8, 8)
    x[0, 0, 0, 0] = np.nan
    assert np.isnan(session.run(x)).any()
    with pytest.raises(InputError, match="NaN or Inf"):
        session.run(x, check_finite=True)


def _mixed(n=64, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(4, 4), (37, 53), (16, 16), (64, 31), (5, 9), (48, 48)]
    return [rng.standard_normal((3, *sizes[i % len(sizes)])).astype(np.float32) for i in range(n)]


def test_run_many_equals_one_by_one_on_mixed_sizes(session, bare, monkeypatch):
    images = _mixed(40)
    calls = []
    real = session._runner.infer
    monkeypatch.setattr(session._runner, "infer", lambda x: calls.append(x.shape) or real(x))
    results = session.run_many(images, max_batch=4)
    for image, got in zip(images, results):
        np.testing.assert_allclose(got, bare(image[None])[0], rtol=1e-5, atol=1e-6)
    assert len(calls) < len(images)  # equal sizes were batched ...
    assert all(b <= 4 for b, *_ in calls)  # ... within the bound
    assert all(len({s for s in calls if s[2:] == c[2:]}) >= 1 for c in calls)
    assert sum(b for b, *_ in calls) == len(images)  # every image ran exactly once, never padded


def test_run_many_rejects_batches(session):
    with pytest.raises(InputError, match="list of CHW images; item 1 is 4-D"):
        session.run_many([rand(3, 8, 8), rand(1, 3, 8, 8)])


def test_eight_threads_share_a_session(session):
    images = _mixed(64, seed=5)
    serial = [session.run(x[None]) for x in images]
    results = [None] * len(images)

    def worker(k):
        for i in range(k, len(images), 8):
            results[i] = session.run(images[i][None])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("directory", "is a directory"), ("empty", "is empty"),
    ("random", "cannot read ONNX model"), ("truncated", "cannot read ONNX model"),
])
def test_bad_onnx_files(tmp_path, reference_onnx, case, message):
    path = tmp_path / "bad.onnx"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.touch()
    elif case == "random":
        path.write_bytes(os.urandom(3000))
    elif case == "truncated":
        path.write_bytes(reference_onnx.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match=message):
        runtime.load(path)


def test_external_data_outside_the_folder_is_refused(tmp_path, reference_onnx):
    import onnx

    model = onnx.load(str(reference_onnx))
    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.external_data.add(key="location", value="../../etc/passwd")
    path = tmp_path / "evil.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match="points outside the model's folder"):
        runtime.load(path)


def test_static_model_checks_fixed_dims(tmp_path, reference_ckpt):
    pytest.importorskip("torch")
    from gap_deploy.exporter import export_onnx, load_model

    out = tmp_path / "static.onnx"
    export_onnx(load_model(reference_ckpt), out, dynamic=False, imgsz=(32, 32), verify=False)
    with runtime.load(out) as s:
        assert s.run(rand(1, 3, 32, 32)).shape == (1, 10)
        with pytest.raises(InputError, match="height 40; this static model takes only 32(.|\n)*--dynamic"):
            s.run(rand(1, 3, 40, 32))


@pytest.fixture(scope="module")
def batch4_onnx(tmp_path_factory, reference_ckpt):
    pytest.importorskip("torch")
    from gap_deploy.exporter import export_onnx, load_model

    out = tmp_path_factory.mktemp("static4") / "static4.onnx"
    export_onnx(load_model(reference_ckpt), out, dynamic=False, imgsz=(32, 32), batch=4, verify=False)
    return out


def test_static_batch_model_runs_a_short_last_chunk(batch4_onnx, reference_onnx):
    images = [rand(1, 3, 32, 32, seed=i)[0] for i in range(6)]  # 4 + a short chunk of 2
    with runtime.load(batch4_onnx) as static, runtime.load(reference_onnx) as dynamic:
        got = static.run_many(images)
        want = [dynamic.run(x[None])[0] for x in images]  # each image alone, on the dynamic export
    assert len(got) == 6
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gap_run_classifies_with_a_static_batch_model(tmp_path, batch4_onnx):
    from PIL import Image

    from gap_deploy.runtime.cli.run import main

    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(tmp_path / "wrong_size.png")
    result = CliRunner().invoke(main, [str(batch4_onnx), str(tmp_path), "--format", "json"])
    assert result.exit_code == 1  # one file has the wrong size for this static model
    report = json.loads(result.stdout)
    assert len(report["results"]) == 5
    assert [e["file"] for e in report["errors"]] == [str(tmp_path / "wrong_size.png")]
    assert "height 40; this static model takes only 32" in report["errors"][0]["error"]
