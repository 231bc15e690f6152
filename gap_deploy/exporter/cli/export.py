"""gap-export: a PyTorch GAP CNN -> ONNX, verified against PyTorch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from gap_deploy.exporter.cli.options import (
    build_config,
    engine_options,
    grouped,
    precision_options,
    print_build,
    print_variant,
    variant_options,
)
from gap_deploy.exporter.defaults import DEFAULT_OPSET, SUPPORTED_OPSETS
from gap_deploy.runtime.cli.common import (
    FiniteFloat,
    checkpoint_options,
    fail,
    floats,
    gap_command,
    image_size,
    info,
    old_name,
    report_errors,
    shape_option,
    sign_key_option,
    write_json,
)
from gap_deploy.runtime.errors import ArtifactError
from gap_deploy.runtime.files import check_distinct, check_input_file, check_output_path
from gap_deploy.runtime.naming import engine_path, manifest_path, onnx_for_checkpoint, variant_path
from gap_deploy.runtime.parity import FP32


def _read_class_names(path: Path) -> tuple[str, ...]:
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read class names from {path}: {exc}") from None
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ArtifactError(f"{path} must hold a JSON list of strings, one per class.")
        return tuple(names)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def preprocess_job(args):
    """gap-export's preprocessing options (a namespace from ``grouped``) as a PreprocessJob."""
    from gap_deploy.exporter.pipeline import PreprocessJob

    fields = ("resize", "crop_fraction", "interpolation", "antialias", "space", "channel_order", "pixel_scale",
              "pad_value", "orientation")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    if "pixel_scale" in overrides:
        overrides["pixel_scale"] = float(overrides["pixel_scale"])
    return PreprocessJob(source=args.preprocess, overrides=overrides, check=args.check_transform, images=args.images)


preprocess_options = grouped("preprocess_args", [
    click.option("--preprocess", metavar="FILE.py:fn|module:fn|timm",
                 help="Where the preprocessing comes from: a function returning your torchvision eval transform "
                      "(Resize, CenterCrop, ToTensor, Normalize; v1 or v2), or timm (the model's pretrained_cfg). "
                      "It is stored in every artifact and checked on image files before anything is written."),
    click.option("--check-transform", metavar="FILE.py:fn|module:fn",
                 help="The transform the check runs against the contract. Default: the --preprocess transform."),
    click.option("--images", type=click.Path(path_type=Path),
                 help="Image files for the preprocessing check (up to 32). Default: images drawn with natural "
                      "statistics: 500x375, 375x500, 1280x720, 33x97, gray, RGBA and 16-bit."),
    click.option("--resize", type=click.Choice(["none", "stretch", "shorter-side", "letterbox"]),
                 help="Resize policy (overrides --preprocess): none (each image's own size), stretch, shorter-side "
                      "(+ centre crop), letterbox (fit and pad). Default without --preprocess: none."),
    click.option("--crop-fraction", type=click.FloatRange(0.05, 1.0),
                 help="Share of the resized image the centre crop keeps (shorter-side/stretch), e.g. 0.875."),
    click.option("--interpolation", type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos"]),
                 help="Resize interpolation (overrides --preprocess). Default: bilinear."),
    click.option("--antialias/--no-antialias", default=None,
                 help="Antialias when downscaling (--no-antialias needs --resize-space float)."),
    click.option("--resize-space", "space", type=click.Choice(["uint8", "float"]),
                 help="Where the resize runs: uint8 (Pillow on the 8-bit image, as torchvision on PIL images) or "
                      "float (torch's interpolate, as torchvision on float tensors). Default: float."),
    click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), help="Model input channel order. Default: RGB."),
    click.option("--pixel-scale", type=click.Choice(["1", "255"]),
                 help="Pixels run 0-1 (ToTensor) or 0-255 before Normalize. Default: 1."),
    click.option("--pad-value", type=click.IntRange(0, 255), help="Letterbox border value (0-255). Default: 0."),
    click.option("--orientation", type=click.Choice(["exif", "ignore"]),
                 help="exif: turn each photo as its EXIF Orientation tag says (as a photo viewer shows it; phones "
                      "store most photos sideways with the tag); ignore: the stored pixels, as Image.open gives "
                      "them. Default: exif."),
])


@gap_command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="ONNX file to write. Default: MODEL with .onnx (.fp16.onnx / .int8.onnx for variants).")
@click.option("--dynamic", is_flag=True,
              help="Symbolic batch, height and width (any size >= the model's minimum). "
                   "Without it the model is static at --batch-size x C x --imgsz.")
@click.option("--imgsz", metavar="N|HxW",
              help="Example (static: the only) input size. Default: the size the preprocessing makes (the "
                   "transform's CenterCrop), else 224.")
@click.option("--batch-size", "batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Batch size of a static export.")
@old_name("--batch", "--batch-size", "batch", type=click.IntRange(min=1))
@checkpoint_options("CHECKPOINT")
@click.option("--class-names", type=click.Path(path_type=Path, dir_okay=False),
              help="Text file with one class name per line (or a JSON list), stored in the ONNX metadata.")
@click.option("--mean", metavar="M1,M2,...", help="Input normalization mean for pixels in [0, 1], stored in "
              "the metadata. Default: ImageNet's (0.485,0.456,0.406) for 3 channels, 0.5 otherwise.")
@click.option("--std", metavar="S1,S2,...", help="Input normalization std. Default: ImageNet's "
              "(0.229,0.224,0.225) for 3 channels, 0.5 otherwise.")
@preprocess_options
@click.option("--opset", default=DEFAULT_OPSET, show_default=True,
              type=click.IntRange(SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1), help="ONNX opset.")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxslim (parity is checked after it).")
@click.option("--keep-stack-traces", is_flag=True,
              help="Keep the exporter's per-node source stack traces in the ONNX (they hold this machine's absolute "
                   "paths and source lines; removed by default, module names are kept).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare ONNX Runtime with PyTorch on a sweep of shapes before writing.")
@click.option("--verify-shapes", metavar="BxCxHxW|HxW,...",
              help="Shapes to verify, comma-separated. Default: the export size, the minimum, 37x53, "
                   "an odd size near the minimum, batch 3 and 2, and 384x512.")
@click.option("--atol", type=FiniteFloat(), default=FP32.atol, show_default=True, help="Max absolute error allowed.")
@click.option("--rtol", type=FiniteFloat(), default=FP32.rtol, show_default=True,
              help="Max relative error ||onnx - torch|| / ||torch|| allowed.")
@click.option("--json", "report", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write the export summary and the parity report as JSON.")
@old_name("--report", "--json", "report", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Also write an FP16 (MODEL.fp16.onnx) or INT8 QDQ (MODEL.int8.onnx; MODEL.int8-cpu.onnx with "
                   "--int8-layout cpu) variant, verified against "
                   "the FP32 model on the CPU.")
@click.option("--calib", type=click.Path(path_type=Path),
              help="INT8 calibration data: a folder of images (resized to --imgsz) or an .npy NCHW array.")
@click.option("--int8-layout", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="INT8 graph: tensorrt (symmetric: what gap-build and TensorRT take) or cpu (UINT8 activations, "
                   "Relu folded: integer kernels on ONNX Runtime's CPU provider; TensorRT cannot build it).")
@precision_options
@click.option("--engine", is_flag=True, help="Also build a TensorRT engine (needs TensorRT and a GPU; see gap-build).")
@engine_options
@click.option("--summary", is_flag=True,
              help="Print the layer table (output shape and parameters per layer at --imgsz) and exit.")
@sign_key_option
@report_errors
def main(model, output, dynamic, imgsz, batch, arch, num_classes, trust_checkpoint, class_names, mean, std,
         preprocess_args, opset, simplify, keep_stack_traces, verify, verify_shapes, atol, rtol, report, precision,
         calib, int8_layout, variant_args, engine, engine_args, summary):
    """Export the GAP CNN in MODEL (a state_dict .pt/.pth, a checkpoint dict or .safetensors) to ONNX.

    The model is verified against PyTorch with ONNX Runtime before the file is written; a model that
    fails verification is not written. Example:

        gap-export model.pt --dynamic
    """
    check_input_file(model, "checkpoint")  # before torch is imported: a typo answers at once
    size = image_size(imgsz or "224")
    preprocess = replace(preprocess_job(preprocess_args), size_given=imgsz is not None)
    if preprocess.images is not None and not preprocess.images.is_dir():
        raise click.BadParameter(f"--images {preprocess.images} is not a folder of images.", param_hint="--images")
    mean_v, std_v = floats(mean), floats(std)
    names = _read_class_names(class_names) if class_names else None
    out_path = output or onnx_for_checkpoint(model)
    variant = variant_options(precision, calib, size, variant_args, int8_layout)  # INT8 without --calib: exit 2
    if summary:
        from gap_deploy.exporter.checkpoint import load_model  # torch is imported here, after argument checks
        from gap_deploy.exporter.summary import layer_table

        loaded = load_model(model, arch=arch, num_classes=num_classes, trust_checkpoint=trust_checkpoint)
        click.echo(layer_table(loaded.module, loaded.in_channels, *size))
        return
    check_output_path(out_path)
    if report:
        check_output_path(report)
    outputs = {"-o/--output": out_path, "--json": report}
    if variant is not None:
        outputs[f"the {precision} model"] = variant_path(out_path, precision, int8_layout)
    if engine:
        plan = engine_path(out_path, precision)
        outputs.update({"the engine": plan, "the engine manifest": manifest_path(plan)})
    check_distinct({"MODEL": model, "--calib": calib, "--class-names": class_names,
                    "--timing-cache": engine_args.timing_cache, "--images": preprocess.images}, outputs)
    engine_config = build_config(engine_args) if engine else None
    shapes = None
    if verify_shapes:
        shapes = [verify_shape(text.strip()) for text in verify_shapes.split(",") if text.strip()]
    from gap_deploy.exporter.onnx_export import ExportOptions  # torch is imported here, after argument checks
    from gap_deploy.exporter.pipeline import ExportJob, run_export
    from gap_deploy.runtime.errors import ParityError
    from gap_deploy.runtime.parity import Tolerance

    job = ExportJob(model, out_path, arch=arch, num_classes=num_classes, trust_checkpoint=trust_checkpoint,
                    options=ExportOptions(dynamic, size, batch, opset, names, mean_v, std_v, simplify,
                                          keep_stack_traces),
                    verify=verify, verify_shapes=shapes, tolerance=Tolerance(atol=atol, rtol=rtol),
                    variant=variant, engine=engine_config, preprocess=preprocess)
    try:
        outcome = run_export(job, log=info)
    except ParityError as exc:
        if exc.report is not None:
            click.echo(exc.report.format_table())
        if report:
            write_json(report, {"model": str(model), "output": None,
                                "parity": exc.report.to_dict() if exc.report else None})
        fail(str(exc))
    print_outcome(outcome)
    if report:
        write_json(report, report_payload(model, outcome))
        info(f"Wrote {report}")


def verify_shape(text: str) -> tuple[int, ...]:
    """``BxCxHxW`` -> 4 dims; ``HxW`` -> (H, W), completed with the model's channels once it is loaded."""
    if len(text.lower().split("x")) == 2:
        return shape_option(text, 1)[2:]
    return shape_option(text)


def print_outcome(outcome) -> None:
    for note in outcome.notes:
        info(f"Note: {note}")
    exp = outcome.export
    if outcome.preprocess_check is not None:
        click.echo(outcome.preprocess_check.format())
    else:
        contract = exp.metadata.preprocessing()
        click.echo("Preprocessing contract (not checked: no transform given, see --preprocess):\n" + "\n".join(
            f"  {step:>9}  {text}" for step, text in contract.steps()))
    if outcome.parity is not None:
        click.echo(outcome.parity.format_table())
    dims = ", ".join(map(str, exp.input_dims))
    click.echo(f"Wrote {outcome.path}: input images [{dims}] float32, output logits "
               f"[{', '.join(map(str, exp.output_dims))}], minimum size "
               f"{exp.metadata.min_height}x{exp.metadata.min_width}, opset {exp.opset}"
               f"{', simplified' if exp.simplified else ''} ({exp.seconds:.1f} s).")
    if outcome.variant is not None and outcome.build is None:
        print_variant(outcome.variant)
        path = outcome.variant_path
        click.echo(f"Wrote {path} ({outcome.variant.precision}, {path.stat().st_size / 1e6:.2f} MB)")
    if outcome.build is not None:
        print_build(outcome.build, outcome.variant.precision if outcome.variant else "fp32")


def _layout_of(variant) -> str | None:
    from gap_deploy.exporter.precision import metadata_of

    return metadata_of(variant.model).int8_layout


def report_payload(model, outcome) -> dict:
    exp, variant = outcome.export, outcome.variant
    variant_report = None
    if variant is not None:
        variant_report = {"path": str(outcome.variant_path or (outcome.build and outcome.build.source)),
                          "precision": variant.precision, "sweep": variant.sweep.to_dict(),
                          "real_data": variant.real_data.to_dict() if variant.real_data else None,
                          "fp32_layers": list(variant.fp32_layers), "fallback_steps": list(variant.fallback_steps),
                          "before_fallback": variant.before_fallback.to_dict() if variant.before_fallback else None,
                          "int8_layout": _layout_of(variant), "latency": variant.latency}
    return {"precision_variant": variant_report, "model": str(model), "output": str(outcome.path),
            "arch": outcome.arch, "dynamic": exp.dynamic, "input_dims": list(exp.input_dims),
            "output_dims": list(exp.output_dims), "opset": exp.opset, "metadata": exp.metadata.to_props(),
            "notes": list(outcome.notes), "parity": outcome.parity.to_dict() if outcome.parity else None,
            "preprocess": (outcome.preprocess_check.to_dict() if outcome.preprocess_check is not None
                           else {"contract": dict(exp.metadata.preprocessing().steps()), "checked": False})}


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.export
    main()
