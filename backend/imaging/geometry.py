"""Voxel-grid geometry: DICOM → RAS affines, voxel↔mm transforms, axis matching, grid comparison.

Conventions (see docs/contracts.md): arrays are indexed ``[i, j, k]``; a 4×4 ``affine`` maps
``(i, j, k, 1)`` to RAS+ patient coordinates in mm (+x toward the patient's Right, +y Anterior,
+z Superior). DICOM patient coordinates are LPS+; converting is a sign flip of x and y.

For a DICOM slice, ``ImageOrientationPatient`` (IOP) holds the row direction cosine (direction of
increasing *column* index) followed by the column direction cosine (direction of increasing *row*
index); ``PixelSpacing`` is ``[spacing between rows, spacing between columns]``. dualseg maps array axis
``i`` to the DICOM column index, ``j`` to the row index and ``k`` to the slice index in the sorted order
(ascending position along the slice normal ``row_cosine × column_cosine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from backend.imaging.errors import ImagingError

FloatArray = npt.NDArray[np.float64]

#: diag(-1, -1, 1, 1): converts LPS affines/points to RAS and back (it is its own inverse).
LPS_TO_RAS: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])

AXIS_NAMES_RAS = ("R", "A", "S")


class HasGrid(Protocol):
    """Anything with a voxel grid: ``shape`` (3 ints) and a 4×4 RAS ``affine``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def affine(self) -> FloatArray: ...


Grid = HasGrid | tuple[Sequence[int], npt.ArrayLike]


def _vec3(values: npt.ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ImagingError(f"{name} must be 3 finite numbers, got {list(arr)}")
    return arr


def split_orientation(iop: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return unit ``(row_cosine, column_cosine, normal)`` from a 6-value ImageOrientationPatient."""
    values = np.asarray(iop, dtype=np.float64).reshape(-1)
    if values.shape != (6,) or not np.all(np.isfinite(values)):
        raise ImagingError(f"ImageOrientationPatient must be 6 finite numbers, got {list(values)}")
    row, col = values[:3], values[3:]
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if nr < 1e-6 or nc < 1e-6:
        raise ImagingError(f"ImageOrientationPatient has a zero direction vector: {list(values)}")
    row, col = row / nr, col / nc
    if abs(float(row @ col)) > 1e-3:
        raise ImagingError(f"ImageOrientationPatient directions are not orthogonal: {list(values)}")
    normal = np.cross(row, col)
    return row, col, normal / float(np.linalg.norm(normal))


def slice_normal(iop: npt.ArrayLike) -> FloatArray:
    """Unit slice normal (row cosine × column cosine) in LPS."""
    return split_orientation(iop)[2]


def affine_from_dicom(
    iop: npt.ArrayLike,
    first_position: npt.ArrayLike,
    pixel_spacing: npt.ArrayLike,
    slice_step: npt.ArrayLike,
) -> FloatArray:
    """RAS affine of a regular slice stack.

    ``first_position`` is the ImagePositionPatient (LPS, mm) of the slice with k = 0; ``slice_step`` is
    the LPS vector from one slice position to the next (k → k + 1); ``pixel_spacing`` is the DICOM
    ``PixelSpacing`` ([row spacing, column spacing]).
    """
    row, col, _ = split_orientation(iop)
    spacing = np.asarray(pixel_spacing, dtype=np.float64).reshape(-1)
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ImagingError(f"PixelSpacing must be two positive numbers, got {list(spacing)}")
    step = _vec3(slice_step, "slice step")
    if float(np.linalg.norm(step)) <= 0:
        raise ImagingError("slice step must be a non-zero vector")
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]  # i: column index, moves along the row direction
    lps[:3, 1] = col * spacing[0]  # j: row index, moves along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = _vec3(first_position, "ImagePositionPatient")
    return LPS_TO_RAS @ lps


def lps_to_ras(affine_or_points: npt.ArrayLike) -> FloatArray:
    """Flip x and y of a 4×4 affine (rows) or of ``(..., 3)`` points. Also converts RAS → LPS."""
    arr = np.asarray(affine_or_points, dtype=np.float64)
    if arr.shape == (4, 4):
        return LPS_TO_RAS @ arr
    if arr.shape[-1] != 3:
        raise ValueError(f"expected a 4x4 affine or (..., 3) points, got shape {arr.shape}")
    return arr * np.array([-1.0, -1.0, 1.0])


def check_affine(affine: npt.ArrayLike) -> FloatArray:
    """Validate a 4×4 affine (finite, invertible, last row 0 0 0 1) and return it as float64."""
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ImagingError(f"affine must be 4x4, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ImagingError("affine contains NaN or infinite values")
    if not np.allclose(arr[3], [0.0, 0.0, 0.0, 1.0]):
        raise ImagingError(f"affine last row must be [0, 0, 0, 1], got {list(arr[3])}")
    if abs(float(np.linalg.det(arr[:3, :3]))) < 1e-12:
        raise ImagingError("affine is singular (zero voxel spacing or collinear axes)")
    return arr


def spacing_from_affine(affine: npt.ArrayLike) -> tuple[float, float, float]:
    """Voxel spacing (mm) = column norms of ``affine[:3, :3]``."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def voxel_to_world(affine: npt.ArrayLike, ijk: npt.ArrayLike) -> FloatArray:
    """Map voxel indices ``(..., 3)`` to RAS mm ``(..., 3)``."""
    aff = np.asarray(affine, dtype=np.float64)
    pts = np.asarray(ijk, dtype=np.float64)
    return pts @ aff[:3, :3].T + aff[:3, 3]


def world_to_voxel(affine: npt.ArrayLike, xyz: npt.ArrayLike) -> FloatArray:
    """Map RAS mm points ``(..., 3)`` to (fractional) voxel indices ``(..., 3)``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    pts = np.asarray(xyz, dtype=np.float64)
    return pts @ inv[:3, :3].T + inv[:3, 3]


def closest_axes(affine: npt.ArrayLike) -> tuple[tuple[int, int], ...]:
    """For each array axis, the RAS world axis (0=R, 1=A, 2=S) it is closest to and the sign (+1/-1).

    The assignment is a permutation (each world axis used once), chosen greedily from the largest
    absolute direction cosine, like nibabel's ``io_orientation``.
    """
    aff = np.asarray(affine, dtype=np.float64)
    directions = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    weights = np.abs(directions)  # [world, array]
    result: dict[int, tuple[int, int]] = {}
    used_world: set[int] = set()
    order = np.dstack(np.unravel_index(np.argsort(-weights, axis=None), weights.shape))[0]
    for world, array_axis in order:
        w, a = int(world), int(array_axis)
        if a in result or w in used_world:
            continue
        result[a] = (w, 1 if directions[w, a] >= 0 else -1)
        used_world.add(w)
    return tuple(result[a] for a in range(3))


def axis_closest_to(affine: npt.ArrayLike, world_axis: int) -> int:
    """The array axis (0..2) closest to RAS world axis ``world_axis`` (0=R/L, 1=A/P, 2=S/I)."""
    if world_axis not in (0, 1, 2):
        raise ValueError(f"world_axis must be 0, 1 or 2, got {world_axis}")
    for array_axis, (world, _) in enumerate(closest_axes(affine)):
        if world == world_axis:
            return array_axis
    raise AssertionError("closest_axes is a permutation")  # pragma: no cover


def orientation_code(affine: npt.ArrayLike) -> str:
    """Three-letter orientation code (e.g. ``"RAS"``, ``"LPS"``) of the array axes' closest directions."""
    opposite = {"R": "L", "A": "P", "S": "I"}
    letters = []
    for world, sign in closest_axes(affine):
        name = AXIS_NAMES_RAS[world]
        letters.append(name if sign > 0 else opposite[name])
    return "".join(letters)


def _grid_parts(grid: Grid) -> tuple[tuple[int, ...], FloatArray]:
    if isinstance(grid, tuple):
        shape, affine = grid
        return tuple(int(s) for s in shape), np.asarray(affine, dtype=np.float64)
    return tuple(int(s) for s in grid.shape), np.asarray(grid.affine, dtype=np.float64)


def grid_corners(shape: Sequence[int], affine: npt.ArrayLike) -> FloatArray:
    """RAS positions (mm) of the centres of the 8 corner voxels of a 3D grid, shape (8, 3)."""
    if len(shape) != 3:
        raise ValueError(f"expected a 3D shape, got {tuple(shape)}")
    ijk = np.array(
        [[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)],
        dtype=np.float64,
    )
    return voxel_to_world(affine, ijk)


def same_grid(a: Grid, b: Grid, tol: float = 1e-2) -> bool:
    """True when both grids have the same shape and voxel centres within ``tol`` mm of each other.

    Each argument is an object with ``shape`` and ``affine`` (e.g. an ``ImageVolume``) or a
    ``(shape, affine)`` tuple. Because the mapping is affine, comparing the 8 corner voxels suffices;
    one extra voxel step along each axis is also compared so that 1-voxel-thick axes are checked too.
    """
    shape_a, aff_a = _grid_parts(a)
    shape_b, aff_b = _grid_parts(b)
    if shape_a != shape_b or len(shape_a) != 3:
        return False
    corners = grid_corners(shape_a, aff_a) - grid_corners(shape_b, aff_b)
    steps = np.abs(aff_a[:3, :3] - aff_b[:3, :3])
    return bool(np.max(np.linalg.norm(corners, axis=1)) <= tol and np.max(steps) <= tol)
