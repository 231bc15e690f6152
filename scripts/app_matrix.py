"""The app-ready models of gap-pack --app, judged by the platforms' own APIs: for the reference CNN and two families
(each with another preprocessing contract, tests/support/app_cases.py), an ORT bundle run by plain onnxruntime,
a LiteRT bundle run by MediaPipe's ImageClassifier and an OpenVINO bundle run by OpenVINO on 56 image files of
mixed sizes against gap-run (runtime.app_check), and a Core ML bundle read back.

    python scripts/app_matrix.py --json app_matrix.json     # prints the Markdown table of docs/commands/gap-pack.md

Seeds are fixed. A cell that fails is printed as such (the script exits 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import use_checkout  # noqa: E402

use_checkout()


def run(folder: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gap_deploy.exporter.checkpoint import load_model
    from gap_deploy.exporter.pack import pack
    from gap_deploy.runtime.app_check import check_app
    from gap_deploy.runtime.errors import GapError
    from tests.support.app_cases import CONTRACTS, make_images, make_source

    images = make_images(folder)
    rows: dict = {}
    for name in CONTRACTS:
        onnx_path, ckpt, arch = make_source(name, folder)
        row = rows[name] = {}
        for target in ("ort", "litert", "openvino", "coreml"):
            out = folder / f"{target}_{name}"
            try:
                pack(onnx_path, out, target=target, app=True,
                     checkpoint=None if target in ("ort", "openvino") else load_model(ckpt, arch=arch))
                app = json.loads((out / "model.json").read_text())["app"]
                if target == "coreml":
                    inspected = app["verification"]["inspected"]
                    row[target] = {"ok": True, "size": app["size"], "read_back": {
                        k: inspected[k] for k in ("input_type", "image", "pixel_a", "pixel_b", "op_output_types")},
                        "labels": len(inspected["classes"]), "scale_and_bias": app["scale_and_bias"],
                        "crop_and_scale": app["crop_and_scale"]}
                    continue
                check = check_app(out, images)
                row[target] = {"ok": check.passed, "size": app["size"], "resize_by": app["resize_by"],
                               "same_size": check.same_size, "own_resize": check.own_resize}
            except GapError as exc:
                row[target] = {"ok": False, "why": str(exc).splitlines()[0]}
    return {"images": len(images), "rows": rows}


def markdown(result: dict) -> str:
    n = result["images"]
    lines = ["| model (contract) | app size | ONNX Runtime at the model's size | MediaPipe at the model's size | "
             "MediaPipe resizing | OpenVINO at the model's size | OpenVINO resizing | Core ML read back |",
             "|---" * 8 + "|"]
    contracts = {"reference": "none (export size)", "ResNetish": "shorter-side 64, crop 56, 8-bit",
                 "MobileNetish": "stretch 48x64, float, BGR"}
    for name, row in result["rows"].items():
        def same(cell):
            if not cell.get("ok") and "why" in cell:
                return f"refused: {cell['why']}"
            s = cell["same_size"]
            return f"top-1 {s['top1_equal']}/{n}, max diff {s['max_abs_diff']:.1e}"

        def own(cell):
            if "own_resize" not in cell:
                return "-"
            s = cell["own_resize"]
            return f"top-1 {s['top1_equal']}/{n}, max diff {s['max_abs_diff']:.1e}" + (
                " (app resizes)" if cell.get("resize_by") == "app" else "")
        coreml = row["coreml"]
        read = (f"image {coreml['read_back']['image']['color_space']}, {coreml['labels']} labels, "
                f"{coreml['scale_and_bias']}, {coreml['crop_and_scale']}" if coreml.get("ok") else
                f"refused: {coreml.get('why')}")
        size = "x".join(map(str, row["litert"].get("size") or row["openvino"].get("size") or []))
        lines.append(f"| {name} ({contracts[name]}) | {size} | {same(row['ort'])} | {same(row['litert'])} | "
                     f"{own(row['litert'])} | "
                     f"{same(row['openvino'])} | {own(row['openvino'])} | {read} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    from gap_deploy.runtime.cli.common import write_json
    from gap_deploy.runtime.files import check_output_path

    if args.json:
        check_output_path(args.json)  # before minutes of work, not after
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    print(markdown(result))
    if args.json:
        write_json(args.json, result)
    return 0 if all(cell.get("ok") for row in result["rows"].values() for cell in row.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
