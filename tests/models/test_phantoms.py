"""Tests for models.data.phantoms: determinism, anatomy, geometry, dataset layout, difficulty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.data.msd import MSDDataset
from models.data.phantoms import (
    PHANTOM_CLASSES,
    STRUCTURES,
    make_phantom,
    otsu_threshold,
    write_phantom_dataset,
)

SMALL = (64, 64, 48)  # fast in tests; anatomy scales with the field of view


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def test_deterministic_per_seed() -> None:
    a, b, c = make_phantom(7, SMALL), make_phantom(7, SMALL), make_phantom(8, SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.label, c.label)
    g1, g2 = (make_phantom(np.random.default_rng([3, 1]), SMALL) for _ in range(2))
    np.testing.assert_array_equal(g1.image, g2.image)


def test_types_shapes_and_default_shape() -> None:
    ph = make_phantom(np.random.default_rng(5))
    assert ph.image.dtype == np.float32 and ph.label.dtype == np.uint8 and ph.structures.dtype == np.uint8
    assert ph.image.shape == ph.label.shape == ph.structures.shape
    x, y, z = ph.image.shape
    assert x == y and x in (96, 112, 128) and z in (64, 80, 96)
    assert set(np.unique(ph.label)) == {0, 1}
    assert np.isfinite(ph.image).all() and ph.image.min() >= 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spacing_and_affine(seed: int) -> None:
    ph = make_phantom(seed, SMALL)
    sx, sy, sz = ph.spacing
    assert 0.6 <= sx <= 1.2 and sx == pytest.approx(sy) and 1.0 <= sz <= 2.5
    np.testing.assert_allclose(ph.affine[:3, :3], np.diag([sx, sy, sz]))
    centre = ph.affine @ np.array([*((np.array(SMALL) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # origin at the grid centre


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_brighter_and_neighbours_unlabeled(seed: int) -> None:
    ph = make_phantom(seed, SMALL)
    lab = ph.label == 1
    assert 0.003 < lab.mean() < 0.2
    atrium = float(ph.image[lab].mean())
    assert atrium > 1.8 * float(ph.image[~lab].mean())
    for sid in (2, 3, 4):  # aorta, ventricle, right atrium: always present
        m = ph.structures == sid
        assert m.sum() > 100, STRUCTURES[sid]
        assert not (m & lab).any()
        ratio = float(ph.image[m].mean()) / atrium
        assert 0.6 < ratio < 1.6, (STRUCTURES[sid], ratio)  # blood-like brightness, not in the label
    assert (ph.structures == 1).sum() == lab.sum()


def test_neighbours_touch_or_near() -> None:
    """The aorta / ventricle lie within a few mm of the atrium in most cases."""
    from scipy import ndimage as ndi

    near = 0
    for seed in range(4):
        ph = make_phantom(seed, SMALL)
        dist = ndi.distance_transform_edt(ph.label == 0, sampling=ph.spacing)
        gaps = [float(dist[ph.structures == sid].min()) for sid in (2, 3)]
        near += sum(g <= 5.0 for g in gaps)
    assert near >= 6


def test_otsu_threshold_is_not_enough() -> None:
    """Global thresholding segments the bright neighbours too: Dice far below 0.9."""
    dices = []
    for seed in range(4):
        ph = make_phantom(np.random.default_rng([seed, 0]), (96, 96, 64))
        dices.append(_dice(ph.image > otsu_threshold(ph.image), ph.label == 1))
    assert max(dices) < 0.8 and float(np.mean(dices)) < 0.65


def test_otsu_threshold_two_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 1, 5000), rng.normal(30, 2, 3000)])
    t = otsu_threshold(values)
    assert (values[:5000] < t).mean() > 0.99 and (values[5000:] > t).all()


def test_write_dataset_readable(tmp_path: Path) -> None:
    calls: list[float] = []
    out = write_phantom_dataset(
        tmp_path / "ph", cases=3, seed=4, test_cases=1, shape=SMALL, progress=calls.append
    )
    assert out["training"] == ["phantom_000", "phantom_001", "phantom_002"] and out["test"] == ["phantom_003"]
    assert calls == pytest.approx([0.25, 0.5, 0.75, 1.0])
    meta = json.loads((tmp_path / "ph" / "dataset.json").read_text())
    assert meta["modality"] == {"0": "MRI"} and meta["labels"] == {"0": "background", "1": "left_atrium"}
    assert meta["numTraining"] == 3 and len(meta["training"]) == 3 and meta == out["dataset"]

    ds = MSDDataset(tmp_path / "ph")
    assert [c.id for c in ds.labeled_cases] == out["training"] and ds.unlabeled_cases == []
    assert [(c.id, c.label_path is not None) for c in ds.test_cases] == [("phantom_003", True)]
    assert ds.class_names == PHANTOM_CLASSES
    image, label = ds.load(ds.labeled_cases[1])
    ref = make_phantom(np.random.default_rng([4, 1]), SMALL)
    assert label is not None
    np.testing.assert_array_equal(label.array, ref.label)
    np.testing.assert_allclose(image.array, np.rint(ref.image), atol=0.5)
    np.testing.assert_allclose(image.affine, ref.affine, atol=1e-5)
    assert image.spacing == pytest.approx(ref.spacing, abs=1e-5)
    test_image, _ = ds.load(ds.test_cases[0])
    ref_test = make_phantom(np.random.default_rng([4, 3]), SMALL)
    np.testing.assert_allclose(test_image.array, np.rint(ref_test.image), atol=0.5)


def test_write_dataset_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cases"):
        write_phantom_dataset(tmp_path, cases=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        write_phantom_dataset(tmp_path, cases=1, seed=-1)
    out = write_phantom_dataset(tmp_path / "d", cases=1, seed=0, shape=(32, 32, 32))
    assert out["num_test"] == 1 and out["seconds"] > 0
