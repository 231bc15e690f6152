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
    old_name,
    report_errors,
    sign_key_option,
    write_json,
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
@click.option("--calib-imgsz", "calib_size", metavar="N|HxW", help="The size calibration images are resized to. "
              "Default: the model's export size (from its metadata), else 224.")
@old_name("--calib-size", "--calib-imgsz", "calib_size")
@precision_options
@engine_options
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the engine at min/opt/max of every profile against ONNX Runtime (CPU) before writing.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write what was built (the engine, its manifest, the parity figures) as JSON.")
@sign_key_option
@report_errors
def main(model, output, precision, calib, calib_size, variant_args, engine_args, verify, json_path):
    """Build a TensorRT engine from MODEL.onnx (TensorRT 10 or 11, strongly typed).

    Needs the full TensorRT and an NVIDIA GPU (pip install 'gap-deploy[gpu]'). Example:

        gap-build model.onnx --precision fp16 --min 1x3x32x32 --opt 1x3x224x224 --max 8x3x512x512
    """
    check_input_file(model, "ONNX model")
    # the size a converted precision calibrates and is checked at (read from the model only when one is asked)
    size = image_size(calib_size) if calib_size else export_size(model) if precision else (224, 224)
    variant = variant_options(precision, calib, size, variant_args)
    output = output or engine_path(model, precision)
    outputs = {"-o/--output": output, "the engine manifest": manifest_path(output), "--json": json_path}
    if variant is not None:
        outputs[f"the {precision} model"] = variant_path(model, precision)
    check_distinct({"MODEL": model, "--calib": calib, "--timing-cache": engine_args.timing_cache}, outputs)
    config = build_config(engine_args)
    from gap_deploy.exporter.builder import build_with_precision

    result = build_with_precision(model, output, variant=variant, config=config, verify=verify, log=info)
    print_build(result, variant.precision if variant else "fp32")
    if json_path:
        write_json(json_path, build_payload(model, result))
        info(f"Wrote {json_path}")


def export_size(model: Path) -> tuple[int, int]:
    """The export size gap-export recorded in the model's metadata (what the model was made for), else 224."""
    from gap_deploy.runtime.artifact import describe

    meta = describe(model).metadata
    return (meta.export_height, meta.export_width) if meta.export_height and meta.export_width else (224, 224)


def build_payload(model: Path, result) -> dict:
    """gap-build --json: the engine, its manifest, and the parity reports (engine and precision variant)."""
    variant = result.variant
    return {"model": str(model), "engine": str(result.build.plan), "manifest": result.build.manifest.fields(),
            "layer_precisions": result.build.layer_precisions, "seconds": result.build.seconds,
            "parity": result.engine_parity.to_dict() if result.engine_parity is not None else None,
            "precision_variant": None if variant is None else {
                "path": str(result.source), "precision": variant.precision, "sweep": variant.sweep.to_dict()}}


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.build
    main()
