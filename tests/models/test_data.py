"""Tests for models.data.readers: NIfTI reading, MSD / nnU-Net folders, the LA .h5 set."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from models.data.msd import MSDDataset
from models.data.readers import LA_H5_SPACING, Case, LAH5Dataset, Volume, read_label, read_nifti

AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.9, 0, 5.0], [0, 0, 2.5, 1.0], [0, 0, 0, 1]])


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _img(seed: int, shape: tuple[int, ...] = (6, 5, 4)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(np.int16)


def _lab(seed: int, shape: tuple[int, ...] = (6, 5, 4), k: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, shape).astype(np.uint8)


# ----------------------------------------------------------------------------- single files
def test_read_nifti_values_affine_spacing(tmp_path: Path) -> None:
    arr = _img(0)
    vol = read_nifti(_write(tmp_path / "a.nii.gz", arr))
    assert vol.array.dtype == np.float32 and vol.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.spacing == pytest.approx((0.8, 0.9, 2.5))
    kept = read_nifti(tmp_path / "a.nii.gz", dtype=None)
    assert kept.array.dtype == np.int16
    squeezed = read_nifti(_write(tmp_path / "b.nii", arr[..., None]))
    assert squeezed.shape == (6, 5, 4)


def test_read_nifti_canonical_and_rotated_spacing(tmp_path: Path) -> None:
    flip = AFFINE.copy()
    flip[0, :] *= -1  # LAS: x axis flipped
    arr = _img(1)
    vol = read_nifti(_write(tmp_path / "las.nii.gz", arr, flip), canonical=True)
    np.testing.assert_array_equal(vol.array, arr[::-1].astype(np.float32))
    assert vol.affine[0, 0] > 0
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.diag([1.0, 1.0, 1.0, 1.0])
    rot[:2, :2] = [[c, -s], [s, c]]
    assert Volume(arr, rot @ AFFINE).spacing == pytest.approx((0.8, 0.9, 2.5))


def test_read_nifti_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read"):
        read_nifti(tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))


def test_read_label(tmp_path: Path) -> None:
    lab = _lab(2, k=4)
    vol = read_label(_write(tmp_path / "l.nii.gz", lab.astype(np.float32)))
    assert vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array, lab)
    for name, bad, msg in (
        ("frac", np.full((3, 3, 3), 0.5, np.float32), "non-integer"),
        ("neg", np.full((3, 3, 3), -1, np.int16), "negative"),
        ("big", np.full((3, 3, 3), 256, np.int16), "< 256"),
        ("nan", np.full((3, 3, 3), np.nan, np.float32), "NaN"),
    ):
        with pytest.raises(ValueError, match=msg):
            read_label(_write(tmp_path / f"{name}.nii.gz", bad))


# ----------------------------------------------------------------------------- MSD / nnU-Net folders
def _msd(root: Path) -> Path:
    """MSD-style folder: 2 listed training cases, 1 unlisted image, 1 unlabeled-folder image, 1 test."""
    for i, cid in enumerate(("la_003", "la_004")):
        _write(root / "imagesTr" / f"{cid}.nii.gz", _img(i))
        _write(root / "labelsTr" / f"{cid}.nii.gz", _lab(i))
    _write(root / "imagesTr" / "la_009.nii.gz", _img(9))
    (root / "imagesTr" / "._la_003.nii.gz").write_bytes(b"macOS resource fork")
    _write(root / "imagesUnlabeled" / "extra_1.nii.gz", _img(11))
    _write(root / "imagesTs" / "la_001.nii.gz", _img(5))
    _write(root / "labelsTs" / "la_001.nii.gz", _lab(5))
    meta = {
        "name": "Heart", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
        "numTraining": 2,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ("la_003", "la_004")],
        "test": ["./imagesTs/la_001.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout(tmp_path: Path) -> None:
    ds = MSDDataset(_msd(tmp_path / "Task02_Heart"))
    assert [c.id for c in ds.labeled_cases] == ["la_003", "la_004"]
    assert sorted(c.id for c in ds.unlabeled_cases) == ["extra_1", "la_009"]
    assert all(c.label_path is None for c in ds.unlabeled_cases)
    assert [(c.id, c.label_path is not None) for c in ds.test_cases] == [("la_001", True)]
    assert ds.class_names == {0: "background", 1: "left atrium"} and ds.num_classes == 2
    image, label = ds.load(ds.labeled_cases[1])
    np.testing.assert_array_equal(image.array, _img(1).astype(np.float32))
    assert label is not None
    np.testing.assert_array_equal(label.array, _lab(1))
    assert image.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert ds.load(ds.unlabeled_cases[0])[1] is None


def test_nnunet_v1_names_with_channel_suffix(tmp_path: Path) -> None:
    root = _msd(tmp_path / "d")
    for p in (root / "imagesTr").glob("la_*.nii.gz"):  # nnU-Net v1 renames images to <id>_0000
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    ds = MSDDataset(root)
    assert [c.id for c in ds.labeled_cases] == ["la_003", "la_004"]
    assert ds.labeled_cases[0].image_path.name == "la_003_0000.nii.gz"
    assert "la_009" in {c.id for c in ds.unlabeled_cases}


def test_nnunet_v2_multichannel(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001"
    for i, cid in enumerate(("case_a", "case_b", "case_c")):
        for ch in range(2):
            _write(root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz", _img(10 * i + ch))
        if cid != "case_c":
            _write(root / "labelsTr" / f"{cid}.nii.gz", _lab(i, k=3))
    meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1, "edema": 2},
            "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = MSDDataset(root)
    assert [c.id for c in ds.labeled_cases] == ["case_a", "case_b"]
    assert [c.id for c in ds.unlabeled_cases] == ["case_c"]
    assert ds.test_cases == []
    assert ds.class_names == {0: "background", 1: "tumour", 2: "edema"}
    case = ds.labeled_cases[1]
    assert isinstance(case, Case) and len(case.channel_paths) == 2
    image = ds.read_image(case)
    assert image.array.shape == (6, 5, 4, 2)
    np.testing.assert_array_equal(image.array[..., 1], _img(11).astype(np.float32))


def test_plain_folder_without_json(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for i in range(3):
        _write(root / "imagesTr" / f"img_{i}.nii.gz", _img(i))
        _write(root / "labelsTr" / f"img_{i}.nii.gz", _lab(i, k=3 if i == 2 else 2))
    _write(root / "imagesTs" / "t.nii", _img(7))
    ds = MSDDataset(root)
    assert [c.id for c in ds.labeled_cases] == ["img_0", "img_1", "img_2"]
    assert ds.unlabeled_cases == [] and [(c.id, c.label_path) for c in ds.test_cases] == [("t", None)]
    assert ds.class_names == {0: "background", 1: "class_1", 2: "class_2"}
    assert MSDDataset(root, class_names={0: "bg", 1: "a", 2: "b"}).class_names[2] == "b"


def test_msd_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        MSDDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="imagesTr"):
        MSDDataset(tmp_path / "empty")

    root = _msd(tmp_path / "orphan")
    _write(root / "labelsTr" / "ghost.nii.gz", _lab(0))
    with pytest.raises(ValueError, match="without a matching image.*ghost"):
        MSDDataset(root)

    root = _msd(tmp_path / "missing")
    (root / "labelsTr" / "la_004.nii.gz").unlink()
    with pytest.raises(ValueError, match="la_004"):
        MSDDataset(root)

    root = _msd(tmp_path / "json")
    (root / "dataset.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        MSDDataset(root)

    root = _msd(tmp_path / "regions")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="region-based"):
        MSDDataset(root)

    root = tmp_path / "gap"
    _write(root / "imagesTr" / "c_0000.nii.gz", _img(0))
    _write(root / "imagesTr" / "c_0002.nii.gz", _img(0))
    with pytest.raises(ValueError, match="not 0..N-1"):
        MSDDataset(root)

    root = tmp_path / "shape"
    _write(root / "imagesTr" / "c.nii.gz", _img(0))
    _write(root / "labelsTr" / "c.nii.gz", _lab(0, shape=(6, 5, 3)))
    ds = MSDDataset(root)
    with pytest.raises(ValueError, match="label shape"):
        ds.load(ds.labeled_cases[0])

    root = tmp_path / "ending"
    _write(root / "imagesTr" / "c_0000.nii.gz", _img(0))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0}, "file_ending": ".mha"}))
    with pytest.raises(ValueError, match="file_ending"):
        MSDDataset(root)


# ----------------------------------------------------------------------------- LA .h5
def _la(tmp_path: Path) -> Path:
    root = tmp_path / "LA" / "2018LA_Seg_Training Set"
    for i, cid in enumerate(("UTL8TYR6LOFQ", "0RZDK210BSMWAA6467LU")):
        (root / cid).mkdir(parents=True)
        with h5py.File(root / cid / "mri_norm2.h5", "w") as f:
            f["image"] = np.random.default_rng(i).normal(size=(8, 7, 5)).astype(np.float64)
            f["label"] = _lab(i, (8, 7, 5))
    (tmp_path / "LA" / "train.list").write_text("UTL8TYR6LOFQ\n0RZDK210BSMWAA6467LU\n\n")
    (tmp_path / "LA" / "test.list").write_text("0RZDK210BSMWAA6467LU/mri_norm2.h5\n")
    return root


def test_la_h5(tmp_path: Path) -> None:
    root = _la(tmp_path)
    ds = LAH5Dataset(root, "train.list")  # found in root's parent, like the original repositories
    assert len(ds) == 2 and ds.case_ids == ["UTL8TYR6LOFQ", "0RZDK210BSMWAA6467LU"]
    image, label = ds[1]
    assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
    np.testing.assert_allclose(image.array, np.random.default_rng(1).normal(size=(8, 7, 5)), rtol=1e-6)
    np.testing.assert_array_equal(label.array, _lab(1, (8, 7, 5)))
    assert image.spacing == (LA_H5_SPACING,) * 3 == (0.625, 0.625, 0.625)
    np.testing.assert_array_equal(image.affine, np.diag([0.625, 0.625, 0.625, 1.0]))
    assert len(list(ds)) == 2
    test = LAH5Dataset(root, tmp_path / "LA" / "test.list")
    assert test.case_ids == ["0RZDK210BSMWAA6467LU"]


def test_la_h5_errors(tmp_path: Path) -> None:
    root = _la(tmp_path)
    with pytest.raises(ValueError, match="list file"):
        LAH5Dataset(root, "val.list")
    (tmp_path / "LA" / "bad.list").write_text("NOPE\n")
    with pytest.raises(ValueError, match="NOPE"):
        LAH5Dataset(root, "bad.list")
    with h5py.File(root / "UTL8TYR6LOFQ" / "mri_norm2.h5", "w") as f:
        f["image"] = np.zeros((2, 2, 2))
    with pytest.raises(ValueError, match="missing datasets"):
        LAH5Dataset(root, "train.list")[0]
    with pytest.raises(ValueError, match="not found"):
        LAH5Dataset(tmp_path / "nowhere", "train.list")
