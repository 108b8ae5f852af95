"""Scores of the phantom benchmarks: entropy AUROC for wrong voxels (pooled and per case in the boundary
band) and the share of wrong voxels inside the flagged uncertain regions.

Shapes: every volume is ``(X, Y, Z)``; masks are bool, entropy float in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.metrics import auroc

__all__ = ["BAND_VOXELS", "UncertaintyStats", "auroc", "boundary_band", "flagged_masks"]

#: Half-width (voxels) of the boundary band in which the per-case entropy AUROC is taken.
BAND_VOXELS = 3


def flagged_masks(entropy: np.ndarray, regions: list[dict[str, Any]], threshold: float = 0.5
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels of the listed regions, union of their bounding boxes)`` as boolean volumes."""
    from scipy import ndimage

    labels, _ = ndimage.label(entropy >= threshold, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    objects = ndimage.find_objects(labels)
    key_to_id = {}
    for i, box in enumerate(objects, start=1):
        if box is not None:
            key = (tuple(s.start for s in box), tuple(s.stop - 1 for s in box), int(sizes[i]))
            key_to_id[key] = i
    inside = np.zeros(entropy.shape, dtype=bool)
    boxes = np.zeros(entropy.shape, dtype=bool)
    for r in regions:
        lo, hi = tuple(r["bbox_voxel"]["min"]), tuple(r["bbox_voxel"]["max"])
        sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
        boxes[sl] = True
        lab = key_to_id.get((lo, hi, int(r["voxel_count"])))
        if lab is not None:
            inside[sl] |= labels[sl] == lab
    return inside, boxes


def boundary_band(pred: np.ndarray, truth: np.ndarray, width: int = BAND_VOXELS) -> np.ndarray:
    """Voxels within ``width`` voxels (Euclidean distance) of the predicted or the true foreground boundary.

    A boundary voxel is a foreground voxel with a background 6-neighbour (or on the volume's edge), for
    the predicted and for the true foreground; the band is every voxel at distance <= ``width`` from one.
    ``pred``, ``truth``: ``(X, Y, Z)`` label maps (> 0 is foreground). Empty when both are empty.
    """
    from scipy import ndimage

    edges = np.zeros(pred.shape, dtype=bool)
    for mask in (pred > 0, truth > 0):
        inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1),
                                       border_value=0)
        edges |= mask & ~inner
    if not edges.any():
        return edges
    return ndimage.distance_transform_edt(~edges) <= width


class UncertaintyStats:
    """Collects entropy / wrong-voxel statistics over the test cases (``on_prediction`` callback)."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.wrong: list[np.ndarray] = []
        self.n_wrong = self.in_regions = self.in_boxes = 0
        self.flagged_voxels = self.total_voxels = 0
        self.errors: dict[str, dict[str, float]] = {}  # per case: missed / extra foreground ÷ true foreground
        self.band_auroc: dict[str, float] = {}  # per case: entropy AUROC (wrong voxels) in the boundary band

    def __call__(self, item: Any, pred: Any, label: np.ndarray) -> None:
        wrong = pred.mask != label
        truth, found = label > 0, pred.mask > 0
        n_true = max(int(truth.sum()), 1)
        self.errors[item.id] = {"fn_share": round(int((truth & ~found).sum()) / n_true, 4),
                                "fp_share": round(int((found & ~truth).sum()) / n_true, 4)}
        band = boundary_band(pred.mask, label)
        self.band_auroc[item.id] = round(auroc(pred.entropy[band], wrong[band]), 4)
        self.scores.append(pred.entropy.astype(np.float32).ravel())
        self.wrong.append(wrong.ravel())
        inside, boxes = flagged_masks(pred.entropy, pred.regions)
        self.n_wrong += int(wrong.sum())
        self.in_regions += int((wrong & inside).sum())
        self.in_boxes += int((wrong & boxes).sum())
        self.flagged_voxels += int(inside.sum())
        self.total_voxels += wrong.size

    def result(self) -> dict[str, Any]:
        n = max(self.n_wrong, 1)
        return {"entropy_auroc": auroc(np.concatenate(self.scores), np.concatenate(self.wrong)),
                "wrong_in_regions": self.in_regions / n, "wrong_in_region_boxes": self.in_boxes / n,
                "wrong_fraction": self.n_wrong / max(self.total_voxels, 1),
                "flagged_fraction": self.flagged_voxels / max(self.total_voxels, 1),
                "errors_per_case": self.errors,
                "band_auroc_per_case": self.band_auroc,
                "band_auroc": float(np.nanmean(list(self.band_auroc.values()))) if any(
                    np.isfinite(v) for v in self.band_auroc.values()) else float("nan"),
                "fn_share": float(np.mean([e["fn_share"] for e in self.errors.values()] or [np.nan])),
                "fp_share": float(np.mean([e["fp_share"] for e in self.errors.values()] or [np.nan]))}


