"""The stored copy of a case's image: int16 when that is lossless, float32 otherwise."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from backend.imaging.nifti import read_nifti, write_nifti
from backend.services.cases import storage_dtype


def test_storage_dtype_is_lossless(tmp_path: Path) -> None:
    ct = np.random.default_rng(0).integers(-1024, 3072, (9, 8, 7)).astype(np.float32)
    assert storage_dtype(ct) is np.int16
    assert storage_dtype(ct + 0.5) is np.float32
    assert storage_dtype(np.full((2, 2, 2), 40000.0, np.float32)) is np.float32
    assert storage_dtype(np.full((2, 2, 2), -40000.0, np.float32)) is np.float32
    write_nifti(tmp_path / "i.nii.gz", np.asfortranarray(ct), np.eye(4), dtype=storage_dtype(ct))
    assert nib.load(str(tmp_path / "i.nii.gz")).get_data_dtype() == np.int16
    np.testing.assert_array_equal(read_nifti(tmp_path / "i.nii.gz").array, ct)
