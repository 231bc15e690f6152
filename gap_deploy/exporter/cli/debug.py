"""gap-debug: the first layer where an artifact departs from PyTorch, named by the PyTorch module that made it."""

from __future__ import annotations

from pathlib import Path

import click

from gap_deploy.runtime.backends.table import ENGINE_SUFFIXES
from gap_deploy.runtime.cli.common import (
    FiniteFloat,
    checkpoint_options,
    gap_command,
    image_size,
    info,
    report_errors,
    shape_option,
    write_json,
)
from gap_deploy.runtime.files import check_distinct, check_input_file, check_output_path
from gap_deploy.runtime.layers import DEFAULT_CHUNK


@gap_command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@checkpoint_options("CHECKPOINT")
@click.option("--shape", "shapes", multiple=True, metavar="BxCxHxW",
              help="Random inputs of this shape (repeatable). Default: 1 x C x the export size.")
@click.option("--images", type=click.Path(path_type=Path), help="A folder of images instead of random inputs "
              "(normalized as the model's metadata says, at --imgsz).")
@click.option("--imgsz", metavar="N|HxW",
              help="The export size of the in-memory FP32 export, and the size --images are resized to. Default: "
                   "the export size the first ONNX artifact records (as gap-bench uses), else 224.")
@click.option("--max-images", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="--images: use at most this many.")
@click.option("--tolerance", type=FiniteFloat(0), help="Relative error a layer may reach. Default: 1e-4 for FP32, "
              "1e-2 for FP16, 0.1 for INT8 (the variant's precision from its metadata).")
@click.option("--chunk", default=DEFAULT_CHUNK, show_default=True, type=click.IntRange(1, 4096),
              help="Layers compared per pass: ONNX tensors exposed and PyTorch activations held at once.")
@click.option("--precision", type=click.Choice(["fp16", "int8"]), help="Also convert the FP32 export in memory, as "
              "the converter makes it before any gate or FP32 fallback, and compare it: why a gate failed.")
@click.option("--target", type=click.Choice(["onnx", "executorch"]), default="onnx", show_default=True,
              help="Where --precision's variant is made and run: onnx (ONNX Runtime), or executorch (the program "
                   "gap-pack --target executorch would convert, lowered per operation in a temporary folder and "
                   "run by ExecuTorch: why gap-pack refused an FP16 ExecuTorch bundle).")
@click.option("--calib", type=click.Path(path_type=Path), help="--precision int8: calibration images or .npy.")
@click.option("--int8-layout", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="--precision int8: the graph layout.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write every figure.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG of the error against depth, one line per artifact.")
@report_errors
def main(checkpoint, artifacts, arch, num_classes, trust_checkpoint, shapes, images, imgsz, max_images, tolerance,
         chunk, precision, target, calib, int8_layout, json_path, plot_path):
    """Compare every layer of CHECKPOINT's PyTorch model with ARTIFACTS (FP32 ONNX, FP16/INT8 variants, plans,
    OpenVINO, ncnn, LiteRT and ExecuTorch bundles).

    Without ARTIFACTS, the FP32 ONNX gap-export would write is made in memory and compared. Each layer is
    named as the model's code names it (conv2.0 (Conv2d 32->64, 3x3)) with its ONNX nodes; the first layer
    over the tolerance and the layers that add the most error by themselves are reported. A gap-build plan is
    rebuilt from its ONNX per chunk with that chunk's tensors marked as outputs (needs TensorRT and a GPU; the
    marking can change TensorRT's fusions, which the report says). An OpenVINO bundle (gap-pack --target
    openvino, FP32, FP16 or INT8) is run by OpenVINO itself, its layers read from the IR by the names of the ONNX
    it was converted from (beside the bundle); an ncnn bundle by ncnn's extractor, its blobs mapped by structure
    to that ONNX (pnnx keeps no names); a LiteRT bundle by LiteRT's interpreter, its tensors named by the PyTorch
    modules the converter recorded; an ExecuTorch bundle by ExecuTorch, from its per-operation program
    model.debug.pte (each XNNPACK call's output logged by ETDump), its model output from model.pte. Example:

    \b
        gap-debug model.pt model.onnx model.fp16.onnx --shape 1x3x224x224 --plot debug.png
        gap-debug model.pt model_openvino/ --images val/
        gap-debug model.pt --target executorch --precision fp16 --shape 1x3x224x224
    """
    from gap_deploy.runtime.bundle import is_bundle, read_description

    check_input_file(checkpoint, "checkpoint")
    for artifact in artifacts:
        if is_bundle(artifact):
            kind = read_description(artifact).get("target")
            if kind not in ("openvino", "ncnn", "litert", "executorch"):
                raise click.BadParameter(f"{artifact} is a {kind} bundle: gap-debug compares OpenVINO, ncnn, LiteRT "
                                         "and ExecuTorch bundles layer by layer (Core ML runs only on Apple's OSes).",
                                         param_hint="ARTIFACTS")
            continue
        check_input_file(artifact, "artifact")
        suffix = artifact.suffix.lower()
        if suffix not in (".onnx", ".xml", ".param") and suffix not in ENGINE_SUFFIXES:
            raise click.BadParameter(f"{artifact}: gap-debug compares ONNX artifacts (.onnx), gap-build plans "
                                     "(.plan, with their manifest and the ONNX they were built from beside them) and "
                                     "OpenVINO, ncnn, LiteRT and ExecuTorch bundles (the folder gap-pack wrote; "
                                     "OpenVINO's and ncnn's with the ONNX beside it).",
                                     param_hint="ARTIFACTS")
    size = image_size(imgsz) if imgsz else None
    parsed = [shape_option(s) for s in shapes]
    if target == "executorch" and precision == "int8":
        raise click.BadParameter("gap-pack converts ExecuTorch bundles in FP32 or FP16: --target executorch takes "
                                 "--precision fp16 (or none, FP32).", param_hint="--precision")
    if precision is not None and target == "onnx":
        from gap_deploy.exporter.precision import check_variant_request

        check_variant_request(precision, calib)  # INT8 without --calib: a usage error before any work
    check_distinct({"CHECKPOINT": checkpoint, "--images": images, "--calib": calib,
                    **{f"artifact {a}": a for a in artifacts}},
                   {"--json": json_path, "--plot": plot_path})
    for path in (json_path, plot_path):
        if path is not None:
            check_output_path(path)
    from gap_deploy.exporter.debug_run import DebugJob, run_debug  # torch is imported here, after the checks

    reports = run_debug(DebugJob(checkpoint, tuple(artifacts), arch=arch, num_classes=num_classes,
                                 trust_checkpoint=trust_checkpoint, shapes=tuple(parsed), images=images,
                                 imgsz=size, max_images=max_images, tolerance=tolerance, chunk=chunk,
                                 precision=precision, calib=calib, int8_layout=int8_layout, target=target),
                        log=info)
    for report in reports:
        click.echo(report.format())
        click.echo("")
    if json_path:
        write_json(json_path, {"reports": [r.to_dict() for r in reports]})
        info(f"Wrote {json_path}")
    if plot_path:
        from gap_deploy.exporter.debug import plot

        plot(reports, plot_path)
        info(f"Wrote {plot_path}")


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.debug
    main()
