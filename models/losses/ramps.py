"""Ramp-up and schedule helpers (pure functions of the iteration number)."""

from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """Sigmoid ramp-up ``exp(-5 (1 - t)^2)`` with ``t = clip(current / length, 0, 1)`` (Laine & Aila).

    Returns 1.0 when ``length <= 0`` (no ramp).
    """
    if length <= 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_schedule(current: float, total: float, start: float, end: float) -> float:
    """Linear interpolation from ``start`` (at 0) to ``end`` (at ``total`` and after)."""
    if total <= 0:
        return float(end)
    t = min(max(current / total, 0.0), 1.0)
    return float(start + (end - start) * t)
