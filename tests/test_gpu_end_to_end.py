"""End-to-end on real hardware: build engines and run them. Skipped without TensorRT and a GPU.

Run with `make test-gpu` or scripts/gpu_check.sh on a machine with an NVIDIA GPU and
`pip install -e '.[gpu-cu13,test]'` (or gpu-cu12).
"""

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.trt]


def _need_gpu_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("the full TensorRT is not installed (pip install 'gap-deploy[gpu]')")
    from gap_deploy.runtime.backends.trt import trt_works

    works, why = trt_works()
    if not works:
        pytest.skip(f"no usable CUDA device: {why}")


# gap-build clears TF32 unless --tf32 is given (builder.create_config), so FP32 is held to the GPU FP32 tolerance
@pytest.mark.parametrize("precision, rtol", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_build_and_run_engine(tmp_path, reference_onnx, precision, rtol):
    _need_gpu_tensorrt()
    from gap_deploy import runtime
    from gap_deploy.exporter.builder import BuildConfig, Profile, build_with_precision
    from gap_deploy.exporter.precision import VariantOptions

    src = tmp_path / "m.onnx"
    src.write_bytes(reference_onnx.read_bytes())
    profile = Profile((1, 3, 4, 4), (1, 3, 64, 64), (4, 3, 256, 256))
    variant = None if precision == "fp32" else VariantOptions(precision, calib_size=(64, 64))
    result = build_with_precision(src, tmp_path / f"m.{precision}.plan", variant=variant,
                                  config=BuildConfig(profiles=(profile,)))
    assert result.engine_parity.passed and result.build.manifest.precision == precision
    with runtime.load(result.build.plan) as engine, runtime.load(src, "ort-cpu") as cpu:
        for shape in [(1, 3, 4, 4), (2, 3, 37, 53), (1, 3, 256, 200)]:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            a, b = engine.run(x), cpu.run(x)
            assert np.linalg.norm(a - b) / np.linalg.norm(b) < rtol


def test_bench_an_engine_against_torch_on_the_gpu(tmp_path, reference_onnx, reference_ckpt):
    _need_gpu_tensorrt()
    import json

    from click.testing import CliRunner

    from gap_deploy.exporter.builder import BuildConfig, Profile, build_with_precision
    from gap_deploy.runtime.cli.bench import main

    plan = tmp_path / "m.plan"
    build_with_precision(reference_onnx, plan, config=BuildConfig(profiles=(
        Profile((1, 3, 4, 4), (1, 3, 224, 224), (8, 3, 256, 256)),)))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, [str(plan), "--shape", "1x3x224x224", "--shape", "8x3x128x96", "--torch",
                                       str(reference_ckpt), "--json", str(out), "--cuda-graph", "--duration", "1"])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    trt_rows = [r for r in rows if r["backend"] == "trt"]
    assert all(r["gpu_ms"]["compute"]["median"] > 0 and r["parity"]["passed"] for r in trt_rows)
