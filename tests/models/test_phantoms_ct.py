"""The second phantom family (contrast-CT-like, oblique grids): deterministic, oblique, a hard task."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.data.phantoms import otsu_threshold, write_phantom_dataset
from models.data.phantoms_ct import make_ct_phantom


def test_deterministic_oblique_and_hounsfield_like() -> None:
    a = make_ct_phantom(np.random.default_rng([3, 1]), (64, 60, 40))
    b = make_ct_phantom(np.random.default_rng([3, 1]), (64, 60, 40))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.image.shape == a.label.shape == (64, 60, 40) and a.label.dtype == np.uint8
    rot = a.affine[:3, :3] / np.linalg.norm(a.affine[:3, :3], axis=0)
    off_diagonal = np.abs(rot - np.diag(np.diag(rot))).max()
    assert off_diagonal > 0.1  # the voxel axes are rotated against RAS (10-35 degrees)
    assert np.allclose(rot.T @ rot, np.eye(3), atol=1e-9)
    lo, hi = np.percentile(a.image, [1, 99.9])
    assert lo < -900 and 150 < hi < 1200  # air outside the body, bone / contrast at the top


@pytest.mark.parametrize("index", range(4))
def test_target_size_and_threshold_difficulty(index: int) -> None:
    ph = make_ct_phantom(np.random.default_rng([100, index]))
    share = float(ph.label.mean())
    assert 0.004 < share < 0.06
    body = ph.image > -500
    pred = ph.image > otsu_threshold(ph.image[body])
    dice = 2 * np.count_nonzero(pred & (ph.label > 0)) / (np.count_nonzero(pred) + np.count_nonzero(ph.label))
    assert dice < 0.6  # spine, aorta and calcium are as bright: no global threshold solves it


def test_written_as_an_msd_dataset(tmp_path: Path) -> None:
    info = write_phantom_dataset(tmp_path / "ct", 2, seed=5, test_cases=1, shape=(48, 44, 32), family="ct")
    ds = json.loads((tmp_path / "ct" / "dataset.json").read_text())
    assert ds["name"] == "DualsegPhantomCT" and ds["modality"] == {"0": "CT"}
    assert ds["generator"]["family"] == "ct"
    img = nib.load(tmp_path / "ct" / "imagesTr" / "phantom_000.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.dtype == np.int16 and data.min() < -900  # negative HU are kept
    ref = make_ct_phantom(np.random.default_rng([5, 0]), (48, 44, 32))
    assert np.allclose(img.affine, ref.affine)
    assert info["test"] == ["phantom_002"]
    with pytest.raises(ValueError, match="unknown phantom family"):
        write_phantom_dataset(tmp_path / "x", 1, family="pet")
