"""Make test doubles as strict as the real TensorRT and CUDA bindings.

``mock.create_autospec`` cannot read the signature of a pybind11 or Cython function, so a double
built that way accepts any arity. The bindings carry their signatures in the first docstring lines:

- pybind11 (tensorrt_lean): ``name(self: X, arg: typing.SupportsInt, other: str = ...) -> bool``,
  several numbered lines for overloads;
- cuda.bindings (Cython): ``cudaMemcpyAsync(dst, src, size_t count, kind: cudaMemcpyKind, stream)``;
- spec stubs written from NVIDIA's documentation (tests/support/trt_builder_api.py): ordinary Python
  signatures with annotations.

:func:`make_strict` installs a checker on every method of a double: a call must bind to one
overload (arity and keywords) and its basic types (int, str, bool, float, bytes-like, the bindings'
enums) must match.
"""

from __future__ import annotations

import enum
import inspect
import numbers
import re
from dataclasses import dataclass
from unittest import mock

_LINE = re.compile(r"^\s*(?:\d+\.\s*)?(?P<name>\w+)\((?P<params>.*)\)(?:\s*->\s*(?P<ret>.+))?\s*$")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # a type name as the docstring writes it, or "" when untyped
    optional: bool


def _split(params: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in params:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _param(text: str) -> Param:
    optional = "=" in text
    text = text.split("=")[0].strip()
    if ":" in text:
        name, kind = (s.strip() for s in text.split(":", 1))
    else:  # Cython: "size_t count", "unsigned int flags" or just "stream"
        words = text.split()
        name, kind = words[-1], " ".join(words[:-1])
    return Param(name.lstrip("*"), kind, optional)


def docstring_overloads(func, name: str) -> list[list[Param]]:
    """Every overload in ``func``'s docstring, each as its parameter list (``self`` dropped)."""
    overloads = []
    for line in (func.__doc__ or "").splitlines():
        match = _LINE.match(line)
        if match and match.group("name") == name:
            if "*args" in match.group("params"):  # the "Overloaded function." header line
                continue
            params = [_param(p) for p in _split(match.group("params"))]
            overloads.append([p for p in params if p.name != "self"])
    return overloads


def stub_overloads(func) -> list[list[Param]]:
    """A spec stub's signature (tests/support/trt_builder_api.py), annotations as the type names."""
    sig = inspect.signature(func)
    params = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        params.append(Param(p.name, "" if p.annotation is inspect.Parameter.empty else kind,
                            p.default is not inspect.Parameter.empty))
    return [params]


def _type_ok(kind: str, value, types: dict[str, type]) -> bool:
    k = kind.split(".")[-1].strip()
    if not k:
        return True
    if k in ("SupportsInt", "int", "size_t", "unsigned int", "unsigned long long", "long", "int64_t"):
        return isinstance(value, numbers.Integral) or (isinstance(value, enum.Enum) and isinstance(value.value, int))
    if k in ("SupportsFloat", "float"):
        return isinstance(value, numbers.Real)
    if k == "str":
        return isinstance(value, str)
    if k == "bool":
        return isinstance(value, bool)
    if k in ("Buffer", "buffer", "bytes"):
        return isinstance(value, (bytes, bytearray, memoryview))
    if k in ("Dims", "Sequence", "tuple", "list"):
        return isinstance(value, (tuple, list)) or type(value).__name__ == "Dims"
    if k in types:  # the bindings' enums and classes; a double stands in for a class
        return isinstance(value, (types[k], mock.NonCallableMock))
    return True  # a type these bindings do not define: not checked here


def _binds(overload: list[Param], args: tuple, kwargs: dict, types: dict[str, type]) -> str | None:
    """None when the call fits ``overload``, else why not."""
    if len(args) > len(overload):
        return f"takes {len(overload)} argument(s), got {len(args)}"
    bound: dict[str, object] = {}
    for param, value in zip(overload, args):
        bound[param.name] = value
    names = {p.name for p in overload}
    for key, value in kwargs.items():
        if key not in names:
            return f"unexpected keyword argument {key!r}"
        if key in bound:
            return f"got multiple values for {key!r}"
        bound[key] = value
    missing = [p.name for p in overload if p.name not in bound and not p.optional]
    if missing:
        return f"missing argument(s) {', '.join(missing)}"
    for param in overload:
        if param.name in bound and not _type_ok(param.kind, bound[param.name], types):
            return f"argument {param.name!r} must be {param.kind}, got {type(bound[param.name]).__name__}"
    return None


def checker(qualname: str, overloads: list[list[Param]], types: dict[str, type]):
    def check(_mock_self, *args, **kwargs):
        reasons = [_binds(o, args, kwargs, types) for o in overloads]
        if all(reasons):
            raise TypeError(f"{qualname}(): {'; '.join(r for r in reasons if r)}")

    return check


def types_of(*modules) -> dict[str, type]:
    """The classes and enums the bindings define, by name, for the type checks."""
    return {name: value for module in modules for name, value in vars(module).items()
            if isinstance(value, type) and not name.startswith("_")}


def make_strict(double, real, *, types: dict[str, type], stub: bool = False):
    """Check every call to ``double``'s methods against ``real``'s signatures; returns ``double``."""
    for name in dir(real):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(real, name, None)
        func = getattr(real, name, None)
        if isinstance(attr, property) or not callable(func) or isinstance(func, type):
            continue
        overloads = stub_overloads(func) if stub else docstring_overloads(func, name)
        if not overloads:
            continue
        child = getattr(double, name)
        child = getattr(child, "mock", child)  # an autospec'd module function wraps its mock
        type(child)._mock_check_sig = checker(f"{getattr(real, '__name__', real)}.{name}", overloads, types)
    return double
