"""gap-pack: an edge/mobile bundle (ORT format, fixed-shape variants, accelerator report, model.json)."""

from __future__ import annotations

from pathlib import Path

import click

from gap_deploy.runtime.cli.common import (
    checkpoint_options,
    gap_command,
    info,
    report_errors,
    shape_option,
    sign_key_option,
    write_json,
)
from gap_deploy.runtime.errors import UsageError
from gap_deploy.runtime.naming import bundle_folder


@gap_command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Bundle folder (new or empty). "
              "Default: MODEL without .onnx, plus _bundle.")
@click.option("--fixed", "fixed", multiple=True, metavar="BxCxHxW",
              help="ort: also a variant fixed to this shape, for NNAPI and CoreML (repeatable), e.g. 1x3x224x224. "
                   "coreml: the program takes exactly these shapes (enumerated; the Neural Engine keeps them, "
                   "where ranged sizes fall back; one shape: a static input). litert, executorch: one static "
                   "program of this one shape, no dynamic dim (one bundle per size; gap-tune --buckets --emit writes "
                   "the lines). With --app: the size of the app-ready model only (one shape, batch 1).")
@click.option("--target", type=click.Choice(["ort", "openvino", "ncnn", "litert", "executorch", "coreml"]),
              default="ort", show_default=True,
              help="ort: ONNX Runtime Mobile (model.ort, --fixed variants); openvino: OpenVINO IR (model.xml + .bin); "
                   "ncnn: model.param + .bin (pnnx); litert: model.tflite; executorch: model.pte (XNNPACK); "
                   "coreml: model.mlpackage. litert, executorch and coreml convert from --checkpoint.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="openvino, ncnn, coreml: FP32 unless asked, whatever the converter's own default (FP16 for all "
                   "three); judged with the FP16 tolerance when fp16. int8 (openvino): NNCF's post-training "
                   "quantization on --calib, judged by top-1 agreement with the FP32 IR (--min-top1).")
@click.option("--calib", type=click.Path(path_type=Path), help="--precision int8: calibration data, a folder of "
              "images like the deployment's (prepared by the model's own contract at its export size) or an .npy "
              "NCHW float32 batch, normalized.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="--precision int8: the least top-1 agreement with the FP32 IR on the calibration images; below "
                   "it NNCF's accuracy control puts layers back in FP32, and the bundle is refused if it cannot.")
@click.option("--keep-fp32", "keep_fp32", multiple=True, metavar="LAYER",
              help="--precision int8: leave this layer (its ONNX node name, as gap-debug and model.json list "
                   "them) in FP32 (repeatable).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="litert, executorch, coreml: the PyTorch "
              "checkpoint MODEL was exported from (loaded as gap-export does); the bundle is judged against MODEL.")
@checkpoint_options("--checkpoint")
@click.option("--max-side", type=click.IntRange(min=2), help="executorch, coreml: the largest height and width the "
              "program accepts (ExecuTorch plans its memory for it).  [default: 640]")
@click.option("--max-batch", type=click.IntRange(min=1), help="executorch, coreml: the largest batch.  [default: 4]")
@click.option("--min-side", type=click.IntRange(min=1), help="Every target but ort: the smallest height and width "
              "the bundle accepts, above the model's own minimum (for a runtime that differs only at the smallest "
              "sizes; the failed check's hint names it).")
@click.option("--app", is_flag=True, help="ort, litert, openvino, coreml: also an app-ready model that the "
              "platform's own API takes as it is (plain ONNX Runtime, MediaPipe's ImageClassifier, OpenVINO with "
              "its preprocessing inside, Vision): 8-bit RGB images at one fixed size (--fixed, else the model's "
              "contract or export size), normalization inside, probabilities and labels out. Refused, with the "
              "closest option, when the platform cannot express the model's preprocessing.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the usability report as JSON here (it is always in BUNDLE/model.json).")
@click.option("--other-weights", is_flag=True, help="coreml: pack a --checkpoint that is not the one MODEL was "
              "exported from (Core ML cannot run here, so nothing would show other weights; refused without it).")
@sign_key_option
@report_errors
def main(model, output, fixed, target, precision, calib, min_top1, keep_fp32, checkpoint, arch, num_classes,
         trust_checkpoint, max_side, max_batch, min_side, app, json_path, other_weights):
    """Write a bundle for MODEL (.onnx from gap-export) for one runtime: ONNX Runtime Mobile (the default) with a
    report of what each phone accelerator will run, OpenVINO, ncnn, LiteRT, ExecuTorch or Core ML. FP32 unless
    --precision fp16, whatever the converter's default; OpenVINO also INT8 (--precision int8 --calib DIR: NNCF).

    The bundle holds model.onnx and model.ort (any size), a model_BxCxHxW.onnx/.ort pair per --fixed shape,
    required_operators_and_types.config for a reduced ONNX Runtime build, labels.txt, model.json (input,
    layout, normalization, minimum size, classes, the sizes each file takes, SHA-256s), usability.txt and a
    README with Android and iOS code. An OpenVINO bundle holds model.xml + model.bin, labels.txt, model.json,
    verification.txt and a README with the loading code; so do the other targets, with their own model files.
    Every file is run by the runtime that will run it and compared with MODEL before the bundle is written;
    Core ML cannot run on Linux: its program is reloaded and inspected, and the bundle says it was not executed.
    With --app, an ORT, LiteRT, OpenVINO or Core ML bundle also holds model_app.* for the platform's own API
    (README.md has the Kotlin, Swift, JavaScript or Python lines), checked the same way before it is written.

        gap-pack model.onnx -o model_bundle --fixed 1x3x224x224

        gap-pack model.onnx --target litert --checkpoint model.pt

        gap-pack model.onnx --target litert --checkpoint model.pt --app --fixed 1x3x224x224

        gap-pack model.onnx --target openvino --precision int8 --calib calib_images/
    """
    from gap_deploy.exporter.pack import format_usability, pack
    from gap_deploy.runtime.files import check_distinct, check_input_file, check_output_path

    check_input_file(model, "ONNX model")
    shapes = [shape_option(s) for s in fixed]
    output = output or bundle_folder(model)
    check_distinct({"MODEL": model, "--checkpoint": checkpoint, "--calib": calib},
                   {"-o/--output": output, "--json": json_path},
                   output_folders=("-o/--output",))
    if json_path:
        check_output_path(json_path)
    loaded = None
    if checkpoint is not None:
        from gap_deploy.exporter.checkpoint import load_model

        check_input_file(checkpoint, "checkpoint")
        loaded = load_model(checkpoint, arch=arch, num_classes=num_classes, trust_checkpoint=trust_checkpoint)
    elif arch or num_classes or trust_checkpoint:
        raise UsageError("--arch, --num-classes and --trust-checkpoint describe --checkpoint; none was given.")
    result = pack(model, output, fixed=shapes, target=target, precision=precision, checkpoint=loaded,
                  max_side=max_side, max_batch=max_batch, min_side=min_side, other_weights=other_weights, app=app,
                  calib=calib, min_top1=min_top1, keep_fp32=keep_fp32, log=info)
    if precision == "int8":
        import json

        gate = json.loads((result.folder / "model.json").read_text())["int8"]
        kept = f"; in FP32: {', '.join(gate['fp32_layers'])}" if gate["fp32_layers"] else ""
        info(f"INT8 (NNCF, {gate['mode']}): top-1 agreement {gate['agreement']:.1%} with the FP32 IR on "
             f"{gate['images']} calibration images (gate {gate['min_top1']:.0%}){kept}")
        lat = gate["latency"]
        info(f"INT8 latency on ov-cpu at {'x'.join(map(str, lat['shape']))}: {lat['int8_ms']:.3f} ms against FP32 "
             f"{lat['fp32_ms']:.3f} ms ({lat['speedup']:.2f}x)")
        if lat["speedup"] < 1.0:
            click.echo(click.style("Warning: ", fg="yellow") + f"the INT8 IR is {1 / lat['speedup']:.2f}x slower "
                       "than the FP32 IR on this CPU; ship FP32 here, or check gap-tune's table.", err=True)
    for name, report in result.parity.items():
        worst = max(r.rel_err for r in report.rows)
        if precision == "int8":  # judged by top-1 on the calibration images (above); the sweep shows it runs
            info(f"{name}: runs at {len(report.rows)} shape(s), worst relative error against {model.name} "
                 f"{worst:.1e} (reported; INT8 is judged by top-1 on real images)")
        else:
            info(f"{name}: matches {model.name} at {len(report.rows)} shape(s), worst relative error {worst:.1e}")
    if target == "coreml":  # not run here: say what was checked instead, as the other targets say their parity
        import json

        inspected = json.loads((result.folder / "model.json").read_text())["verification"]["inspected"]
        types = ", ".join(f"{k} {v}" for k, v in inspected["op_output_types"].items() if k.startswith("FLOAT"))
        info(f"model.mlpackage: reloaded and inspected, not executed (Core ML runs only on Apple's OSes): "
             f"{sum(inspected['ops'].values())} ops, outputs {types}; check_data.npz and README.md run it on a Mac")
    if target == "ort":
        click.echo(format_usability(result.usability))
        click.echo(f"Operators for a reduced build: {len(result.operators)} line(s) in "
                   f"{result.folder / 'required_operators_and_types.config'}")
    names = sorted({name.split("/")[0] for name in result.files})
    click.echo(f"Wrote {result.folder}: {', '.join(names)}, labels.txt, model.json, README.md")
    if json_path:
        write_json(json_path, {"bundle": str(result.folder), "target": target, "precision": precision,
                               "files": sorted(result.files), "usability": [vars(u) for u in result.usability],
                               "parity": {name: report.to_dict() for name, report in result.parity.items()}})


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.pack
    main()
