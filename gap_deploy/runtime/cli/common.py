"""What every gap-* command shares: the command decorator (help, --version, --debug), error reporting, exit codes
and option parsing."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import click

from gap_deploy.runtime.errors import GapError, InputError, UsageError, first_line, interrupted
from gap_deploy.runtime.publish import publish_text
from gap_deploy.runtime.shapes import parse_shape

#: No image side beyond this is taken from the command line (the memory check refuses most far earlier).
MAX_SIDE = 65536
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: GAP_DEBUG=1 in the environment (or --debug) prints a failure's whole chain of exceptions
DEBUG_VARIABLE = "GAP_DEBUG"


def _set_debug(ctx, param, value) -> None:
    if value:
        ctx.meta[DEBUG_VARIABLE] = True  # this invocation only (the environment is left alone)


def gap_command(**settings) -> Callable:
    """``click.command`` for every gap-* command: -h/--help, --version, and --debug."""

    def decorate(function: Callable) -> click.Command:
        from gap_deploy.runtime.version import __version__

        function = _refuse_renamed_twice(function)

        function = click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                                help=f"On failure, print the chain of exceptions behind the message (or set "
                                     f"{DEBUG_VARIABLE}=1).")(function)
        function = click.version_option(__version__, "--version", prog_name="gap-deploy",
                                        message="%(prog)s %(version)s")(function)
        return click.command(context_settings=CONTEXT, **settings)(function)

    return decorate


#: ctx.meta's record of the values old names set: {parameter: (old, new, value)}
OLD_NAMES_META = "gap_deploy.old_names"
#: the release that drops the old option names kept by ``old_name`` (docs/vocabulary.md lists them)
OLD_NAMES_GO_IN = "0.3"


def old_name(old: str, new: str, name: str, **settings) -> Callable:
    """A hidden option ``old`` that sets the parameter ``name`` as ``new`` does: an option renamed for one
    vocabulary across the commands (docs/vocabulary.md), kept for one release. Using it prints one note on
    stderr naming the new spelling. It has a name of its own (click shares the command-line source of options
    that share a name, so the note could not tell which was typed) and hands its value to ``name`` marked as
    given on the command line, which the new option's default then does not overwrite."""

    def hand_over(ctx: click.Context, param: click.Parameter, value):
        if param.name is None or ctx.get_parameter_source(param.name) is not click.core.ParameterSource.COMMANDLINE:
            return value
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE and ctx.params.get(name) != value:
            raise click.UsageError(f"{old} (now {new}) and another option set the same thing: choose one.")
        click.echo(f"Note: {old} is now {new}; the old name goes in gap-deploy {OLD_NAMES_GO_IN}.", err=True)
        ctx.params[name] = value
        ctx.set_parameter_source(name, click.core.ParameterSource.COMMANDLINE)
        ctx.meta.setdefault(OLD_NAMES_META, {})[name] = (old, new, value)
        return value

    own = "old_" + old.lstrip("-").replace("-", "_")
    return click.option(old, own, hidden=True, expose_value=False, callback=hand_over, **settings)


def threads_option(default: str) -> Callable:
    """``--threads N``: the CPU threads each model runs with, the same words wherever inference runs."""
    return click.option("--threads", type=click.IntRange(1, 1024), metavar="N",
                        help="CPU threads for the model (ONNX Runtime's intra-op threads; OpenVINO, ncnn and LiteRT "
                             f"alike; ExecuTorch keeps its own). Default: {default}.")


def _refuse_renamed_twice(function: Callable) -> Callable:
    """An old option name and its new one given with different values is a usage error (whichever came last
    would win silently): old_name's callback catches the new one first; this, the new one after."""

    @functools.wraps(function)
    def checked(*args, **kwargs):
        ctx = click.get_current_context()
        for name, (old, new, value) in ctx.meta.get(OLD_NAMES_META, {}).items():
            if ctx.params.get(name) != value:
                raise click.UsageError(f"{old} (now {new}) and {new} set the same thing: choose one.")
        return function(*args, **kwargs)

    return checked


def debug_enabled() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(DEBUG_VARIABLE)) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def print_cause(exc: BaseException) -> None:
    """Every exception in ``exc``'s chain, the first cause first, each with its traceback: what ``raise ... from
    None`` hides from users but a maintainer needs."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in reversed(chain):
        click.echo("".join(traceback.format_exception(type(item), item, item.__traceback__, chain=False)).rstrip(),
                   err=True)
        if item is not exc:
            click.echo("... which led to:", err=True)


def report_errors(command: Callable) -> Callable:
    """User errors become one message on stderr and exit 1 (options that cannot go together: 2, as click's own
    usage errors); Ctrl-C exits 130. No tracebacks, unless GAP_DEBUG=1 / --debug asks for the causes."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            _debug(exc)
            fail(str(exc), code=2)
        except GapError as exc:
            if interrupted(exc):  # Ctrl-C inside a library that reported it as its own failure
                _interrupted()
            _debug(exc)
            fail(str(exc))
        except KeyboardInterrupt:
            _interrupted()

    return wrapper


def _interrupted() -> None:
    click.echo("Interrupted.", err=True)
    sys.exit(130)


def _debug(exc: BaseException) -> None:
    if debug_enabled():
        print_cause(exc)


def fail(message: str, code: int = 1):
    click.echo(click.style("Error: ", fg="red", bold=True) + message, err=True)
    sys.exit(code)


def info(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays clean for tables and JSON."""
    click.echo(message, err=True)


class FiniteFloat(click.ParamType):
    """A float that is finite (no nan/inf: they never end a loop and pass every comparison) and >= ``minimum``."""

    name = "number"

    def __init__(self, minimum: float = 0.0, maximum: float = math.inf):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if number < self.minimum:
            self.fail(f"{number:g} is below {self.minimum:g}.", param, ctx)
        if number > self.maximum:
            self.fail(f"{number:g} is above {self.maximum:g}.", param, ctx)
        return number


def floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of finite numbers, e.g. 0.485,0.456,0.406.")
    return values


def shape_option(value: str, channels: int | None = None):
    try:
        return parse_shape(value, channels)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


def image_size(text: str) -> tuple[int, int]:
    """``224`` -> (224, 224); ``240x320`` -> (240, 320)."""
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise click.BadParameter(f"{text!r} is not a size; give N or HxW, e.g. 224 or 240x320.")
    if max(dims) > MAX_SIDE:
        raise click.BadParameter(f"{text!r} is larger than {MAX_SIDE} pixels on a side.")
    return dims  # type: ignore[return-value]


def write_json(path: str | Path, payload: dict) -> Path:
    return publish_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _use_sign_key(ctx: click.Context, _param, value):
    from gap_deploy.runtime.signing import ACTIVE_SIGN_KEY, check_sign_key, sign_key_from_env

    if value is None and sign_key_from_env() is None:
        return None
    try:
        key = check_sign_key(value if value is not None else sign_key_from_env())
    except GapError as exc:
        raise click.BadParameter(first_line(exc), param_hint="--sign-key") from None
    token = ACTIVE_SIGN_KEY.set(key)
    ctx.call_on_close(lambda: ACTIVE_SIGN_KEY.reset(token))
    return key


def sign_key_option(function: Callable) -> Callable:
    """--sign-key KEY.pem for every command that writes artifacts: each artifact is signed in the same publication
    (runtime.signing); $GAP_DEPLOY_SIGN_KEY is the default."""
    return click.option("--sign-key", type=click.Path(path_type=Path), callback=_use_sign_key, expose_value=False,
                        is_eager=True, metavar="KEY.pem",
                        help="Sign what is written with this EC private key (OpenSSF model signing; <file>.sig beside "
                             "each artifact). Default: $GAP_DEPLOY_SIGN_KEY.")(function)


def checkpoint_options(what: str):
    """--arch, --num-classes and --trust-checkpoint: one definition for every command that loads a PyTorch
    checkpoint (gap-export, gap-debug, gap-pack --checkpoint, gap-bench --torch); ``what`` names it in the help."""
    options = (
        click.option("--arch", metavar="MODULE:CALLABLE",
                     help=f"Architecture for {what} when it holds a state_dict: an importable module or a .py file "
                          "and a callable, e.g. torchvision.models:resnet18. Default: the reference GAP CNN, sized "
                          "from the weights."),
        click.option("--num-classes", type=click.IntRange(min=1), help="Passed to the --arch callable as "
                     "num_classes=N."),
        click.option("--trust-checkpoint", is_flag=True,
                     help=f"Allow {what} to be a TorchScript archive or a pickled nn.Module. Loading them runs "
                          "code: only for files you trust."),
    )

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def parse_artifact(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after the file: gapcnn.fp16.onnx -> gapcnn.fp16)."""
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        if not name or not path:
            raise click.BadParameter(f"{text!r} is not NAME=PATH.", param_hint="ARTIFACTS")
        return name, Path(path)
    path = Path(text)
    return (path.name[: -len(path.suffix)] if path.suffix else path.name), path


def named_artifacts(artifacts) -> dict[str, Path]:
    """gap-eval's and gap-tune's ARTIFACTS: each ``NAME=PATH`` or ``PATH``, names unique, files checked."""
    from gap_deploy.runtime.bundle import check_artifact

    named = dict(parse_artifact(a) for a in artifacts)
    if len(named) != len(artifacts):
        raise click.BadParameter("two artifacts have the same name; name them with NAME=PATH.",
                                 param_hint="ARTIFACTS")
    for path in named.values():
        check_artifact(path)
    return named
