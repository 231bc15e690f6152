"""gap-tune --emit: what deploying the chosen point needs, written through the existing library functions.

For an ONNX artifact: the model fixed to the chosen shape (exporter.pack.fixed_variant), a gap-pack bundle
with that fixed variant (NNAPI and Core ML need static shapes), a gap-triton repository serving it, the
gap-build command whose profile has its opt at the chosen size, the gap-run command, and a README saying
which point was chosen from which measurements. For an engine only the commands and the README (an engine's
profiles are fixed when it is built). The folder appears whole or not at all. No torch.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from gap_deploy.runtime.errors import ArtifactError, first_line
from gap_deploy.runtime.tune import Decision, TuneResult, tied


def _shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


#: each deployment command: the program it runs and what its .sh file says it does
PROGRAMS = {"gap-run": ("gap-run", "classify images with the chosen point: sh gap-run.sh IMAGES...  (files or folders; "
                                   "from any folder)"),
            "gap-build": ("gap-build", "a TensorRT engine with its profile's opt at the chosen size (needs TensorRT "
                                       "and a GPU)"),
            # OpenVINO's app-ready model (gap-pack --app, from this ONNX; the README gives the MediaPipe and Core ML
            # lines, which convert from the PyTorch checkpoint)
            "gap-pack-app": ("gap-pack", "OpenVINO's app-ready model at the chosen size (pixels in, probabilities "
                                         "out)")}


def _options(decision: Decision, artifact: Path) -> dict[str, tuple[list[str], str | None]]:
    """name -> (the options after the model argument, the file it writes, or None): the one description of each
    command, which the README's lines and the folder's scripts both spell out."""
    point = decision.chosen
    b, c, h, w = point.shape
    run = ["--backend", point.backend] + (["--imgsz", f"{h}x{w}"] if point.size != "native" else [])
    found: dict[str, tuple[list[str], str | None]] = {"gap-run": (run, None)}
    if artifact.suffix == ".onnx":
        found["gap-build"] = (["--min", _shape((1, c, h, w)), "--opt", _shape((b, c, h, w)), "--max",
                               _shape((max(b, 8), c, h, w))], f"{artifact.stem}.{h}x{w}.plan")
        found["gap-pack-app"] = (["--target", "openvino", "--app", "--fixed", _shape((1, c, h, w))],
                                 f"{artifact.stem}.{h}x{w}.openvino")
    return found


def commands(decision: Decision, artifact: Path) -> dict[str, str]:
    """The command lines that deploy the chosen point, as the README shows them (IMAGES/ for the images)."""
    lines = {}
    for name, (options, output) in _options(decision, artifact).items():
        words = [PROGRAMS[name][0], str(artifact)] + (["IMAGES/"] if output is None else []) + options
        lines[name] = shlex.join(words + (["-o", output] if output else []))
    return lines


def shell_scripts(decision: Decision, artifact: Path, static: str | None) -> dict[str, str]:
    """The .sh files of the emitted folder: each runs from any working folder (paths inside the folder are taken
    from the script's own location, the artifact by its absolute path, the images as the arguments)."""
    source = shlex.quote(str(artifact.resolve()))
    here = 'here="$(cd "$(dirname "$0")" && pwd)"'
    scripts = {}
    for name, (options, output) in _options(decision, artifact).items():
        program, what = PROGRAMS[name]
        if output is None:  # gap-run: the folder's static model when there is one, the images as arguments
            model = f'"$here"/{shlex.quote(static)}' if static else source
            body = [f"# {what}",
                    '[ $# -gt 0 ] || { echo "usage: sh $0 IMAGES...  (image files, or folders of them)" >&2; exit 2; }',
                    here, f'{program} {model} "$@" {shlex.join(options)}']
        else:
            body = [f"# {what}", here, f'{program} {source} {shlex.join(options)} -o "$here"/{shlex.quote(output)}']
        scripts[name] = "#!/bin/sh\n" + "\n".join(body) + "\n"
    return scripts


def readme(result: TuneResult, decision: Decision, artifact: Path, files: list[str], lines: dict[str, str]) -> str:
    point = decision.chosen
    low, high = point.interval
    front = "\n".join(f"| {p.label} | {p.top1:.1%} ({p.interval[0]:.1%}-{p.interval[1]:.1%}) | {p.latency_ms:.3f} | "
                      f"{p.throughput_ips:.1f} |{' chosen' if p is point else (' tied' if tied(p, point) else '')}"
                      for p in result.front())
    text = [f"# Deploying {point.label}", "",
            f"Chosen by gap-tune for **{decision.constraint}**: {decision.reason}.", "",
            f"- Artifact: `{artifact}` on backend `{point.backend}`, input {point.size} "
            f"(timed at {_shape(point.shape)}).",
            f"- Top-1 {point.top1:.1%} (95% Wilson interval {low:.1%}-{high:.1%}) and top-5 {point.top5:.1%} on "
            f"{point.images} labelled images of `{result.folder}`; median latency {point.latency_ms:.3f} ms, p99 "
            f"{point.p99_ms:.3f} ms, {point.throughput_ips:.1f} images/s at batch {result.batch}, measured on the "
            "machine that ran gap-tune.",
            f"- Resizing: {result.resize_policy}.", "",
            "## The Pareto front it was chosen from", "",
            "| point | top-1 (95% interval) | median ms | images/s | |", "| --- | --- | --- | --- | --- |", front, "",
            "## Files", ""]
    text += [f"- `{name}`" for name in files] + ["", "## Commands", "",
                                                 "The `.sh` files run these from any folder, with the images as "
                                                 "arguments: `sh path/to/this/folder/gap-run.sh photos/`.", ""]
    text += [f"```bash\n{line}\n```" for line in lines.values()]
    if "gap-pack-app" in lines:
        b, c, h, w = point.shape
        text += ["", "For MediaPipe's ImageClassifier or Apple's Vision at this size (they convert from the PyTorch "
                 "checkpoint the ONNX was exported from): `gap-pack "
                 f"{artifact} --target litert --checkpoint YOUR_MODEL.pt --app --fixed 1x{c}x{h}x{w}` (or "
                 "`--target coreml`)."]
    if artifact.suffix != ".onnx":
        text += ["", "The artifact is not an ONNX file (an engine, whose profiles were fixed when it was built, or a "
                 "bundle), so no static ONNX, bundle or Triton repository is written here; run gap-tune on the "
                 f"FP32 ONNX, or rebuild the engine from it with the opt at {point.size}."]
    return "\n".join(text) + "\n"


def emit(result: TuneResult, decision: Decision, artifacts: Mapping[str, str | os.PathLike], folder: str | os.PathLike,
         log=lambda _: None) -> list[str]:
    """Write the deployment of ``decision.chosen`` into ``folder`` (new or empty); returns the files written."""
    import onnx

    from gap_deploy.exporter.pack import fixed_variant, pack
    from gap_deploy.exporter.triton import ServeOptions, write_repository
    from gap_deploy.runtime.onnx_file import save_onnx
    from gap_deploy.runtime.publish import Publication

    point = decision.chosen
    artifact = Path(artifacts[point.artifact])
    with Publication() as pub:  # the folder appears whole
        staging = pub.folder(folder, "--emit folder")
        files: list[str] = []
        lines = commands(decision, artifact)
        static_name = None
        if artifact.suffix == ".onnx" and point.size != "native":
            b, c, h, w = point.shape
            static = staging / f"{artifact.stem}.{h}x{w}.onnx"
            try:
                fixed = fixed_variant(onnx.load(str(artifact)), point.shape)
            except Exception as exc:  # onnx's checker and shape tools raise their own types
                raise ArtifactError(f"cannot fix {artifact} to {_shape(point.shape)}: {first_line(exc)}",
                                    hint="re-export the model with gap-export.") from None
            save_onnx(fixed, static)
            files.append(static.name)
            static_name = static.name
            log(f"Packing a gap-pack bundle fixed to {_shape(point.shape)} ...")
            pack(artifact, staging / "bundle", fixed=[point.shape], log=log)
            files.append("bundle/")
            # Triton's model name is a folder name: characters a name cannot hold become "_" (only that name; the
            # artifact keeps its own file name)
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", artifact.stem.split(".")[0]).lstrip(".") or "model"
            # the instance kind the chosen backend runs on: a point chosen on the CPU is served on the CPU
            from gap_deploy.runtime.backends.table import facts

            kind = "KIND_GPU" if facts(point.backend).gpu else "KIND_CPU"
            write_repository([static], staging / "triton", ServeOptions(name=f"{stem}_{h}x{w}", kind=kind))
            files.append("triton/")
        for name, text in shell_scripts(decision, artifact, static_name).items():
            (staging / f"{name}.sh").write_text(text)
            (staging / f"{name}.sh").chmod(0o755)
            files.append(f"{name}.sh")
        (staging / "tune.json").write_text(json.dumps(result.to_dict(decision), indent=2, default=str) + "\n")
        files.append("tune.json")
        (staging / "README.md").write_text(readme(result, decision, artifact, files, lines))
        files.append("README.md")
    return files


def with_routing(model, sizes) -> None:
    """Store in ``model`` (an onnx.ModelProto, changed in place) a preprocessing contract that routes each image
    between ``sizes`` (runtime.preprocess.Preprocess.buckets): gap-run, gap-eval, Ray's workers and Triton's
    clients then run each image at its bucket without being told."""
    _with_contract(model, lambda contract: contract.with_buckets(sizes))


def with_size(model, size) -> None:
    """Store in ``model`` (changed in place) its contract at ``size`` (height, width): the contract of a model fixed
    to one bucket, so every reader of it prepares images at the size the model takes."""
    _with_contract(model, lambda contract: contract.sized(tuple(size)))


def _with_contract(model, change) -> None:
    from dataclasses import replace

    from gap_deploy.runtime.metadata import ModelMetadata

    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props)
    contract = change(meta.preprocessing())
    updated = replace(meta, preprocess=contract.to_json()).to_props()
    kept = {k: v for k, v in props.items() if not k.startswith("gap.")}
    del model.metadata_props[:]
    for key, value in {**kept, **updated}.items():
        model.metadata_props.add(key=key, value=value)


def emit_buckets(result: TuneResult, planning, artifacts: Mapping[str, str | os.PathLike],
                 folder: str | os.PathLike, log=lambda _: None) -> list[str]:
    """gap-tune --buckets --emit: for the chosen plan's ONNX, the model routing each image to its bucket (the
    contract's buckets), the model fixed to each bucket's shape (for static-shape runtimes and accelerators),
    gap-run.sh on the routed model, gap-build.sh with one TensorRT profile per bucket (opt at the bucket),
    tune.json and a README. The folder appears whole or not at all."""
    import onnx

    from gap_deploy.exporter.pack import fixed_variant
    from gap_deploy.runtime.artifact import describe
    from gap_deploy.runtime.errors import UsageError
    from gap_deploy.runtime.onnx_file import save_onnx
    from gap_deploy.runtime.publish import Publication

    plan = planning.chosen
    artifact = Path(artifacts[plan.artifact])
    if artifact.suffix != ".onnx":
        raise UsageError(f"--emit with --buckets writes ONNX models per bucket; {artifact} is not an ONNX file.",
                         hint="run gap-tune on the FP32 ONNX (or its FP16/INT8 variants).")
    sizes = [b.size for b in plan.buckets]
    with Publication() as pub:
        staging = pub.folder(folder, "--emit folder")
        files: list[str] = []
        model = onnx.load(str(artifact))
        channels = describe(model).channels
        batch = result.batch
        try:
            for h, w in sizes:
                fixed = fixed_variant(model, (batch, channels, h, w))
                with_size(fixed, (h, w))
                name = f"{artifact.stem}.{h}x{w}.onnx"
                save_onnx(fixed, staging / name)
                files.append(name)
        except Exception as exc:  # onnx's checker and shape tools raise their own types
            raise ArtifactError(f"cannot fix {artifact} to a bucket's shape: {first_line(exc)}",
                                hint="re-export the model with gap-export --dynamic.") from None
        with_routing(model, sizes)
        routed = f"{artifact.stem}.buckets.onnx"
        save_onnx(model, staging / routed)
        files.insert(0, routed)
        here = 'here="$(cd "$(dirname "$0")" && pwd)"'
        profiles = [f"--profile {_shape((1, channels, h, w))}:{_shape((batch, channels, h, w))}:"
                    f"{_shape((max(batch, 8), channels, h, w))}" for h, w in sizes]
        scripts = {
            "gap-run.sh": ["# classify images, each at its bucket: sh gap-run.sh IMAGES...  (from any folder)",
                           '[ $# -gt 0 ] || { echo "usage: sh $0 IMAGES...  (image files, or folders of them)" >&2; '
                           "exit 2; }", here,
                           f'gap-run "$here"/{shlex.quote(routed)} "$@" --backend {shlex.quote(plan.backend)}'],
            "gap-build.sh": ["# a TensorRT engine with one profile per bucket, opt at the bucket (needs TensorRT and a "
                             "GPU)", here,
                             f'gap-build "$here"/{shlex.quote(routed)} {" ".join(profiles)} '
                             f'-o "$here"/{shlex.quote(artifact.stem)}.buckets.plan']}
        scripts["gap-pack-buckets.sh"] = _pack_script(routed, sizes, channels)
        for name, body in scripts.items():
            (staging / name).write_text("#!/bin/sh\n" + "\n".join(body) + "\n")
            (staging / name).chmod(0o755)
            files.append(name)
        (staging / "tune.json").write_text(json.dumps({**result.to_dict(), "buckets": planning.to_dict()}, indent=2,
                                                      default=str) + "\n")
        files.append("tune.json")
        (staging / "README.md").write_text(_buckets_readme(planning, artifact, files, channels))
        files.append("README.md")
        log(f"Routed model {routed}: {', '.join(f'{h}x{w}' for h, w in sizes)}")
    return files


#: gap-pack-buckets.sh's targets: a static program per bucket (LiteRT, ExecuTorch), or one bundle whose program takes
#: exactly the buckets' shapes (Core ML's enumerated shapes)
PACK_TARGETS = ("litert", "executorch", "coreml")


def _pack_script(routed: str, sizes, channels: int) -> list[str]:
    """gap-pack lines for the runtimes that convert from PyTorch: ``sh gap-pack-buckets.sh TARGETS CHECKPOINT
    [gap-pack options]`` writes litert_HxW/ and executorch_HxW/ (one static program per bucket) and coreml/ (the
    buckets as enumerated shapes) beside the script, each verified by gap-pack as it is written."""
    shapes = [_shape((1, channels, h, w)) for h, w in sizes]
    usage = (f"usage: sh $0 TARGETS CHECKPOINT [gap-pack options, e.g. --arch]; TARGETS: a comma list of "
             f"{','.join(PACK_TARGETS)}")
    body = [f"# static programs per bucket, converted from the PyTorch checkpoint {routed} was exported from",
            '# (LiteRT, ExecuTorch: one bundle per bucket; Core ML: one bundle taking exactly the buckets\' shapes)',
            f'[ $# -ge 2 ] || {{ echo "{usage}" >&2; exit 2; }}',
            'here="$(cd "$(dirname "$0")" && pwd)"', 'targets="$1"; checkpoint="$2"; shift 2', "set -e",
            'for target in $(echo "$targets" | tr "," " "); do', '  case "$target" in']
    for target in ("litert", "executorch"):
        body.append(f"    {target})")
        body += [f'      gap-pack "$here"/{shlex.quote(routed)} --target {target} --checkpoint "$checkpoint" '
                 f'--fixed {shape} -o "$here"/{target}_{h}x{w} "$@"' for shape, (h, w) in zip(shapes, sizes)]
        body.append("      ;;")
    body += ["    coreml)", f'      gap-pack "$here"/{shlex.quote(routed)} --target coreml --checkpoint "$checkpoint" '
             + " ".join(f"--fixed {shape}" for shape in shapes) + ' -o "$here"/coreml "$@"', "      ;;",
             f'    *) echo "unknown target $target; {usage}" >&2; exit 2 ;;', "  esac", "done"]
    return body


def _buckets_readme(planning, artifact: Path, files: list[str], channels: int) -> str:
    plan, single = planning.chosen, planning.single
    rows = "\n".join(f"| {b.label} | {b.share:.1%} | {b.images} | {b.top1:.1%} ({b.interval[0]:.1%}-"
                     f"{b.interval[1]:.1%}){' *' if b.whole_set else ''} | {b.latency_ms:.3f} |" for b in plan.buckets)
    text = [f"# Deploying {plan.label}", "",
            f"Chosen by gap-tune --buckets for top-1 >= {planning.min_top1:.1%} in every bucket, from "
            f"{planning.traffic.sampled} traffic image(s) of {planning.traffic.source}: predicted mean "
            f"{plan.mean_ms:.3f} ms and p95 {plan.p95_ms:.3f} ms per batch, against {single.mean_ms:.3f} ms at one "
            f"size ({single.buckets[0].label}). Artifact `{artifact}` on backend `{plan.backend}`.", "",
            "| bucket | traffic share | labelled images | top-1 (95% interval) | median ms |",
            "| --- | --- | --- | --- | --- |", rows, "",
            "Each image goes to the smallest bucket at least as large as its side as the preprocessing scales it, "
            "else the largest. The `.buckets.onnx` model carries that rule in its preprocessing contract, so "
            "gap-run, gap-eval, Ray and Triton's clients route by it; the fixed models serve runtimes that want one "
            "static shape per model.", "", "## Files", ""]
    text += [f"- `{name}`" for name in files]
    fixed = " ".join(f"--fixed 1x{channels}x{b.size[0]}x{b.size[1]}" for b in plan.buckets)
    text += ["", "## Other runtimes", "",
             "LiteRT and ExecuTorch, one static program per bucket, and Core ML with the buckets as enumerated "
             "shapes, each converted from the PyTorch checkpoint the ONNX was exported from and verified as it is "
             "written: `sh gap-pack-buckets.sh litert,executorch,coreml YOUR_MODEL.pt` (add `--arch ...` as for "
             f"gap-export). Core ML alone: `gap-pack {artifact} --target coreml --checkpoint YOUR_MODEL.pt {fixed}`. "
             "TensorRT: `gap-build.sh`. A static ORT bundle per bucket: `gap-pack MODEL.HxW.onnx` on each fixed "
             "model. Triton: `gap-triton MODEL.buckets.onnx` warms up every bucket."]
    return "\n".join(text) + "\n"
