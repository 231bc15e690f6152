"""End-to-end on real hardware: build engines and run them. Skipped without TensorRT and a GPU.

Run with `make test-gpu` or scripts/gpu_check.sh on a machine with an NVIDIA GPU and
`pip install -e '.[gpu,dev]'`.
"""

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.trt]


def _need_gpu_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("the full TensorRT is not installed (pip install 'gap-deploy[gpu]')")
    from runtime.backends.trt import trt_works

    works, why = trt_works()
    if not works:
        pytest.skip(f"no usable CUDA device: {why}")


@pytest.mark.parametrize("precision, rtol", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_build_and_run_engine(tmp_path, reference_onnx, precision, rtol):
    _need_gpu_tensorrt()
    import runtime
    from exporter.builder import BuildConfig, Profile, build_with_precision

    src = tmp_path / "m.onnx"
    src.write_bytes(reference_onnx.read_bytes())
    profile = Profile((1, 3, 4, 4), (1, 3, 64, 64), (4, 3, 256, 256))
    result = build_with_precision(src, tmp_path / f"m.{precision}.plan", precision=precision,
                                  config=BuildConfig(profiles=(profile,)), calib_size=(64, 64))
    assert result.engine_parity.passed and result.build.manifest.precision == precision
    with runtime.load(result.build.plan) as engine, runtime.load(src, "ort-cpu") as cpu:
        for shape in [(1, 3, 4, 4), (2, 3, 37, 53), (1, 3, 256, 200)]:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            a, b = engine.run(x), cpu.run(x)
            assert np.linalg.norm(a - b) / np.linalg.norm(b) < rtol
