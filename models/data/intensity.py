"""Intensity normalisation of one channel (z-score, clipped z-score, CT window), pure numpy.

The spec is the model card's ``preprocessing.intensity`` object (see :func:`validate_intensity_spec`).
These names are re-exported by :mod:`models.data.transforms`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["INTENSITY_MODES", "normalize_intensity", "validate_intensity_spec"]

INTENSITY_MODES = ("zscore", "clip_zscore", "ct_window")
_EPS = 1e-8


def validate_intensity_spec(spec: Mapping[str, Any]) -> None:
    """Check an intensity-normalisation spec; raises ``ValueError`` with the reason.

    Specs (``mode`` plus parameters):
      - ``{"mode": "zscore", "nonzero": False}``: z-score over all voxels, or over nonzero voxels only
        (``nonzero: True``; then zero voxels stay 0, MONAI ``NormalizeIntensity(nonzero=True)``).
      - ``{"mode": "clip_zscore", "lower_percentile": 0.5, "upper_percentile": 99.5, "nonzero": False}``:
        clip to the percentiles (computed over the same voxels as the statistics) then z-score.
      - ``{"mode": "ct_window", "lower": -100, "upper": 240, "output": "unit"}``: clip to
        ``[lower, upper]`` then scale to ``[0, 1]`` (``output: "unit"``) or z-score with the given
        constants (``output: "zscore"`` with ``mean`` and ``std``).
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"intensity spec must be a mapping, got {type(spec).__name__}")
    mode = spec.get("mode")
    if mode not in INTENSITY_MODES:
        raise ValueError(f"unknown intensity mode {mode!r}; expected one of {INTENSITY_MODES}")
    if mode == "clip_zscore":
        lo, hi = float(spec.get("lower_percentile", 0.5)), float(spec.get("upper_percentile", 99.5))
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"clip_zscore percentiles must satisfy 0 <= lower < upper <= 100, got {lo}, {hi}"
            )
    elif mode == "ct_window":
        for key in ("lower", "upper"):
            if key not in spec:
                raise ValueError(f"ct_window needs {key!r}")
        if float(spec["lower"]) >= float(spec["upper"]):
            raise ValueError("ct_window needs lower < upper")
        output = spec.get("output", "unit")
        if output not in ("unit", "zscore"):
            raise ValueError(f"ct_window output must be 'unit' or 'zscore', got {output!r}")
        if output == "zscore":
            if "mean" not in spec or "std" not in spec:
                raise ValueError("ct_window with output 'zscore' needs 'mean' and 'std'")
            if float(spec["std"]) <= 0:
                raise ValueError("ct_window std must be positive")


def _zscore(x: np.ndarray, sel: np.ndarray | None) -> tuple[np.ndarray, float, float]:
    values = x if sel is None else x[sel]
    if values.size == 0:
        return x, 0.0, 1.0
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    std = std if std > _EPS else 1.0
    if sel is None:
        out = (x - np.float32(mean)) / np.float32(std)
    else:
        out = np.zeros_like(x)
        out[sel] = (values - np.float32(mean)) / np.float32(std)
    return out, mean, std


def normalize_intensity(array: np.ndarray, spec: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalise intensities of one channel ``(X, Y, Z)`` as ``spec`` says (see
    :func:`validate_intensity_spec`).

    Returns:
        ``(float32 array of the same shape, statistics used)``.
    """
    validate_intensity_spec(spec)
    x = np.asarray(array, dtype=np.float32)
    mode = spec["mode"]
    nonzero = bool(spec.get("nonzero", False))
    sel = (x != 0) if nonzero and mode != "ct_window" else None
    stats: dict[str, Any] = {"mode": mode}
    if mode == "clip_zscore":
        values = x if sel is None else x[sel]
        if values.size:
            lo_p, hi_p = float(spec.get("lower_percentile", 0.5)), float(spec.get("upper_percentile", 99.5))
            lo, hi = (float(v) for v in np.percentile(values, [lo_p, hi_p]))
            clipped = np.clip(x, lo, hi)
            x = clipped if sel is None else np.where(sel, clipped, x)
            stats.update(clip_lower=lo, clip_upper=hi)
    if mode in ("zscore", "clip_zscore"):
        out, mean, std = _zscore(x, sel)
        stats.update(mean=mean, std=std)
        return out.astype(np.float32, copy=False), stats
    lo, hi = float(spec["lower"]), float(spec["upper"])
    x = np.clip(x, lo, hi)
    if spec.get("output", "unit") == "unit":
        out = (x - np.float32(lo)) / np.float32(hi - lo)
    else:
        out = (x - np.float32(spec["mean"])) / np.float32(spec["std"])
    stats.update(lower=lo, upper=hi)
    return out.astype(np.float32, copy=False), stats
