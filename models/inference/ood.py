"""Case-level reliability: is a volume unlike everything the model was trained on?

Voxel entropy cannot see what the model has never seen: on another site's data a model can be confidently
wrong everywhere. This module describes a whole case by a short feature vector computed on the **model
grid** (after resampling and intensity normalisation, so the input's resolution does not matter) and
compares it with the vectors of the model's own training cases, which the model package records at
training time (``card.training["ood_reference"]``) and each retraining extends with the cases it learned
from.

Features (all cheap reductions of what inference computes anyway):

* ``q01 … q99``: five quantiles of the normalised intensity — the contrast and the context (air around a
  body, fat, bone) as the network sees them;
* ``fg_log_share``: log10 of the predicted foreground share — a model that segments nothing, or everything;
* ``fg_confidence``: mean top probability over the predicted foreground (1 where none is predicted);
* ``roi_entropy``: mean normalised entropy over the predicted foreground and every voxel with entropy ≥ 0.05;
* ``disagreement``: share of the two nets' foreground union on which their labels differ.

Score: the Euclidean distance ``d`` from the case's standardised vector to its nearest reference vector
(each feature divided by a robust spread of the reference set, fixed when the reference is first fitted),
mapped to ``d / (d + d0)`` in [0, 1); ``d0`` is ``margin`` times the 95th percentile of the reference cases'
leave-one-out nearest-neighbour distances, so a score ≥ 0.5 (``d ≥ d0``) is further from the training data
than almost every training case is from the others. A nearest-neighbour distance rather than a distance to
one mean keeps working when the reference holds several sites after retraining. The feature set, the 1-NN
rule and ``margin`` were chosen on development sets of both phantom families and are reported on held-out
sets (bench/ood.py, bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["FEATURES", "MAX_REFERENCE", "case_features", "features_of_arrays", "fit_reference", "score_case",
           "update_reference"]

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
FEATURES: tuple[str, ...] = ("q01", "q10", "q50", "q90", "q99", "fg_log_share", "fg_confidence",
                             "roi_entropy", "disagreement")
LABELS = {
    "q01": "1st percentile of the normalised intensity", "q10": "10th percentile of the normalised intensity",
    "q50": "median normalised intensity", "q90": "90th percentile of the normalised intensity",
    "q99": "99th percentile of the normalised intensity",
    "fg_log_share": "predicted foreground share (log10)",
    "fg_confidence": "mean confidence on the predicted foreground",
    "roi_entropy": "mean entropy around the prediction", "disagreement": "disagreement of the two nets",
}
MAX_REFERENCE = 512  # reference vectors kept in a package (the oldest are dropped first)
DEFAULT_MARGIN = 1.5
_SPREAD_FLOOR = 0.05  # a feature's spread never falls below this (in its own units)
_QUANTILE_SAMPLES = 1 << 19


def case_features(image: torch.Tensor | np.ndarray, probs: torch.Tensor) -> dict[str, float]:
    """The feature vector of one case.

    Args:
        image: the normalised model-grid image ``(C, X, Y, Z)``.
        probs: model-grid softmax, ``(2, K, X, Y, Z)`` (net A, net B) or the mean ``(K, X, Y, Z)``.

    Returns:
        ``{name: value}`` for every name of :data:`FEATURES`.
    """
    x = torch.as_tensor(image).reshape(-1).float()
    step = max(1, x.numel() // _QUANTILE_SAMPLES)
    qs = torch.quantile(x[::step].cpu(), torch.tensor(QUANTILES)).tolist()
    with torch.inference_mode():
        per_net = probs.ndim == 5
        mean = probs.mean(dim=0) if per_net else probs
        k = mean.shape[0]
        fg = mean.argmax(dim=0) != 0
        n = fg.numel()
        n_fg = int(fg.sum())
        top = mean.max(dim=0).values
        conf = float(top[fg].mean()) if n_fg else 1.0
        h = -torch.special.xlogy(mean, mean).sum(dim=0) / math.log(k)
        roi = fg | (h >= 0.05)
        roi_entropy = float(h[roi].mean()) if bool(roi.any()) else 0.0
        if per_net:
            lab_a, lab_b = probs[0].argmax(dim=0), probs[1].argmax(dim=0)
            union = (lab_a != 0) | (lab_b != 0)
            n_union = int(union.sum())
            disagreement = float((lab_a != lab_b)[union].float().mean()) if n_union else 0.0
        else:
            disagreement = 0.0
    values = [*qs, math.log10(n_fg / n + 1e-4), conf, roi_entropy, disagreement]
    return dict(zip(FEATURES, (float(v) for v in values), strict=True))


def features_of_arrays(probs_fn: Callable[[np.ndarray], torch.Tensor], arrays: Sequence[np.ndarray],
                       limit: int = 64) -> list[dict[str, float]]:
    """Feature vectors of preprocessed model-grid images ``(C, X, Y, Z)`` (at most ``limit`` of them, evenly
    spaced over the sequence); ``probs_fn`` maps one image to its model-grid softmax (e.g.
    ``Predictor.model_probabilities``)."""
    if not arrays:
        return []
    picks = np.unique(np.linspace(0, len(arrays) - 1, min(limit, len(arrays))).round().astype(int))
    out = []
    for i in picks:
        x = arrays[int(i)]
        x = x[None] if x.ndim == 3 else x
        out.append(case_features(x, probs_fn(x)))
    return out


def _matrix(rows: list[dict[str, float]] | np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    if isinstance(rows, np.ndarray):
        return rows.astype(np.float64)
    return np.array([[float(r[f]) for f in names] for r in rows], dtype=np.float64)


def _loo_nn(z: np.ndarray) -> np.ndarray:
    """Leave-one-out nearest-neighbour distance of every row of ``z (N, F)``."""
    d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def _threshold(z: np.ndarray, margin: float) -> float:
    if len(z) < 2:
        return float(margin)
    return float(margin * max(np.quantile(_loo_nn(z), 0.95), 1e-3))


def fit_reference(rows: list[dict[str, float]], margin: float = DEFAULT_MARGIN,
                  features: tuple[str, ...] = FEATURES) -> dict[str, Any]:
    """A JSON-able reference from the training cases' feature vectors (at least 2)."""
    if len(rows) < 2:
        raise ValueError(f"an out-of-distribution reference needs at least 2 cases, got {len(rows)}")
    m = _matrix(rows, features)
    med = np.median(m, axis=0)
    spread = 1.4826 * np.median(np.abs(m - med), axis=0)
    spread = np.maximum(spread, np.maximum(_SPREAD_FLOOR, 0.5 * m.std(axis=0)))
    z = (m - med) / spread
    return {"features": list(features), "center": med.tolist(), "scale": spread.tolist(),
            "vectors": m[-MAX_REFERENCE:].tolist(), "margin": float(margin),
            "threshold": _threshold(z[-MAX_REFERENCE:], margin), "cases": len(m)}


def update_reference(reference: dict[str, Any], rows: list[dict[str, float]]) -> dict[str, Any]:
    """The reference extended with newly learned cases (same scale; threshold recomputed)."""
    names = tuple(reference["features"])
    old = np.asarray(reference["vectors"], dtype=np.float64)
    m = np.concatenate([old, _matrix(rows, names)])[-MAX_REFERENCE:]
    z = (m - np.asarray(reference["center"])) / np.asarray(reference["scale"])
    return {**reference, "vectors": m.tolist(), "threshold": _threshold(z, float(reference["margin"])),
            "cases": int(reference.get("cases", 0)) + len(rows)}


def score_case(reference: dict[str, Any] | None, features: dict[str, float]) -> dict[str, Any]:
    """``{"ood_score", "out_of_distribution", "ood_reason", "distance", "threshold"}`` of one case.

    Without a reference (a package trained before this module) every field is None and the reason says so.
    """
    if not reference:
        return {"ood_score": None, "out_of_distribution": None, "distance": None, "threshold": None,
                "ood_reason": "the model package records no reference statistics of its training data"}
    names = tuple(reference["features"])
    center, scale = np.asarray(reference["center"]), np.asarray(reference["scale"])
    raw = np.asarray(reference["vectors"], dtype=np.float64)
    ref = (raw - center) / scale
    v = (np.array([features[f] for f in names], dtype=np.float64) - center) / scale
    dist = np.sqrt(((ref - v) ** 2).sum(axis=1))
    nearest = int(np.argmin(dist))
    d, d0 = float(dist[nearest]), float(reference["threshold"])
    score = d / (d + d0)
    flagged = score >= 0.5
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    outside = np.maximum(lo - v * scale - center, v * scale + center - hi) / scale
    order = [i for i in np.argsort(-outside) if outside[i] > 0][:2]
    if flagged:
        parts = [f"{LABELS.get(names[i], names[i])} {features[names[i]]:.3g} "
                 f"(training cases {lo[i]:.3g} … {hi[i]:.3g})" for i in order]
        reason = ("unlike the model's training data"
                  + (": " + "; ".join(parts) if parts else " (an unusual combination of features)")
                  + ". Voxel uncertainty and the region ranking are unreliable here: review all of it.")
    else:
        reason = "within the range of the model's training data"
    return {"ood_score": round(score, 4), "out_of_distribution": bool(flagged), "ood_reason": reason,
            "distance": round(d, 4), "threshold": round(d0, 4)}
