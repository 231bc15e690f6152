"""The option groups gap-export and gap-build share (precision, engine), and how both print what they built: one
definition, imported by each command's module (commands never import each other)."""

from __future__ import annotations

import functools
import types
from pathlib import Path

import click

from gap_deploy.exporter.builder import BuildConfig
from gap_deploy.runtime.cli.common import FiniteFloat, info, shape_option
from gap_deploy.runtime.manifest import HARDWARE_COMPAT
from gap_deploy.runtime.parity import INT8


def parse_profiles(min_shape, opt_shape, max_shape, profiles):
    """--min/--opt/--max make one profile, each --profile MIN:OPT:MAX another; none: the default."""
    from gap_deploy.runtime.errors import InputError
    from gap_deploy.runtime.profiles import Profile

    result = []
    if min_shape or opt_shape or max_shape:
        if not (min_shape and opt_shape and max_shape):
            raise click.BadParameter("give --min, --opt and --max together.", param_hint="--min/--opt/--max")
        result.append(Profile(*(shape_option(s) for s in (min_shape, opt_shape, max_shape))))
    for text in profiles:
        try:
            result.append(Profile.parse(text))
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="--profile") from None
    return tuple(result)


def grouped(target: str, decorators):
    """Options that reach the command as one value: ``target`` (a SimpleNamespace of their values), so a
    command's signature holds the group, not each of its options."""

    def decorate(f):
        probe = click.command()(functools.reduce(lambda g, d: d(g), reversed(decorators), lambda: None))
        names = [param.name for param in probe.params]

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            kwargs[target] = types.SimpleNamespace(**{name: kwargs.pop(name) for name in names})
            return f(*args, **kwargs)

        wrapper.__dict__["__click_params__"] = list(getattr(f, "__click_params__", []))  # click's own attribute
        for decorator in reversed(decorators):
            wrapper = decorator(wrapper)
        return wrapper

    return decorate


def variant_options(precision: str | None, calib, calib_size: tuple[int, int], args, int8_layout: str = "tensorrt"):
    """The VariantOptions of a command's --precision, --calib and precision_options; None for FP32. Checked here
    (INT8 without --calib is a usage error) before any work."""
    from gap_deploy.exporter.precision import VariantOptions

    if precision in (None, "fp32"):
        return None
    return VariantOptions(precision, calib=calib, calib_size=calib_size, min_top1=args.min_top1,
                          keep_float_ends=not args.int8_all_layers, keep_fp32=tuple(args.keep_fp32),
                          fp32_fallback=args.fp32_fallback, int8_layout=int8_layout)


def _precision_decorators():
    return [
        click.option("--min-top1", type=FiniteFloat(0, 1), default=INT8.min_top1, show_default=True,
                     help="INT8: fail when top-1 agreement with FP32 on the calibration images drops below this."),
        click.option("--int8-all-layers", is_flag=True,
                     help="INT8: quantize the first convolution and the classifier too (by default they stay in "
                          "float: they lose the most accuracy for the least speed)."),
        click.option("--keep-fp32", "keep_fp32", multiple=True, metavar="NAME_OR_PATTERN",
                     help="Keep these layers (ONNX node names or fnmatch patterns, repeatable) in FP32: not "
                          "converted to FP16, not quantized to INT8."),
        click.option("--fp32-fallback/--no-fp32-fallback", default=True, show_default=True,
                     help="When FP16 or INT8 misses its gate, keep the layers that cause it in FP32 automatically "
                          "(FP16: activations beyond float16's range first; then the most error-sensitive)."),
    ]


#: Options shared by gap-build and gap-export that shape a precision variant: one value, ``variant_args``.
precision_options = grouped("variant_args", _precision_decorators())


def _engine_decorators():
    return [
        click.option("--min", "min_shape", metavar="BxCxHxW", help="Smallest input of the profile. Default: 1 x C x "
                     "the model's minimum size."),
        click.option("--opt", "opt_shape", metavar="BxCxHxW", help="Shape TensorRT tunes for. Default: 1xCx224x224."),
        click.option("--max", "max_shape", metavar="BxCxHxW", help="Largest input. Default: 16xCx1024x1024."),
        click.option("--profile", "profiles", multiple=True, metavar="MIN:OPT:MAX",
                     help="Another optimization profile (repeatable)."),
        click.option("--workspace", default=BuildConfig.workspace_gib, show_default=True,
                     type=FiniteFloat(0.0625, 1 << 20),
                     help="Builder workspace in GiB."),
        click.option("--timing-cache", type=click.Path(path_type=Path, dir_okay=False),
                     help="Timing cache file: read if it exists, written after the build (fast rebuilds)."),
        click.option("--version-compatible", is_flag=True,
                     help="Engine that later TensorRT versions and the lean runtime (tensorrt_lean) can run."),
        click.option("--hardware-compat", type=click.Choice(HARDWARE_COMPAT), default=HARDWARE_COMPAT[0],
                     show_default=True, help="Run on other GPUs: any Ampere or newer, or any of the same compute "
                     "capability (slower kernels)."),
        click.option("--tf32", is_flag=True,
                     help="Let FP32 layers compute in TF32 (TensorRT's own default; faster on Ampere and newer, "
                     "~1e-3 relative error). Off by default, so an fp32 engine computes in FP32; with it the "
                     "manifest records precision tf32."),
    ]


#: Options shared by gap-build and gap-export --engine: one value, ``engine_args``.
engine_options = grouped("engine_args", _engine_decorators())


def build_config(args) -> BuildConfig:
    """The engine options (shared by gap-build and gap-export --engine) as a BuildConfig."""
    return BuildConfig(profiles=parse_profiles(args.min_shape, args.opt_shape, args.max_shape, args.profiles),
                       workspace_gib=args.workspace, timing_cache=args.timing_cache,
                       version_compatible=args.version_compatible, hardware_compat=args.hardware_compat, tf32=args.tf32)


def print_variant(variant) -> None:
    """A precision variant's parity tables, and what the FP32 fallback kept."""
    for report in (variant.before_fallback, variant.real_data, variant.sweep):
        if report is not None:
            click.echo(report.format_table())
    for step in variant.fallback_steps:
        info(f"FP32 fallback: {step}")
    if variant.latency:
        lat = variant.latency
        info(f"{variant.precision.upper()} latency on {lat['backend']} at {'x'.join(map(str, lat['shape']))}: "
             f"{lat['variant_ms']:.3f} ms against FP32 {lat['fp32_ms']:.3f} ms ({lat['speedup']:.2f}x)"
             + (f"; in a plain onnxruntime session {lat['plain_ms']:.3f} ms ({lat['plain_speedup']:.2f}x)"
                if "plain_ms" in lat else ""))
        from gap_deploy.exporter.precision import plain_differs

        if plain_differs(lat):
            click.echo(click.style("Warning: ", fg="yellow") + f"in a plain onnxruntime session (an app's own, "
                       f"Triton's onnxruntime backend) the {variant.precision.upper()} model runs at "
                       f"{lat['plain_speedup']:.2f}x FP32, not {lat['speedup']:.2f}x as in gap-deploy's session; "
                       "time it where it will run (gap-tune, gap-bench).", err=True)
        if lat["speedup"] < 1.0:
            from gap_deploy.exporter.precision import metadata_of

            layout = metadata_of(variant.model).int8_layout
            advice = ("for a CPU deployment export with --int8-layout cpu (TensorRT's layout is built for "
                      "TensorRT, where gap-bench measures the engine)" if layout == "tensorrt" else
                      "deploy FP32 on this CPU, or check gap-tune's table")
            click.echo(click.style("Warning: ", fg="yellow") + f"the {variant.precision.upper()} model is "
                       f"{1 / lat['speedup']:.2f}x slower than FP32 on {lat['backend']}; {advice}.", err=True)
    if variant.fp32_layers:
        worst = max(r.rel_err for r in variant.sweep.rows)
        before = (f"; worst relative error {max(r.rel_err for r in variant.before_fallback.rows):.2e} before, "
                  f"{worst:.2e} after") if variant.before_fallback else ""
        click.echo(f"Kept in FP32: {', '.join(variant.fp32_layers)}{before} (recorded in the model's metadata)")


def print_build(result, wanted: str) -> None:
    """What a build made: the variant's and the engine's parity tables, the manifest, a precision warning."""
    if result.variant is not None:
        print_variant(result.variant)
    if result.engine_parity is not None:
        click.echo(result.engine_parity.format_table())
    manifest = result.build.manifest
    click.echo(f"Wrote {result.build.plan} and {result.build.plan.name}.json: TensorRT {manifest.tensorrt_version} "
               f"on {manifest.gpu_name} (sm {manifest.compute_capability}), built precision {manifest.precision} "
               f"{result.build.layer_precisions}, {result.build.seconds:.1f} s.")
    if manifest.precision != wanted and not (wanted == "int8" and manifest.precision == "fp16"):
        click.echo(click.style("Warning: ", fg="yellow") + f"{wanted} was asked but the engine's layers run in "
                   f"{manifest.precision}; see the layer counts above.", err=True)
