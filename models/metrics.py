"""Segmentation metrics: Dice, Jaccard, HD95 and ASD per class, in mm and in voxels.

Conventions (identical to ``medpy.metric.binary``, the reference implementation of the semi-supervised
LA / pancreas literature, so numbers are comparable with published tables):

* A surface is the set of foreground voxels with a background 6-neighbour (``mask ^ erode(mask)``, the
  image border counting as background).
* Surface distances are Euclidean distances from each surface voxel of one mask to the nearest surface
  voxel of the other, computed with ``scipy.ndimage.distance_transform_edt`` using the voxel spacing (mm)
  or unit spacing (voxels).
* ``hd95``: 95th percentile (numpy linear interpolation) of the distances in **both** directions pooled.
* ``asd``: mean distance from the *prediction's* surface to the ground truth's (one-directional, as
  ``medpy.metric.binary.asd(pred, gt)``); ``assd`` is the mean of both directions' distances pooled
  together (medpy 0.5's ``assd``; older medpy averaged the two one-directional means instead).

Empty masks (per class):

=====================  ====  =======  =====  =====
case                   dice  jaccard  hd95   asd
=====================  ====  =======  =====  =====
both empty             1     1        0      0
exactly one empty      0     0        NaN    NaN
=====================  ====  =======  =====  =====

:func:`aggregate` excludes NaN from the mean / std of a metric and reports how many cases were
excluded as ``n_nan`` (so a missed or hallucinated structure is visible as a count and through its Dice of
0, instead of being mixed into the distances with an arbitrary penalty).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "METRIC_NAMES",
    "aggregate",
    "asd",
    "assd",
    "dice",
    "evaluate_case",
    "hd95",
    "jaccard",
    "surface_distances",
]

#: Keys of the per-class dict returned by :func:`evaluate_case`.
METRIC_NAMES: tuple[str, ...] = (
    "dice", "jaccard", "hd95_mm", "asd_mm", "assd_mm", "hd95_vox", "asd_vox", "assd_vox",
)

Spacing = Sequence[float] | np.ndarray | None


def _as_bool(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).astype(bool, copy=False), np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} != ground-truth shape {b.shape}")
    return a, b


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).ravel())
    if len(sp) != ndim or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return sp


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|P n G| / (|P| + |G|)`` of two binary masks (any equal shape); 1.0 when both are empty."""
    p, g = _as_bool(pred, gt)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard ``|P n G| / |P u G|`` of two binary masks; 1.0 when both are empty."""
    p, g = _as_bool(pred, gt)
    union = int(np.logical_or(p, g).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, g).sum()) / union


def _crop(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (results are unchanged:
    voxels outside the box are background, like the image border for the erosion)."""
    idx = np.nonzero(p | g)
    sl = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    return p[sl], g[sl]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background face-neighbour (border counts as background)."""
    structure = ndi.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndi.binary_erosion(mask, structure=structure, iterations=1)


def _both_directions(
    p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Surface distances pred->gt and gt->pred of two non-empty cropped masks."""
    sp, sg = _surface(p), _surface(g)
    d_pg = ndi.distance_transform_edt(~sg, sampling=spacing)[sp]
    d_gp = ndi.distance_transform_edt(~sp, sampling=spacing)[sg]
    return d_pg, d_gp


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> np.ndarray:
    """Distances from each surface voxel of ``pred`` to the nearest surface voxel of ``gt``.

    Args:
        pred, gt: binary masks of equal shape ``(X, Y, Z)`` (any dimensionality), both non-empty.
        spacing: voxel size per axis (mm); None = voxels.

    Returns:
        1D float64 array, one distance per surface voxel of ``pred``.
    """
    p, g = _as_bool(pred, gt)
    if not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    p, g = _crop(p, g)
    sg = _surface(g)
    return ndi.distance_transform_edt(~sg, sampling=_spacing(spacing, p.ndim))[_surface(p)]


def _distance_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> tuple[float, float, float]:
    """``(hd95, asd, assd)`` with the empty-mask conventions of the module docstring."""
    p, g = _as_bool(pred, gt)
    sp = _spacing(spacing, p.ndim)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0, 0.0, 0.0
    if has_p != has_g:
        return math.nan, math.nan, math.nan
    d_pg, d_gp = _both_directions(*_crop(p, g), sp)
    both = np.hstack((d_pg, d_gp))
    return float(np.percentile(both, 95)), float(d_pg.mean()), float(both.mean())


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> float:
    """95th-percentile symmetric Hausdorff distance (mm with ``spacing``, else voxels).

    0 when both masks are empty, NaN when exactly one is.
    """
    return _distance_metrics(pred, gt, spacing)[0]


def asd(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> float:
    """Average surface distance from ``pred``'s surface to ``gt``'s (medpy's ``asd``); 0 / NaN as hd95."""
    return _distance_metrics(pred, gt, spacing)[1]


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> float:
    """Average symmetric surface distance (mean of both directions' distances pooled); 0 / NaN as hd95."""
    return _distance_metrics(pred, gt, spacing)[2]


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing,
    num_classes: int,
    include_background: bool = False,
) -> dict[int, dict[str, float]]:
    """All metrics for every class of one case.

    Args:
        pred, gt: integer label maps ``(X, Y, Z)`` with values in ``0..num_classes-1``.
        spacing: voxel size ``(sx, sy, sz)`` in mm (None: the ``*_mm`` values equal the ``*_vox`` ones).
        num_classes: K (binary segmentation: 2).
        include_background: also evaluate class 0.

    Returns:
        ``{class_index: {name: value}}`` with the names of :data:`METRIC_NAMES`; distances may be NaN
        (exactly one of the two masks empty), see the module docstring.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for name, arr in (("prediction", pred), ("ground truth", gt)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    sp = _spacing(spacing, pred.ndim)
    out: dict[int, dict[str, float]] = {}
    for c in range(0 if include_background else 1, num_classes):
        p, g = pred == c, gt == c
        hd_mm, asd_mm, assd_mm = _distance_metrics(p, g, sp)
        if all(s == 1.0 for s in sp):
            hd_v, asd_v, assd_v = hd_mm, asd_mm, assd_mm
        else:
            hd_v, asd_v, assd_v = _distance_metrics(p, g, None)
        out[c] = {
            "dice": dice(p, g), "jaccard": jaccard(p, g),
            "hd95_mm": hd_mm, "asd_mm": asd_mm, "assd_mm": assd_mm,
            "hd95_vox": hd_v, "asd_vox": asd_v, "assd_vox": assd_v,
        }
    return out


def aggregate(
    cases: Sequence[Mapping[int, Mapping[str, float]]],
) -> dict[int, dict[str, dict[str, float]]]:
    """Mean / std over cases, per class and metric.

    NaN values (a class present in only one of prediction / ground truth) are left out of ``mean``,
    ``std`` (population std, ``ddof=0``), ``min`` and ``max`` and counted in ``n_nan``; ``n`` is the number
    of values used. A metric that is NaN in every case gets NaN statistics.

    Args:
        cases: outputs of :func:`evaluate_case`.

    Returns:
        ``{class_index: {metric: {"mean", "std", "min", "max", "n", "n_nan"}}}``.
    """
    classes = sorted({c for case in cases for c in case})
    out: dict[int, dict[str, dict[str, float]]] = {}
    for c in classes:
        names = sorted({m for case in cases if c in case for m in case[c]},
                       key=lambda m: (METRIC_NAMES.index(m) if m in METRIC_NAMES else len(METRIC_NAMES), m))
        out[c] = {}
        for m in names:
            vals = np.array([float(case[c][m]) for case in cases if c in case and m in case[c]])
            ok = vals[~np.isnan(vals)]
            stats = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
            if ok.size:
                stats = {"mean": float(ok.mean()), "std": float(ok.std()),
                         "min": float(ok.min()), "max": float(ok.max())}
            out[c][m] = {**stats, "n": int(ok.size), "n_nan": int(vals.size - ok.size)}
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (same shape, any).

    The Mann–Whitney form with tied scores counted half: ``P(score_pos > score_neg) + ½ P(=)``. NaN when
    either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks: ties count half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
