from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from backend.imaging.errors import ImagingError, InvalidImage, UnsupportedInput, VolumeTooLarge
from backend.imaging.nifti import read_nifti, write_entropy_nifti, write_mask_nifti, write_nifti

AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 90.0], [0.0, 0.9, 0.0, -120.0], [0.0, 0.0, 2.5, -40.0], [0.0, 0.0, 0.0, 1.0]]
)


def _load(path: Path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    assert isinstance(img, nib.Nifti1Image)
    return img


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_read_valid_gz_with_scaling(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, str(tmp_path / "a.nii.gz"))
    vol = read_nifti(tmp_path / "a.nii.gz")
    assert vol.array.dtype == np.float32
    assert vol.shape == (4, 5, 6)
    assert vol.source == "nifti" and vol.dicom is None
    np.testing.assert_allclose(vol.array, data * 0.5 - 10.0)
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.spacing == pytest.approx((0.8, 0.9, 2.5))


def test_4d_with_one_volume_is_squeezed(tmp_path: Path) -> None:
    data = np.ones((4, 5, 6, 1), dtype=np.float32)
    vol = read_nifti(_save(tmp_path / "a.nii", data))
    assert vol.shape == (4, 5, 6)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((8, 9), "2D image"), ((4, 4, 4, 3), "4D image"), ((4, 4, 4, 1, 2), "5D image")],
)
def test_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...], message: str) -> None:
    path = _save(tmp_path / "a.nii.gz", np.zeros(shape, dtype=np.float32))
    with pytest.raises(UnsupportedInput, match=message):
        read_nifti(path)


def test_nan_and_inf_rejected(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    with pytest.raises(InvalidImage, match="2 NaN or infinite"):
        read_nifti(_save(tmp_path / "a.nii.gz", data))


def test_float64_beyond_float32_range_rejected(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), dtype=np.float64)
    data[0, 0, 0] = 1e300
    with pytest.raises(InvalidImage, match="NaN or infinite"):
        read_nifti(_save(tmp_path / "a.nii", data))


def test_zero_spacing_rejected(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), None)
    img.header.set_zooms((1.0, 0.0, 1.0))
    nib.save(img, str(tmp_path / "a.nii"))
    with pytest.raises(InvalidImage, match="spacing"):
        read_nifti(tmp_path / "a.nii")


def test_truncated_gzip_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        read_nifti(path)


def test_truncated_uncompressed_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.nii", np.ones((20, 20, 20), dtype=np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[:1000])
    with pytest.raises(InvalidImage):
        read_nifti(path)


@pytest.mark.parametrize(
    "payload", [b"this is not a nifti file at all" * 20, gzip.compress(b"garbage" * 100)]
)
def test_garbage_rejected(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "a.nii.gz"
    path.write_bytes(payload)
    with pytest.raises(ImagingError):
        read_nifti(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImagingError, match="does not exist"):
        read_nifti(tmp_path / "nope.nii.gz")


def test_complex_and_rgb_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInput, match="complex"):
        read_nifti(_save(tmp_path / "c.nii", np.zeros((4, 4, 4), dtype=np.complex64)))
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(UnsupportedInput, match="RGB"):
        read_nifti(_save(tmp_path / "rgb.nii", rgb))


def test_size_limits(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.nii", np.zeros((10, 10, 10), dtype=np.uint8))
    with pytest.raises(VolumeTooLarge, match="exceeds the limit"):
        read_nifti(path, max_voxels=999)
    with pytest.raises(VolumeTooLarge, match="1..8 voxels"):
        read_nifti(path, max_dim=8)
    assert read_nifti(path, max_voxels=1000).shape == (10, 10, 10)


def test_write_mask_and_entropy_exact_affine(tmp_path: Path) -> None:
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 2:4, 3] = 2
    entropy = np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_mask_nifti(tmp_path / "mask.nii.gz", mask, AFFINE)
    write_entropy_nifti(tmp_path / "entropy.nii.gz", entropy, AFFINE, xform_code=2)
    m = _load(tmp_path / "mask.nii.gz")
    e = _load(tmp_path / "entropy.nii.gz")
    assert m.get_data_dtype() == np.uint8 and e.get_data_dtype() == np.int16  # scaled to [0, 1]
    np.testing.assert_array_equal(np.asarray(m.dataobj), mask)
    np.testing.assert_allclose(np.asarray(e.dataobj), entropy, rtol=0, atol=1.6e-5)
    for img, code in ((m, 1), (e, 2)):
        sform, scode = img.get_sform(coded=True)
        qform, qcode = img.get_qform(coded=True)
        assert scode == code and qcode == code
        np.testing.assert_allclose(sform, AFFINE, atol=1e-6)
        np.testing.assert_allclose(qform, AFFINE, atol=1e-5)
    assert m.header.get_intent()[0] == "label"
    # the reader accepts what the writer wrote
    np.testing.assert_allclose(read_nifti(tmp_path / "entropy.nii.gz").array, entropy, rtol=0, atol=1.6e-5)


def test_write_sheared_affine_keeps_sform(tmp_path: Path) -> None:
    sheared = AFFINE.copy()
    sheared[0, 1] = 0.3
    write_nifti(tmp_path / "s.nii", np.zeros((3, 3, 3)), sheared, dtype=np.float32)
    img = _load(tmp_path / "s.nii")
    np.testing.assert_allclose(img.get_sform(), sheared, atol=1e-6)
    assert img.get_qform(coded=True)[1] == 0
    np.testing.assert_allclose(img.affine, sheared, atol=1e-6)


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ImagingError, match="0..255"):
        write_mask_nifti(tmp_path / "m.nii", np.full((2, 2, 2), 300), AFFINE)
    with pytest.raises(ImagingError, match="NaN"):
        write_entropy_nifti(tmp_path / "e.nii", np.full((2, 2, 2), np.nan), AFFINE)
    with pytest.raises(ImagingError, match="3D"):
        write_nifti(tmp_path / "x.nii", np.zeros((2, 2)), AFFINE, dtype=np.uint8)
    with pytest.raises(ImagingError, match="singular"):
        write_nifti(tmp_path / "x.nii", np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]), dtype=np.uint8)
