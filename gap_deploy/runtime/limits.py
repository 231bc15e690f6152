"""Memory estimates made before allocating, so a huge size is refused with a number instead of dying.

A CNN's peak memory grows with its input: the input itself plus the activations of the widest layers.
``ACTIVATION_FACTOR`` estimates those activations as a multiple of the input (a first stage that widens
3 channels to 32-64 at full or half resolution, with a few tensors alive at once, lands near it). It is a
deliberately rough, documented upper-end estimate: its job is to stop 100-megapixel and 20-digit-batch
mistakes in milliseconds, not to budget memory precisely.

The limit is the memory available on this machine (MemAvailable), or ``GAP_MEMORY_LIMIT`` (in GB) when
set, which is how a user who knows better raises (or lowers) it.
"""

from __future__ import annotations

import math
import os
import time

from gap_deploy.runtime.errors import ResourceError

ACTIVATION_FACTOR = 32
LIMIT_ENV = "GAP_MEMORY_LIMIT"


#: Session.run checks every batch: /proc/meminfo is read at most this often (reading it costs ~15 us,
#: four times the input checks themselves; available memory does not change faster than that matters).
AVAILABLE_TTL_S = 1.0
_available: tuple[float, int] = (-math.inf, 0)


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (read at most once per AVAILABLE_TTL_S), else physical memory, else 16 GiB."""
    global _available
    now = time.monotonic()
    if now - _available[0] < AVAILABLE_TTL_S:
        return _available[1]
    _available = (now, _read_available())
    return _available[1]


def _read_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def limit_bytes() -> int:
    text = os.environ.get(LIMIT_ENV)
    if text:
        try:
            gb = float(text)
        except ValueError:
            gb = math.nan
        if not math.isfinite(gb) or gb <= 0:
            raise ResourceError(f"{LIMIT_ENV}={text!r} is not a positive number of GB.")
        return int(gb * (1 << 30))
    return available_bytes()


def estimate_bytes(shape, itemsize: int = 4, *, activations: bool = True) -> int:
    """Input bytes of ``shape``, plus the estimated activations when the model runs on it."""
    elements = math.prod(int(d) for d in shape)
    return elements * itemsize * (1 + (ACTIVATION_FACTOR if activations else 0))


def _gb(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 28 else f"{n / (1 << 20):.0f} MB"


def check_memory(shape, what: str, *, itemsize: int = 4, activations: bool = True) -> int:
    """Raise ResourceError when running on ``shape`` would need more memory than the limit; returns the estimate."""
    need = estimate_bytes(shape, itemsize, activations=activations)
    limit = limit_bytes()
    if need > limit:
        dims = "x".join(str(int(d)) for d in shape)
        raise ResourceError(
            f"{what} {dims} would need about {_gb(need)} of memory"
            + (" (input and activations)" if activations else "") + f"; {_gb(limit)} is available.",
            note=f"estimated as the input times {1 + ACTIVATION_FACTOR if activations else 1} (runtime/limits.py).",
            hint=f"use a smaller size or batch, or set {LIMIT_ENV}=<GB> to allow more.")
    return need
