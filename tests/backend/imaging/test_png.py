from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.imaging.errors import ImagingError
from backend.imaging.png import (
    INFERNO,
    montage_indices,
    render_montage_png,
    render_slice_png,
    render_slice_rgb,
    resolve_axis,
)

SHAPE = (20, 16, 12)  # i: R, j: A, k: S for the RAS affine


def _decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def _marked_volume() -> np.ndarray:
    """Background 0, a bright voxel column at patient right-anterior-superior."""
    vol = np.zeros(SHAPE, dtype=np.float32)
    vol[:, :, :] = np.linspace(0, 1, SHAPE[2])[None, None, :] * 10  # some structure for the window
    vol[17, 13, 9] = 1000.0  # right (high i), anterior (high j), superior (high k)
    return vol


def _bright(rgb: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(np.argmax(rgb[..., 0].astype(int)), rgb.shape[:2])
    return int(row), int(col)


RAS = np.eye(4)


def test_axial_radiological_orientation() -> None:
    rgb = render_slice_rgb(_marked_volume(), RAS, axis="axial", index=9, window=(0, 100))
    assert rgb.shape == (16, 20, 3)  # rows = A/P (j), cols = R/L (i)
    # patient right is on the image left, anterior at the top
    assert _bright(rgb) == (16 - 1 - 13, 20 - 1 - 17)


def test_coronal_and_sagittal_orientation() -> None:
    coronal = render_slice_rgb(_marked_volume(), RAS, axis="coronal", index=13, window=(0, 100))
    assert coronal.shape == (12, 20, 3)
    assert _bright(coronal) == (12 - 1 - 9, 20 - 1 - 17)  # superior up, patient left on the right
    sagittal = render_slice_rgb(_marked_volume(), RAS, axis="sagittal", index=17, window=(0, 100))
    assert sagittal.shape == (12, 16, 3)
    assert _bright(sagittal) == (12 - 1 - 9, 16 - 1 - 13)  # superior up, anterior on the left


def test_same_picture_for_lps_and_permuted_storage() -> None:
    ras = _marked_volume()
    reference = render_slice_png(ras, RAS, axis="axial", index=9, window=(0, 100))
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps_affine[:3, 3] = [SHAPE[0] - 1, SHAPE[1] - 1, 0]
    assert (
        render_slice_png(ras[::-1, ::-1, :], lps_affine, axis="axial", index=9, window=(0, 100)) == reference
    )
    # stored as (S, R, A) with S descending: axial is now array axis 0
    permuted = np.ascontiguousarray(ras.transpose(2, 0, 1)[::-1])
    perm_affine = np.zeros((4, 4))
    perm_affine[0, 1] = perm_affine[1, 2] = 1.0
    perm_affine[2, 0] = -1.0
    perm_affine[2, 3] = SHAPE[2] - 1
    perm_affine[3, 3] = 1.0
    assert resolve_axis(perm_affine, "axial") == 0
    index = SHAPE[2] - 1 - 9
    assert render_slice_png(permuted, perm_affine, axis="axial", index=index, window=(0, 100)) == reference


def test_physical_aspect_ratio() -> None:
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    rgb = render_slice_rgb(np.zeros(SHAPE, np.float32), affine, axis="coronal")
    assert rgb.shape == (12 * 4, 20, 3)  # 2 mm rows shown with 0.5 mm pixels
    big = render_slice_rgb(np.zeros(SHAPE, np.float32), affine, axis="axial", scale=2.0)
    assert big.shape == (32, 40, 3)


def test_heatmap_coloured_where_entropy_high() -> None:
    image = np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32)
    entropy = np.zeros(SHAPE, dtype=np.float32)
    entropy[2:8, 3:9, :] = 0.9
    rgb = _decode(render_slice_png(image, RAS, entropy=entropy, axis="axial", index=5)).astype(int)
    hot = rgb[16 - 9 : 16 - 3, 20 - 8 : 20 - 2]  # rows from j, cols from i (flipped)
    cold = rgb[:4, :8]
    saturation = hot.max(axis=2) - hot.min(axis=2)
    assert saturation.min() > 60 and (hot[..., 0] > hot[..., 2]).all()
    assert (cold.max(axis=2) == cold.min(axis=2)).all()  # untouched grayscale
    assert INFERNO.shape == (256, 3) and tuple(INFERNO[-1]) == (252, 255, 164)


def test_mask_outline_in_class_colour() -> None:
    image = np.full(SHAPE, 50.0, dtype=np.float32)
    image[0, 0, 0] = 0
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[5:15, 4:12, :] = 2
    rgb = render_slice_rgb(image, RAS, mask=mask, axis="axial", index=6, label_colors={2: (255, 0, 255)})
    magenta = np.all(rgb == (255, 0, 255), axis=2)
    rows, cols = np.nonzero(magenta)
    assert rows.min() == 16 - 12 and rows.max() == 16 - 1 - 4
    assert cols.min() == 20 - 15 and cols.max() == 20 - 1 - 5
    assert not magenta[8, 10]  # the inside is not filled
    assert magenta.sum() == 2 * 10 + 2 * 8 - 4


def test_montage_grid() -> None:
    image = _marked_volume()
    assert montage_indices(12, 4) == [2, 4, 7, 9]
    assert montage_indices(3, 9) == [0, 1, 2]
    sheet = _decode(render_montage_png(image, RAS, count=4, axis="axial", gap=2))
    assert sheet.shape == (2 * 16 + 2, 2 * 20 + 2, 3)
    sheet = _decode(render_montage_png(image, RAS, count=3, columns=3, axis=2, gap=1))
    assert sheet.shape == (16, 3 * 20 + 2, 3)


def test_preview_errors() -> None:
    image = np.zeros(SHAPE, np.float32)
    with pytest.raises(ImagingError, match="does not match"):
        render_slice_png(image, RAS, entropy=np.zeros((2, 2, 2)))
    with pytest.raises(ImagingError, match="axis must be"):
        render_slice_png(image, RAS, axis="oblique")  # type: ignore[arg-type]
    with pytest.raises(ImagingError, match="out of range"):
        render_slice_png(image, RAS, axis="axial", index=12)
    with pytest.raises(ImagingError, match="3D"):
        render_slice_png(np.zeros((4, 4)), RAS)
