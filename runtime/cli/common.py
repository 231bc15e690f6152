"""What every gap-* command shares: error reporting, exit codes and option parsing."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import click

from gap_deploy.runtime.errors import GapError, InputError, UsageError
from gap_deploy.runtime.publish import publish_text
from gap_deploy.runtime.shapes import parse_shape

#: No image side beyond this is taken from the command line (the memory check refuses most far earlier).
MAX_SIDE = 65536


def report_errors(command: Callable) -> Callable:
    """User errors become one message on stderr and exit 1 (options that cannot go together: 2, as click's own
    usage errors); Ctrl-C exits 130. No tracebacks."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            fail(str(exc), code=2)
        except GapError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


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
