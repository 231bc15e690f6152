"""Which GAP family runs on which gap-pack target: every family of tests/support/families.py (and the reference CNN) is
exported, packed for every target whose packages are installed, and the bundle's own verification is read back.

    python scripts/edge_matrix.py --json matrix.json      # prints the Markdown table of docs/commands/gap-pack.md

A cell is the worst relative error against the FP32 ONNX over the bundle's sweep (each bundle is checked by its
own runtime before it is written), "inspected" for Core ML (not executable on Linux), or the first line of the
refusal. A refusal whose hint names a next step is followed, as a user would: `--min-side N` (only the smallest
sizes differ), or `--fixed 1x3x64x64` (the converter cannot keep the sides dynamic: a static program of the
export size, the cell says "static only"). Seeds are fixed; BatchNorm statistics are randomized so they matter.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import use_checkout  # noqa: E402

use_checkout()

FAMILIES = ["reference", "ResNetish", "MobileNetish", "EfficientNetish", "DenseNetish", "ShuffleNetish",
            "SqueezeNetish", "ConvNeXtish", "MobileNetV3ish", "ResNetDish", "GhostNetish", "ReXNetish"]
TARGETS = {"ort": "onnxruntime", "openvino": "openvino", "ncnn": "pnnx", "litert": "litert_torch",
           "executorch": "executorch", "coreml": "coremltools"}


def _source(name: str, folder: Path):
    import torch

    from gap_deploy.exporter import export_onnx, load_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import make_reference, randomize_batchnorm

    torch.manual_seed(0)
    if name == "reference":
        module, arch = make_reference(), None
    else:
        import tests.support.families as families

        module, arch = getattr(families, name)(), f"tests.support.families:{name}"
        randomize_batchnorm(module)
    torch.save(module.state_dict(), folder / f"{name}.pt")
    loaded = load_model(folder / f"{name}.pt", arch=arch)
    return export_onnx(loaded, folder / f"{name}.onnx", dynamic=True, imgsz=(64, 64)).path, loaded


def cell(target: str, onnx_path: Path, loaded, out: Path) -> dict:
    from gap_deploy.exporter.pack import pack
    from gap_deploy.runtime.errors import GapError

    checkpoint = loaded if target in ("litert", "executorch", "coreml") else None
    min_side = fixed = dynamic = None
    try:
        result = pack(onnx_path, out, target=target, checkpoint=checkpoint)
    except GapError as exc:
        min_side = getattr(exc, "min_side", None)  # set when only the smallest sizes differ
        dynamic = str(exc).splitlines()[0]
        fixed = (1, 3, 64, 64) if "--fixed 1x3x64x64" in (exc.hint or "") else None  # a static program: followed
        if min_side is None and fixed is None:
            return {"ok": False, "why": str(exc).splitlines()[0]}
        try:
            result = pack(onnx_path, out, target=target, checkpoint=checkpoint, min_side=min_side,
                          fixed=[fixed] if fixed else ())
        except GapError as exc2:
            return {"ok": False, "why": str(exc2).splitlines()[0], "dynamic": dynamic}
        if fixed:
            min_side = None
    description = json.loads((out / "model.json").read_text())
    if target == "coreml":
        return {"ok": True, "inspected": True, "ops": sorted(description["verification"]["inspected"]["ops"])}
    worst = max(r.rel_err for report in result.parity.values() for r in report.rows)
    shapes = sum(len(report.rows) for report in result.parity.values())
    return {"ok": True, "worst_rel_err": worst, "shapes": shapes, "notes": description.get("notes", []),
            "min_side": min_side, "fixed": list(fixed) if fixed else None,
            "dynamic": dynamic if fixed else None}


def markdown(matrix: dict, targets: list[str]) -> str:
    lines = ["| family | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for family, row in matrix.items():
        cells = []
        for target in targets:
            c = row.get(target)
            if c is None:
                cells.append("not installed")
            elif not c["ok"]:
                cells.append("refused: " + c["why"][:60])
            elif c.get("inspected"):
                cells.append("inspected, not run")
            else:
                cells.append(f"{c['worst_rel_err']:.1e}" + (" (batch 1)" if c["notes"] else "")
                             + (f" (--min-side {c['min_side']})" if c.get("min_side") else "")
                             + (" (static only: --fixed 1x3x64x64)" if c.get("fixed") else ""))
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="Write the matrix as JSON here.")
    parser.add_argument("--families", nargs="*", default=FAMILIES)
    args = parser.parse_args()
    targets = [t for t, module in TARGETS.items() if importlib.util.find_spec(module) is not None]
    matrix: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            folder = Path(tmp) / family
            folder.mkdir()
            onnx_path, loaded = _source(family, folder)
            matrix[family] = {}
            for target in targets:
                print(f"{family} -> {target} ...", file=sys.stderr, flush=True)
                matrix[family][target] = cell(target, onnx_path, loaded, folder / f"bundle_{target}")
    print(markdown(matrix, targets))
    if args.json:
        args.json.write_text(json.dumps(matrix, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
