"""The smallest volume dualseg segments: degenerate volumes (a voxel, one slice, a thin slab) are refused.

A 3D model sees a volume through windows of its ``patch_size`` on its own grid (the model's spacing, in
canonical orientation); a volume smaller than a window is padded with zeros. When most of every window
would be padding along an axis, or the whole volume fills only a sliver of one window, the prediction is
meaningless, so the volume is refused before anything is stored. The rule (README "Limits"):

* **absolute floor**, for every volume, with or without a model: each axis has at least
  :data:`MIN_AXIS_VOXELS` voxels and covers at least :data:`MIN_AXIS_MM` mm;
* **relative to the model** that will segment it, on the model grid (the volume's field of view resampled to
  the model's spacing, axes matched to the patch's RAS axes as the predictor does): each axis has at least
  ``ceil(patch / PATCH_AXIS_DIVISOR)`` voxels, and the grid at least ``patch voxels / PATCH_VOXELS_DIVISOR``
  voxels in total.

Pure numpy (the API process imports it; no torch). The model-grid shape is computed exactly as
``models.data.transforms.preprocess`` does (a test checks the two agree).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from backend.imaging.errors import VolumeTooSmall

#: every axis of every volume has at least this many voxels
MIN_AXIS_VOXELS = 4
#: every axis of every volume covers at least this many millimetres (voxels x spacing)
MIN_AXIS_MM = 8.0
#: on the model grid each axis has at least ceil(patch / PATCH_AXIS_DIVISOR) voxels
PATCH_AXIS_DIVISOR = 4
#: on the model grid the volume has at least prod(patch) / PATCH_VOXELS_DIVISOR voxels
PATCH_VOXELS_DIVISOR = 32


def _fmt(values: Sequence[float], digits: int = 0) -> str:
    return "x".join(f"{v:.{digits}f}" for v in values)


def canonical_axes(affine: npt.ArrayLike) -> tuple[int, int, int]:
    """``perm[a]``: the input axis that becomes RAS axis ``a`` (the predictor's ``to_canonical``: the
    closest orthogonal matrix by SVD, then greedy per input axis; same as nibabel's ``io_orientation``)."""
    rzs = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.linalg.norm(rzs, axis=0)
    u, _, vt = np.linalg.svd(rzs / zooms)
    r = u @ vt
    perm = [0, 0, 0]
    for in_ax in range(3):
        out_ax = int(np.argmax(np.abs(r[:, in_ax])))
        perm[out_ax] = in_ax
        r[out_ax, :] = 0
    return perm[0], perm[1], perm[2]


def model_grid_shape(
    shape: Sequence[int], affine: npt.ArrayLike, model_spacing: Sequence[float] | None
) -> tuple[int, int, int]:
    """Shape of the volume on the model grid (RAS axis order): ``round(S * s / t)`` per axis, >= 1."""
    perm = canonical_axes(affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    canon = [int(shape[p]) for p in perm]
    if model_spacing is None:
        return canon[0], canon[1], canon[2]
    n = [max(1, int(round(float(s) * float(spacing[p]) / float(t))))
         for s, p, t in zip(canon, perm, model_spacing, strict=True)]
    return n[0], n[1], n[2]


@dataclass(frozen=True)
class ModelMinimum:
    """The minimum a model asks for, on its own grid (RAS axis order)."""

    name: str
    patch: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    axis_voxels: tuple[int, int, int]
    total_voxels: int

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> ModelMinimum:
        p = [int(v) for v in card["patch_size"]]
        patch = (p[0], p[1], p[2])
        raw = (card.get("preprocessing") or {}).get("spacing")
        spacing = None if raw is None else (float(raw[0]), float(raw[1]), float(raw[2]))
        axis = tuple(max(1, math.ceil(v / PATCH_AXIS_DIVISOR)) for v in patch)
        total = max(1, math.ceil(math.prod(patch) / PATCH_VOXELS_DIVISOR))
        name = f"{card.get('name', 'model')} {card.get('version', '')}".strip()
        return cls(name=name, patch=patch, spacing=spacing, axis_voxels=(axis[0], axis[1], axis[2]),
                   total_voxels=total)

    def describe(self) -> str:
        at = f" at {_fmt(self.spacing, 2)} mm" if self.spacing else ""
        mm = f" ({_fmt([a * s for a, s in zip(self.axis_voxels, self.spacing, strict=True)], 1)} mm)" \
            if self.spacing else ""
        return (f"model {self.name} (patch {_fmt(self.patch)}{at}) needs at least {_fmt(self.axis_voxels)}"
                f" voxels{mm} and {self.total_voxels} voxels in total on its grid")


def minimum_details(card: Mapping[str, Any] | None) -> dict[str, Any]:
    """The minimum as data (for the 422 answer's ``details`` and the docs)."""
    out: dict[str, Any] = {"axis_voxels": MIN_AXIS_VOXELS, "axis_mm": MIN_AXIS_MM}
    if card is not None:
        m = ModelMinimum.from_card(card)
        out["model"] = {"name": m.name, "patch": list(m.patch),
                        "spacing": None if m.spacing is None else list(m.spacing),
                        "axis_voxels": list(m.axis_voxels), "total_voxels": m.total_voxels}
    return out


def check_min_shape(
    shape: Sequence[int], affine: npt.ArrayLike, card: Mapping[str, Any] | None = None
) -> None:
    """Raise :class:`VolumeTooSmall` (HTTP 422) when ``shape`` (with ``affine``) is below the minimum.

    ``card`` is the model card (``patch_size``, ``preprocessing.spacing``) of the model that will segment
    the volume; ``None`` checks the absolute floor only (a case stored without segmentation).
    """
    dims = [int(v) for v in shape]
    spacing = [float(v) for v in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)]
    extent = [d * s for d, s in zip(dims, spacing, strict=True)]
    what = f"the volume is {_fmt(dims)} voxels of {_fmt(spacing, 2)} mm, spanning {_fmt(extent, 1)} mm"
    floor = (f"every volume needs at least {MIN_AXIS_VOXELS} voxels and {MIN_AXIS_MM:g} mm along each"
             " axis")
    details = {"shape": dims, "spacing": spacing, "minimum": minimum_details(card)}
    if min(dims) < MIN_AXIS_VOXELS or min(extent) < MIN_AXIS_MM - 1e-3:  # 4 x 2 mm may be 7.9999999
        raise VolumeTooSmall(f"{what}: too small to segment in 3D; {floor}", details=details)
    if card is None:
        return
    need = ModelMinimum.from_card(card)
    grid = model_grid_shape(dims, affine, need.spacing)
    details["model_grid"] = list(grid)
    short = any(g < a for g, a in zip(grid, need.axis_voxels, strict=True))
    if short or math.prod(grid) < need.total_voxels:
        raise VolumeTooSmall(
            f"{what}, {_fmt(grid)} = {math.prod(grid)} voxels on the model grid (RAS): too small for"
            f" this model; {need.describe()}", details=details)
