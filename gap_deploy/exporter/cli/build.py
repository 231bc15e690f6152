"""gap-build: ONNX -> TensorRT engine with dynamic-shape profiles, checked against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import click

from gap_deploy.exporter.cli.options import (
    build_config,
    engine_options,
    precision_options,
    print_build,
    variant_options,
)
from gap_deploy.runtime.cli.common import (
    gap_command,
    image_size,
    info,
    report_errors,
    sign_key_option,
)
from gap_deploy.runtime.files import check_distinct, check_input_file
from gap_deploy.runtime.naming import engine_path, manifest_path, variant_path


@gap_command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Engine file. Default: MODEL with .plan "
              "(MODEL.fp16.plan etc. for a converted precision). The manifest goes to OUTPUT.json.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Convert the FP32 ONNX first (verified on the CPU), then build. Default: the ONNX's own.")
@click.option("--calib", type=click.Path(path_type=Path), help="INT8 calibration: a folder of images or an .npy "
              "NCHW array (normalized).")
@click.option("--calib-size", default="224", show_default=True, metavar="N|HxW", help="Calibration image size.")
@precision_options
@engine_options
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the engine at min/opt/max of every profile against ONNX Runtime (CPU) before writing.")
@sign_key_option
@report_errors
def main(model, output, precision, calib, calib_size, variant_args, engine_args, verify):
    """Build a TensorRT engine from MODEL.onnx (TensorRT 10 or 11, strongly typed).

    Needs the full TensorRT and an NVIDIA GPU (pip install 'gap-deploy[gpu]'). Example:

        gap-build model.onnx --precision fp16 --min 1x3x32x32 --opt 1x3x224x224 --max 8x3x512x512
    """
    check_input_file(model, "ONNX model")
    size = image_size(calib_size)
    variant = variant_options(precision, calib, size, variant_args)
    output = output or engine_path(model, precision)
    outputs = {"-o/--output": output, "the engine manifest": manifest_path(output)}
    if variant is not None:
        outputs[f"the {precision} model"] = variant_path(model, precision)
    check_distinct({"MODEL": model, "--calib": calib, "--timing-cache": engine_args.timing_cache}, outputs)
    config = build_config(engine_args)
    from gap_deploy.exporter.builder import build_with_precision

    result = build_with_precision(model, output, variant=variant, config=config, verify=verify, log=info)
    print_build(result, variant.precision if variant else "fp32")


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.build
    main()
