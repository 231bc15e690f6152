"""Confidence intervals of a proportion: what gap-tune and its bucket plans say an accuracy is known to within."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927; Newcombe 1998, method 3)."""
    if n <= 0:
        return 0.0, 1.0
    return wilson_rate(successes / n, n, z)


def wilson_rate(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's interval for a proportion ``p`` estimated from ``n`` observations, where ``n`` may be an effective
    size: for a weighted proportion, Kish's (sum w)^2 / sum w^2 (Kish 1965), the size of a plain sample that would
    be as precise."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if p <= 0 else max(0.0, centre - half)  # exact at the ends, not 1e-17 away
    high = 1.0 if p >= 1 else min(1.0, centre + half)
    return low, high


__all__ = ["Z95", "wilson", "wilson_rate"]
