"""Uncertain-region extraction: connected components of high entropy, ranked by entropy mass.

The result is the clinician's "go to" list (docs/contracts.md, region dict). Conventions:

- components use 26-connectivity on ``entropy >= threshold``;
- ``entropy_mass`` = sum of the entropy over the component's voxels; ranking is by mass, descending
  (ties: larger ``voxel_count``, then position in the array's memory order);
- ``centroid_voxel`` is the unweighted mean voxel index of the component; ``centroid_mm`` its RAS image;
- ``bbox_voxel`` is inclusive; ``bbox_mm`` is the per-axis min / max over the RAS images of the 8 corner
  voxel *centres* of ``bbox_voxel``;
- ``volume_mm3`` = voxel_count * |det(affine[:3, :3])|;
- ``labels`` are the predicted classes (background 0 included) present in the component, when a mask is
  given, else an empty list.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy import ndimage

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def _to_mm(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points (N, 3)`` voxel coordinates -> ``(N, 3)`` RAS mm."""
    return points @ affine[:3, :3].T + affine[:3, 3]


def extract_regions(
    entropy: np.ndarray,
    affine: np.ndarray,
    threshold: float = 0.5,
    min_voxels: int = 10,
    max_regions: int = 20,
    mask: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Connected components of ``entropy >= threshold``, most uncertain first.

    Args:
        entropy: ``(X, Y, Z)`` normalised entropy in ``[0, 1]``.
        affine: 4x4 voxel-to-RAS affine of ``entropy``.
        threshold: entropy level defining "uncertain".
        min_voxels: components smaller than this are dropped.
        max_regions: at most this many regions are returned (the highest-mass ones).
        mask: optional ``(X, Y, Z)`` predicted label map, to report the classes inside each region.

    Returns:
        JSON-ready list of region dicts (python ints / floats / lists), ``rank`` 1 = largest mass.
    """
    entropy = np.asarray(entropy)
    affine = np.asarray(affine, dtype=np.float64)
    if entropy.ndim != 3:
        raise ValueError(f"entropy must be (X, Y, Z), got shape {entropy.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if mask is not None and np.shape(mask) != entropy.shape:
        raise ValueError(f"mask shape {np.shape(mask)} != entropy shape {entropy.shape}")
    if max_regions <= 0:
        return []
    # A Fortran-ordered map (the predictor's) is processed as its C-ordered transpose, axes reversed back
    # at the end: scipy's labelling and numpy's masked reads walk memory in C order
    reverse = entropy.flags.f_contiguous and not entropy.flags.c_contiguous
    if reverse:
        entropy = entropy.T
        mask = None if mask is None else np.asarray(mask).T
    elif mask is not None:
        mask = np.asarray(mask)
    # label only the bounding box of the uncertain voxels (usually a small part of the volume); raster
    # order, and so the label numbering, is the same as in the whole array
    uncertain = entropy >= threshold
    boxes = ndimage.find_objects(uncertain.view(np.uint8))
    if not boxes:
        return []
    crop = boxes[0]
    base = np.array([sl.start for sl in crop], dtype=np.int64)
    uncertain, entropy = uncertain[crop], entropy[crop]
    if mask is not None:
        mask = mask[crop]
    labels, count = ndimage.label(uncertain, structure=_STRUCTURE_26)
    voxel_labels = labels[uncertain]  # only the labelled voxels, in raster order
    sizes = np.bincount(voxel_labels, minlength=count + 1)[1:]
    masses = np.bincount(voxel_labels, weights=entropy[uncertain], minlength=count + 1)[1:]
    ids = np.flatnonzero(sizes >= max(int(min_voxels), 1)) + 1
    if ids.size == 0:
        return []
    # sort by mass desc, then size desc, then label id (array order) asc
    order = np.lexsort((ids, -sizes[ids - 1], -masses[ids - 1]))
    chosen = ids[order][:max_regions]
    objects = ndimage.find_objects(labels)
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))

    regions: list[dict[str, Any]] = []
    for rank, lab in enumerate(chosen.tolist(), start=1):
        box = objects[lab - 1]
        assert box is not None
        inside = labels[box] == lab
        values = entropy[box][inside].astype(np.float64)
        lo = np.array([s.start for s in box], dtype=np.int64) + base
        hi = np.array([s.stop - 1 for s in box], dtype=np.int64) + base
        coords = np.nonzero(inside)
        centroid = np.array([c.mean() for c in coords]) + lo
        if reverse:
            lo, hi, centroid = lo[::-1], hi[::-1], centroid[::-1]
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))), dtype=np.float64)
        corners_mm = _to_mm(affine, corners)
        n_vox = int(sizes[lab - 1])
        mass = float(masses[lab - 1])
        present = [] if mask is None else [int(v) for v in np.unique(mask[box][inside])]
        regions.append(
            {
                "rank": rank,
                "voxel_count": n_vox,
                "volume_mm3": n_vox * voxel_volume,
                "entropy_mass": mass,
                "mean_entropy": mass / n_vox,
                "max_entropy": float(values.max()),
                "centroid_voxel": [float(v) for v in centroid],
                "centroid_mm": [float(v) for v in _to_mm(affine, centroid[None])[0]],
                "bbox_voxel": {"min": [int(v) for v in lo], "max": [int(v) for v in hi]},
                "bbox_mm": {
                    "min": [float(v) for v in corners_mm.min(axis=0)],
                    "max": [float(v) for v in corners_mm.max(axis=0)],
                },
                "slice_range": [int(lo[2]), int(hi[2])],
                "labels": present,
            }
        )
    return regions
