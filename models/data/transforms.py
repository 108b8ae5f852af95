"""Geometry and intensity transforms shared by training and inference (pure numpy / torch).

Conventions (docs/contracts.md):

- A volume is indexed ``[i, j, k]`` (NIfTI voxel order) with a 4x4 ``affine`` mapping voxel indices
  ``(i, j, k, 1)`` to RAS+ millimetres. Arrays may carry leading channel axes: the **last three axes are
  always spatial**, so ``(X, Y, Z)`` and ``(C, X, Y, Z)`` are both accepted everywhere.
- Reorientation (:func:`to_canonical`) uses axis permutations and flips only: it is exact and invertible
  and gives the same result as ``nibabel.as_closest_canonical``. An oblique affine stays oblique (its
  rotation is kept in the affine); only the axis order and directions change.
- Resampling (:func:`resample`) uses the **voxel-centre convention of
  ``torch.nn.functional.interpolate(..., align_corners=False)``**: the outer edges of the voxel grid (the
  field of view) are kept, output voxel ``n`` samples input index ``(n + 0.5) * S / N - 0.5``. The spacing
  actually obtained is ``spacing * S / N`` (equal to the target up to the rounding of the shape ``N``),
  and :func:`resample_affine` returns the affine of exactly that grid. Resampling back to the original
  shape uses the inverse mapping, so a round trip returns exactly the original grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F

# re-exported: the intensity code lives in models.data.intensity
from models.data.intensity import INTENSITY_MODES, normalize_intensity, validate_intensity_spec  # noqa: F401

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------------------------- geometry
def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm: the column norms of ``affine[:3, :3]``."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return float(norms[0]), float(norms[1]), float(norms[2])


@dataclass(frozen=True)
class OrientationRecord:
    """How an array was brought to canonical RAS by :func:`to_canonical`.

    ``perm[a]`` is the input axis that became canonical axis ``a``; ``flips[a]`` says whether canonical
    axis ``a`` was reversed. Shapes are spatial shapes ``(X, Y, Z)``.
    """

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    input_shape: tuple[int, int, int]
    input_affine: np.ndarray = field(repr=False)
    canonical_affine: np.ndarray = field(repr=False)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Spatial shape after reorientation."""
        s = self.input_shape
        return s[self.perm[0]], s[self.perm[1]], s[self.perm[2]]

    @property
    def is_identity(self) -> bool:
        """True when the input already was in canonical orientation."""
        return self.perm == (0, 1, 2) and not any(self.flips)


def _axis_orientation(affine: np.ndarray) -> list[tuple[int, int]]:
    """For each input axis, ``(world_axis, sign)`` of the closest RAS axis (nibabel's io_orientation)."""
    rzs = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.linalg.norm(rzs, axis=0)
    if np.any(zooms == 0) or not np.all(np.isfinite(rzs)):
        raise ValueError("affine has a zero-length or non-finite voxel axis")
    u, s, vt = np.linalg.svd(rzs / zooms)
    if s.min() <= s.max() * 3 * np.finfo(np.float64).eps:
        raise ValueError("affine is singular: voxel axes are not independent")
    r = u @ vt  # closest orthogonal matrix
    result: list[tuple[int, int]] = []
    for in_ax in range(3):
        col = r[:, in_ax]
        out_ax = int(np.argmax(np.abs(col)))
        result.append((out_ax, -1 if col[out_ax] < 0 else 1))
        r[out_ax, :] = 0
    return result


def _check_spatial(array: np.ndarray | torch.Tensor, shape: Sequence[int], what: str) -> None:
    if array.ndim < 3 or tuple(array.shape[-3:]) != tuple(shape):
        raise ValueError(f"{what}: spatial shape {tuple(array.shape[-3:])} != expected {tuple(shape)}")


def _flip(data: ArrayOrTensor, axes: list[int]) -> ArrayOrTensor:
    if not axes:
        return data
    if isinstance(data, torch.Tensor):
        return torch.flip(data, dims=axes)
    return np.flip(data, axis=tuple(axes))


def _permute(data: ArrayOrTensor, order: list[int]) -> ArrayOrTensor:
    if order == sorted(order):
        return data
    if isinstance(data, torch.Tensor):
        return data.permute(*order)
    return np.transpose(data, order)


def _contiguous(data: ArrayOrTensor) -> ArrayOrTensor:
    if isinstance(data, torch.Tensor):
        return data.contiguous()
    return np.ascontiguousarray(data)


def to_canonical(
    array: ArrayOrTensor, affine: np.ndarray, contiguous: bool = True
) -> tuple[ArrayOrTensor, np.ndarray, OrientationRecord]:
    """Reorient to the closest canonical RAS orientation by axis permutation and flips only.

    Args:
        array: ``(..., X, Y, Z)`` numpy array or torch tensor (leading axes are channels, untouched).
        affine: 4x4 voxel-to-RAS affine of ``array``.
        contiguous: return a C-contiguous array (a copy unless already canonical and contiguous);
            ``False`` returns a view of ``array`` (numpy) where possible.

    Returns:
        ``(canonical array (..., X', Y', Z'), canonical affine, record)``. Every voxel keeps its
        patient coordinate: ``affine @ v == canonical_affine @ c`` for corresponding indices.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if array.ndim < 3:
        raise ValueError(f"array must have at least 3 dimensions, got shape {tuple(array.shape)}")
    in_shape = tuple(int(s) for s in array.shape[-3:])
    ornt = _axis_orientation(affine)
    perm = [0, 0, 0]
    flips = [False, False, False]
    for in_ax, (out_ax, sign) in enumerate(ornt):
        perm[out_ax] = in_ax
        flips[out_ax] = sign < 0
    # canonical index c -> input index v
    t = np.zeros((4, 4))
    t[3, 3] = 1.0
    for a in range(3):
        t[perm[a], a] = -1.0 if flips[a] else 1.0
        t[perm[a], 3] = in_shape[perm[a]] - 1.0 if flips[a] else 0.0
    canonical_affine = affine @ t
    lead = array.ndim - 3
    out = _permute(array, list(range(lead)) + [lead + p for p in perm])
    out = _flip(out, [lead + a for a in range(3) if flips[a]])
    if contiguous:
        out = _contiguous(out)
    record = OrientationRecord(
        perm=(perm[0], perm[1], perm[2]),
        flips=(flips[0], flips[1], flips[2]),
        input_shape=(in_shape[0], in_shape[1], in_shape[2]),
        input_affine=affine.copy(),
        canonical_affine=canonical_affine,
    )
    return out, canonical_affine, record


def from_canonical(array: ArrayOrTensor, record: OrientationRecord) -> ArrayOrTensor:
    """Undo :func:`to_canonical`: ``(..., X', Y', Z')`` canonical -> ``(..., X, Y, Z)`` input orientation."""
    _check_spatial(array, record.canonical_shape, "from_canonical")
    lead = array.ndim - 3
    out = _flip(array, [lead + a for a in range(3) if record.flips[a]])
    inverse = [0, 0, 0]
    for a, p in enumerate(record.perm):
        inverse[p] = a
    out = _permute(out, list(range(lead)) + [lead + i for i in inverse])
    return _contiguous(out)


# ------------------------------------------------------------------------------------------- resampling
def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """Grid shape at ``target_spacing`` covering the same field of view: ``round(S * s / t)``, >= 1."""
    if len(target_spacing) != 3 or any(float(t) <= 0 for t in target_spacing):
        raise ValueError(f"target spacing must be 3 positive numbers, got {target_spacing}")
    n = [
        max(1, int(round(float(s) * float(sp) / float(t))))
        for s, sp, t in zip(shape, spacing, target_spacing, strict=True)
    ]
    return n[0], n[1], n[2]


def resample_affine(affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Affine of the grid produced by :func:`resample` from ``in_shape`` to ``out_shape``.

    Output index ``n`` sits at input index ``(n + 0.5) * S / N - 0.5`` (voxel centres,
    ``align_corners=False``), so the new affine is ``affine @ [[diag(S/N), 0.5 * S/N - 0.5], [0, 1]]``.
    """
    scale = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(scale)
    m[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ m


def resample(data: ArrayOrTensor, out_shape: Sequence[int], mode: str = "trilinear") -> ArrayOrTensor:
    """Resample the last three (spatial) axes to ``out_shape``.

    Args:
        data: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` (any leading axes are treated as channels), numpy or torch.
            Probability maps are passed channel-first ``(K, X, Y, Z)``: every channel is interpolated.
        out_shape: target spatial shape ``(X', Y', Z')``.
        mode: ``"trilinear"`` (images, probabilities; computed in float32 unless already floating) or
            ``"nearest"`` (labels; ``nearest-exact``, i.e. the voxel-centre convention, dtype kept).

    Returns:
        ``(..., X', Y', Z')`` of the same kind (numpy / torch, device) as ``data``. Identity (no copy) when
        the shape already matches.
    """
    if mode not in ("trilinear", "nearest"):
        raise ValueError(f"unknown resampling mode {mode!r}")
    out_shape = tuple(int(s) for s in out_shape)
    if data.ndim < 3:
        raise ValueError(f"data must have at least 3 dimensions, got {tuple(data.shape)}")
    if tuple(data.shape[-3:]) == out_shape:
        return data
    is_numpy = isinstance(data, np.ndarray)
    t: torch.Tensor = torch.from_numpy(np.ascontiguousarray(data)) if is_numpy else cast(torch.Tensor, data)
    lead = tuple(t.shape[:-3])
    x = t.reshape(1, -1, *t.shape[-3:])
    if mode == "trilinear":
        orig_dtype = x.dtype
        if not x.is_floating_point():
            x = x.float()
        y = F.interpolate(x, size=out_shape, mode="trilinear", align_corners=False)
        if orig_dtype.is_floating_point:
            y = y.to(orig_dtype)
    else:
        orig_dtype = x.dtype
        work = x if x.dtype in (torch.float32, torch.float64, torch.uint8) else x.float()
        y = F.interpolate(work, size=out_shape, mode="nearest-exact").to(orig_dtype)
    y = y.reshape(*lead, *out_shape)
    return cast(ArrayOrTensor, y.numpy() if is_numpy else y)


# ---------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class PreprocessRecord:
    """Everything needed to map model-grid outputs back onto the input grid.

    Shapes are spatial ``(X, Y, Z)``; affines are 4x4 voxel-to-RAS.
    """

    orientation: OrientationRecord
    model_shape: tuple[int, int, int]
    model_affine: np.ndarray = field(repr=False)
    intensity: list[dict[str, Any]] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.orientation.input_shape

    @property
    def input_affine(self) -> np.ndarray:
        return self.orientation.input_affine

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return self.orientation.canonical_shape

    @property
    def model_spacing(self) -> tuple[float, float, float]:
        """Spacing actually obtained (target spacing up to shape rounding)."""
        return voxel_spacing(self.model_affine)


def preprocess(
    array: np.ndarray, affine: np.ndarray, preprocessing_spec: Mapping[str, Any]
) -> tuple[np.ndarray, PreprocessRecord]:
    """Canonical orientation -> resample to the model spacing -> intensity normalisation.

    Args:
        array: ``(X, Y, Z)`` single-channel or ``(C, X, Y, Z)`` channel-first volume (any dtype).
        affine: 4x4 voxel-to-RAS affine.
        preprocessing_spec: the model card's ``preprocessing``: ``spacing`` ``[sx, sy, sz]`` mm (or None to
            keep the grid), ``orientation`` (only ``"RAS"``), ``intensity`` (see
            :func:`validate_intensity_spec`; applied per channel).

    Returns:
        ``(float32 contiguous array (C, X', Y', Z'), record)`` — ``torch.from_numpy(x)[None]`` is a network
        input.
    """
    orientation = preprocessing_spec.get("orientation", "RAS")
    if orientation != "RAS":
        raise ValueError(f"only 'RAS' orientation is supported, got {orientation!r}")
    intensity_spec = preprocessing_spec.get("intensity")
    if intensity_spec is None:
        raise ValueError("preprocessing spec needs 'intensity'")
    validate_intensity_spec(intensity_spec)
    data = np.asarray(array)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise ValueError(f"volume must be (X, Y, Z) or (C, X, Y, Z), got shape {np.shape(array)}")
    canon, canon_affine, orient = to_canonical(data, affine, contiguous=False)
    target = preprocessing_spec.get("spacing")
    if target is None:
        model_shape = orient.canonical_shape
    else:
        model_shape = resampled_shape(orient.canonical_shape, voxel_spacing(canon_affine), target)
    model_affine = resample_affine(canon_affine, orient.canonical_shape, model_shape)
    resampled = _resample_any_layout(canon.astype(np.float32, copy=False), model_shape)
    out = np.empty(resampled.shape, dtype=np.float32)
    stats = []
    for c in range(resampled.shape[0]):
        out[c], s = normalize_intensity(resampled[c], intensity_spec)
        stats.append(s)
    record = PreprocessRecord(
        orientation=orient, model_shape=model_shape, model_affine=model_affine, intensity=stats
    )
    return out, record


def _resample_any_layout(canon: np.ndarray, model_shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resampling of ``(C, X, Y, Z)`` to ``model_shape`` without a full-size transpose when the
    spatial axes are stored reversed (a Fortran-ordered volume, as NIfTI readers return): trilinear
    resampling is separable, so the reversed view is resampled and the small result transposed back
    (the same values up to float rounding)."""
    reversed_view = canon.transpose(0, 3, 2, 1)
    if reversed_view.flags.c_contiguous and tuple(canon.shape[1:]) != tuple(model_shape):
        small = resample(reversed_view, tuple(reversed(model_shape)), "trilinear")
        return np.ascontiguousarray(small.transpose(0, 3, 2, 1))
    return resample(np.ascontiguousarray(canon), model_shape, "trilinear")


def preprocess_label(label: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Bring a label map ``(X, Y, Z)`` on the input grid to the model grid (reorient + nearest).

    Returns:
        ``uint8 (X', Y', Z')`` aligned with the array returned by :func:`preprocess`.
    """
    _check_spatial(label, record.input_shape, "preprocess_label")
    canon, _, orient = to_canonical(np.asarray(label), record.input_affine)
    if orient.perm != record.orientation.perm or orient.flips != record.orientation.flips:
        raise ValueError("label orientation differs from the record")  # pragma: no cover - defensive
    return np.ascontiguousarray(resample(canon.astype(np.uint8), record.model_shape, "nearest"))


def to_canonical_grid(
    data: ArrayOrTensor, record: PreprocessRecord, mode: str = "trilinear"
) -> ArrayOrTensor:
    """Model grid ``(..., X', Y', Z')`` -> canonical grid (resampled only, still canonical orientation)."""
    _check_spatial(data, record.model_shape, "to_canonical_grid")
    return resample(data, record.canonical_shape, mode)


def restore_to_input(data: ArrayOrTensor, record: PreprocessRecord, mode: str = "trilinear") -> ArrayOrTensor:
    """Inverse of :func:`preprocess`'s geometry for outputs.

    Args:
        data: ``(X', Y', Z')`` or ``(K, X', Y', Z')`` on the model grid (numpy or torch); probabilities
            use ``"trilinear"``, labels ``"nearest"``.

    Returns:
        ``(..., X, Y, Z)`` with exactly the input's shape and orientation (its affine is
        ``record.input_affine``).
    """
    return from_canonical(to_canonical_grid(data, record, mode), record.orientation)
