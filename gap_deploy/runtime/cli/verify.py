"""gap-verify: an artifact's signature under a public key, and every link back along its recorded lineage."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gap_deploy.runtime.cli.common import gap_command, info, report_errors, write_json


def rerun_parity(child: Path, parent: Path, shapes=None) -> dict:
    """The recorded check run again: ``child`` (a variant ONNX or a bundle) on its own runtime against ``parent``
    (its FP32 ONNX) on ONNX Runtime CPU, at the recorded shapes (or the minimum and two odd sizes)."""
    from gap_deploy import runtime
    from gap_deploy.runtime.parity import compare, tolerance_for

    with runtime.load(child) as candidate, runtime.load(parent, "ort-cpu") as reference:
        meta = candidate.metadata
        channels = candidate.spec.channels
        if not shapes:
            low_h, low_w = max(meta.min_height, 1), max(meta.min_width, 1)
            shapes = [(1, channels, low_h, low_w), (2, channels, max(37, low_h), max(53, low_w)),
                      (1, channels, max(64, low_h), max(48, low_w))]
        shapes = [tuple(int(v) for v in s) for s in shapes]
        report = compare(reference.run, candidate.run, shapes, tolerance_for(meta.precision, candidate.backend),
                         reference_name=parent.name, candidate_name=child.name)
    return report.to_dict()


@gap_command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path), metavar="PUB.pem",
              help="A trusted public key, or a folder of .pem keys (repeatable). Default: $GAP_DEPLOY_TRUSTED_KEYS.")
@click.option("--rerun-parity", "rerun_parity_", is_flag=True,
              help="Run the recorded check again where both ends run here: a variant or bundle against its FP32 ONNX.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the chain as JSON (- for stdout).")
@report_errors
def main(artifact, keys, rerun_parity_, json_path):
    """Verify ARTIFACT's signature and walk its lineage back (variant -> FP32 ONNX -> checkpoint, plan -> ONNX,
    bundle -> ONNX) as far as the files are beside it; every link's signature and recorded SHA-256 is checked.

    \b
        gap-verify model.int8.onnx --key build.pub.pem
        gap-verify bundle/ --key keys/ --rerun-parity
        gap-verify repo/ --key build.pub.pem        # a Triton repository, signed as a whole
    """
    from gap_deploy.runtime.files import check_distinct, check_output_path
    from gap_deploy.runtime.lineage import walk

    if json_path and str(json_path) != "-":
        check_distinct({"ARTIFACT": artifact}, {"--json": json_path})
        check_output_path(json_path)
    links = walk(artifact, list(keys) or None)
    rows = []
    for index, link in enumerate(links):
        row = {"path": str(link.path), "kind": link.kind, "key": str(link.key) if link.key else None,
               "parent": link.parent, "note": link.note,
               "lineage": json.loads(link.lineage.to_json()) if link.lineage else None}
        if rerun_parity_ and index + 1 < len(links) and links[index + 1].kind in ("onnx",) and (
                link.kind == "bundle" or (link.lineage and link.lineage.parent_role == "onnx")):
            evidence = (link.lineage.evidence.get("parity_vs_parent") or {}) if link.lineage else {}
            shapes = [s["shape"] for s in evidence.get("shapes", [])]
            row["parity_rerun"] = rerun_parity(link.path, links[index + 1].path, shapes)
        rows.append(row)
        info(link.describe())
        if "parity_rerun" in row:
            verdict = "passed" if row["parity_rerun"]["passed"] else "FAILED"
            info(f"  parity against {links[index + 1].path.name} re-run at {len(row['parity_rerun']['shapes'])} "
                 f"shape(s): {verdict}")
    if json_path and str(json_path) == "-":
        click.echo(json.dumps({"artifact": str(artifact), "chain": rows}, indent=2))
    elif json_path:
        write_json(json_path, {"artifact": str(artifact), "chain": rows})
    failed = [r for r in rows if r.get("parity_rerun") and not r["parity_rerun"]["passed"]]
    if failed:
        raise click.exceptions.Exit(1)
    click.echo(f"{artifact}: {len(links)} link(s) verified.")


if __name__ == "__main__":  # python -m gap_deploy.runtime.cli.verify
    main()
