"""gap-pack: an edge/mobile bundle (ORT format, fixed-shape variants, accelerator report, model.json)."""

from __future__ import annotations

from pathlib import Path

import click

from gap_deploy.runtime.cli.common import gap_command, info, report_errors, shape_option, write_json
from gap_deploy.runtime.naming import bundle_folder


@gap_command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Bundle folder (new or empty). "
              "Default: MODEL without .onnx, plus _bundle.")
@click.option("--fixed", "fixed", multiple=True, metavar="BxCxHxW",
              help="Also a variant fixed to this shape, for NNAPI and CoreML (repeatable), e.g. 1x3x224x224.")
@click.option("--target", type=click.Choice(["ort", "openvino"]), default="ort", show_default=True,
              help="ort: ONNX Runtime Mobile (model.ort, --fixed variants); openvino: OpenVINO IR (model.xml + .bin).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="--target openvino: the weights' precision (FP32 unless asked; OpenVINO's own default is FP16).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the usability report as JSON here (it is always in BUNDLE/model.json).")
@report_errors
def main(model, output, fixed, target, precision, json_path):
    """Write a bundle for MODEL (.onnx from gap-export): ONNX Runtime Mobile (the default) with a report of what
    each phone accelerator will run, or OpenVINO IR with --target openvino (FP32 unless --precision fp16).

    The bundle holds model.onnx and model.ort (any size), a model_BxCxHxW.onnx/.ort pair per --fixed shape,
    required_operators_and_types.config for a reduced ONNX Runtime build, labels.txt, model.json (input,
    layout, normalization, minimum size, classes, the sizes each file takes, SHA-256s), usability.txt and a
    README with Android and iOS code. An OpenVINO bundle holds model.xml + model.bin, labels.txt, model.json,
    verification.txt and a README with the loading code. Every file is checked against MODEL, by the runtime
    that will run it, before the bundle is written.

        gap-pack model.onnx -o model_bundle --fixed 1x3x224x224
    """
    from gap_deploy.exporter.pack import format_usability, pack
    from gap_deploy.runtime.files import check_distinct, check_input_file, check_output_path

    check_input_file(model, "ONNX model")
    shapes = [shape_option(s) for s in fixed]
    output = output or bundle_folder(model)
    if json_path:
        check_output_path(json_path)
    check_distinct({"MODEL": model}, {"-o/--output": output, "--json": json_path})
    result = pack(model, output, fixed=shapes, target=target, precision=precision, log=info)
    for name, report in result.parity.items():
        worst = max(r.rel_err for r in report.rows)
        info(f"{name}: matches {model.name} at {len(report.rows)} shape(s), worst relative error {worst:.1e}")
    if target == "ort":
        click.echo(format_usability(result.usability))
        click.echo(f"Operators for a reduced build: {len(result.operators)} line(s) in "
                   f"{result.folder / 'required_operators_and_types.config'}")
    click.echo(f"Wrote {result.folder}: {', '.join(sorted(result.files))}, labels.txt, model.json, README.md")
    if json_path:
        write_json(json_path, {"bundle": str(result.folder), "usability": [vars(u) for u in result.usability]})
