"""The streamed NIfTI writers: scaled-int16 maps in [0, 1] (precision), affine, layouts, gzip backends."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from backend.imaging import gz
from backend.imaging.errors import ImagingError
from backend.imaging.nifti import read_nifti
from backend.imaging.nifti_write import (
    UNIT_MAX_ERROR,
    UNIT_SLOPE,
    write_entropy_nifti,
    write_nifti,
    write_unit_interval_nifti,
)
from tests.helpers import oblique_affine

AFFINE = oblique_affine((0.7, 0.8, 1.5), angle_deg=25.0)


def _load(path: Path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    assert isinstance(img, nib.Nifti1Image)
    return img


def test_unit_interval_round_trip_error_and_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = rng.random((37, 29, 23), dtype=np.float32)
    values[0, 0, 0], values[1, 0, 0], values[2, 0, 0] = 0.0, 1.0, 1.0 + 5e-6  # the ends, and clipped noise
    values[3, 0, 0] = 0.5 / 32767  # exactly half a step
    write_entropy_nifti(tmp_path / "e.nii.gz", values, AFFINE)
    img = _load(tmp_path / "e.nii.gz")
    assert img.get_data_dtype() == np.int16
    assert img.dataobj.slope == np.float32(1 / 32767) and img.dataobj.inter == 0  # type: ignore[attr-defined]
    for back in (img.get_fdata(dtype=np.float32), np.asarray(img.dataobj, dtype=np.float64),
                 read_nifti(tmp_path / "e.nii.gz").array):
        error = np.abs(back - np.clip(values, 0, 1)).max()
        assert error <= UNIT_MAX_ERROR <= 1e-4, error
        assert back.min() >= 0.0 and back.max() <= 1.0
        assert back[0, 0, 0] == 0.0 and back[1, 0, 0] == pytest.approx(1.0, abs=1e-7)
    assert UNIT_MAX_ERROR == 1.6e-5 and UNIT_SLOPE == pytest.approx(3.0519e-5, rel=1e-4)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    assert img.get_sform(coded=True)[1] == 1 and img.get_qform(coded=True)[1] == 1
    assert (img.header["cal_min"], img.header["cal_max"]) == (0.0, 1.0)


def test_unit_interval_refuses_values_outside(tmp_path: Path) -> None:
    with pytest.raises(ImagingError, match=r"in \[0, 1\]"):
        write_unit_interval_nifti(tmp_path / "x.nii", np.full((2, 2, 2), 1.01), AFFINE)
    with pytest.raises(ImagingError, match="NaN"):
        write_entropy_nifti(tmp_path / "x.nii", np.full((2, 2, 2), np.nan), AFFINE)


@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_any_memory_layout_gives_the_same_file(tmp_path: Path, order: str) -> None:
    """Arrays in C order, Fortran order (the predictor's) or strided views are written voxel for voxel."""
    base = np.random.default_rng(1).integers(0, 3, (70, 9, 41)).astype(np.uint8)
    arr = {"C": base, "F": np.asfortranarray(base), "strided": np.asfortranarray(
        np.repeat(base, 2, axis=0))[::2]}[order]
    np.testing.assert_array_equal(arr, base)
    write_nifti(tmp_path / "m.nii.gz", arr, AFFINE, dtype=np.uint8, intent="label")
    img = _load(tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), base)
    assert img.header.get_intent()[0] == "label" and img.get_data_dtype() == np.uint8


def test_many_slabs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.imaging.nifti_write as nw

    monkeypatch.setattr(nw, "_SLAB_VOXELS", 50)  # several slices per slab, a short last slab
    arr = np.asfortranarray(np.random.default_rng(2).random((6, 4, 11), dtype=np.float32))
    write_unit_interval_nifti(tmp_path / "u.nii", arr, AFFINE)
    np.testing.assert_allclose(_load(tmp_path / "u.nii").get_fdata(), arr, atol=UNIT_MAX_ERROR)


@pytest.mark.parametrize("prefer_isal", [True, False])
def test_both_gzip_backends_write_standard_gzip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                prefer_isal: bool) -> None:
    if not prefer_isal:
        monkeypatch.setattr(gz, "_igzip", None)  # what a machine without the isal wheel runs
    assert gz.backend_name() == ("isal" if prefer_isal else "zlib")
    arr = np.arange(24 * 20 * 10, dtype=np.uint8).reshape(24, 20, 10) % 7
    write_nifti(tmp_path / "m.nii.gz", arr, AFFINE, dtype=np.uint8)
    with gzip.open(tmp_path / "m.nii.gz") as f:  # the standard library reads it
        raw = f.read()
    assert len(raw) == 352 + arr.size and raw[344:348] == b"n+1\0"
    np.testing.assert_array_equal(np.frombuffer(raw[352:], np.uint8).reshape(arr.shape, order="F"), arr)
