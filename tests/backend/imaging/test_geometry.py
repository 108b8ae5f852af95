from __future__ import annotations

import numpy as np
import pytest

from backend.imaging.errors import ImagingError
from backend.imaging.geometry import (
    affine_from_dicom,
    axis_closest_to,
    closest_axes,
    orientation_code,
    same_grid,
    spacing_from_affine,
    voxel_to_world,
    world_to_voxel,
)
from tests.backend.imaging.factory import oblique_iop


def test_affine_from_dicom_axial_is_lps_flipped() -> None:
    aff = affine_from_dicom([1, 0, 0, 0, 1, 0], [-100.0, -120.0, 50.0], [0.8, 0.6], [0, 0, 2.0])
    # i runs along the row direction (+x LPS = patient left) with the column spacing 0.6.
    np.testing.assert_allclose(aff[:3, 0], [-0.6, 0, 0])
    np.testing.assert_allclose(aff[:3, 1], [0, -0.8, 0])
    np.testing.assert_allclose(aff[:3, 2], [0, 0, 2.0])
    np.testing.assert_allclose(aff[:3, 3], [100.0, 120.0, 50.0])
    assert orientation_code(aff) == "LPS"
    assert spacing_from_affine(aff) == pytest.approx((0.6, 0.8, 2.0))


def test_voxel_world_roundtrip_oblique() -> None:
    iop = oblique_iop()
    normal = np.cross(iop[:3], iop[3:])
    aff = affine_from_dicom(iop, [1.0, 2.0, 3.0], [0.9, 0.7], normal * 2.5)
    ijk = np.array([[0, 0, 0], [3, 5, 7], [15.5, 2.25, 1.0]])
    xyz = voxel_to_world(aff, ijk)
    np.testing.assert_allclose(world_to_voxel(aff, xyz), ijk, atol=1e-9)
    expected = np.array([1.0, 2.0, 3.0]) + 3 * 0.7 * np.array(iop[:3]) + 5 * 0.9 * np.array(iop[3:])
    expected = expected + 7 * 2.5 * normal
    np.testing.assert_allclose(xyz[1], expected * [-1, -1, 1], atol=1e-9)


def test_closest_axes_permutation_and_names() -> None:
    aff = np.array([[0, 0, -2.0, 0], [1.0, 0, 0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]])
    assert closest_axes(aff) == ((1, 1), (2, -1), (0, -1))
    assert orientation_code(aff) == "AIL"
    assert axis_closest_to(aff, 2) == 1
    assert axis_closest_to(aff, 0) == 2


def test_same_grid_tolerance() -> None:
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted = aff.copy()
    shifted[0, 3] = 0.005
    assert same_grid(((4, 5, 6), aff), ((4, 5, 6), shifted), tol=0.01)
    assert not same_grid(((4, 5, 6), aff), ((4, 5, 6), shifted), tol=0.001)
    assert not same_grid(((4, 5, 6), aff), ((4, 5, 7), aff))
    rotated = aff.copy()
    rotated[:3, :3] = rotated[:3, :3] @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert not same_grid(((4, 5, 6), aff), ((4, 5, 6), rotated))


def test_bad_orientation_rejected() -> None:
    with pytest.raises(ImagingError, match="not orthogonal"):
        affine_from_dicom([1, 0, 0, 1, 0.1, 0], [0, 0, 0], [1, 1], [0, 0, 1])
    with pytest.raises(ImagingError, match="PixelSpacing"):
        affine_from_dicom([1, 0, 0, 0, 1, 0], [0, 0, 0], [0, 1], [0, 0, 1])
