"""Tests for models.metrics: hand cases, empty-mask conventions, aggregation, agreement with medpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist

from models import metrics as M


def _plate(shape: tuple[int, int, int], axis: int, index: int) -> np.ndarray:
    """A one-voxel-thick plate spanning the whole grid across ``axis`` at ``index``."""
    m = np.zeros(shape, dtype=bool)
    sl = [slice(None)] * 3
    sl[axis] = slice(index, index + 1)
    m[tuple(sl)] = True
    return m


def _brute_force(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """Independent reference: (hd95, asd a->b) from all pairwise surface-voxel distances."""
    st = ndi.generate_binary_structure(3, 1)
    sa = np.argwhere(a ^ ndi.binary_erosion(a, st)) * np.asarray(spacing)
    sb = np.argwhere(b ^ ndi.binary_erosion(b, st)) * np.asarray(spacing)
    d = cdist(sa, sb)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    return float(np.percentile(np.hstack((d_ab, d_ba)), 95)), float(d_ab.mean())


def _blob(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float = 3.0) -> np.ndarray:
    return ndi.gaussian_filter(rng.standard_normal(shape), sigma) > 0.03


# ----------------------------------------------------------------------------- hand cases
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("offset", [1, 3, 6])
def test_parallel_plates_exact_distance(axis: int, offset: int) -> None:
    spacing = (0.7, 1.3, 2.5)
    a, b = _plate((12, 10, 9), axis, 1), _plate((12, 10, 9), axis, 1 + offset)
    expected = offset * spacing[axis]
    assert M.hd95(a, b, spacing) == pytest.approx(expected, abs=1e-12)
    assert M.asd(a, b, spacing) == pytest.approx(expected, abs=1e-12)
    assert M.assd(b, a, spacing) == pytest.approx(expected, abs=1e-12)
    assert M.hd95(a, b) == pytest.approx(offset, abs=1e-12)  # voxels
    assert M.dice(a, b) == 0.0 and M.jaccard(a, b) == 0.0


def test_single_voxels_anisotropic() -> None:
    a, b = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    a[2, 2, 2] = True
    b[5, 6, 2] = True  # offset (3, 4, 0) voxels
    assert M.hd95(a, b) == pytest.approx(5.0)
    assert M.asd(a, b) == pytest.approx(5.0)
    assert M.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(math.sqrt(36 + 16))
    assert M.asd(a, b, (2.0, 1.0, 7.0)) == pytest.approx(math.sqrt(36 + 16))


@pytest.mark.parametrize("axis", [0, 2])
def test_disjoint_cubes_hand_computed(axis: int) -> None:
    """Two 4^3 cubes 10 voxels apart along ``axis``: each surface voxel's nearest partner is straight
    across, so the distances are 16 x 10, 12 x 9, 12 x 8, 16 x 7 voxels (per direction): ASD = 476 / 56
    = 8.5, HD95 = 10 (the top 32 of 112 pooled values are 10)."""
    a = np.zeros((20, 20, 20), bool)
    a[2:6, 3:7, 1:5] = True
    b = np.roll(a, 10, axis=axis)
    spacing = (0.5, 2.0, 3.0)
    s = spacing[axis]
    assert M.asd(a, b, spacing) == pytest.approx(8.5 * s, abs=1e-12)
    assert M.asd(b, a, spacing) == pytest.approx(8.5 * s, abs=1e-12)
    assert M.hd95(a, b, spacing) == pytest.approx(10 * s, abs=1e-12)
    res = M.evaluate_case(a.astype(np.uint8), b.astype(np.uint8), spacing, 2)[1]
    assert (res["hd95_vox"], res["asd_vox"], res["assd_vox"]) == pytest.approx((10.0, 8.5, 8.5))
    assert (res["hd95_mm"], res["asd_mm"]) == pytest.approx((10 * s, 8.5 * s))


def test_shifted_cubes_match_brute_force() -> None:
    a = np.zeros((24, 22, 20), bool)
    a[4:14, 5:15, 4:14] = True
    b = np.roll(a, 3, axis=0)  # shifted by 3 voxels along x
    for spacing in ((1.0, 1.0, 1.0), (0.8, 0.8, 2.0), (2.0, 0.5, 1.0)):
        hd_ref, asd_ref = _brute_force(a, b, spacing)
        assert M.hd95(a, b, spacing) == pytest.approx(hd_ref, abs=1e-9)
        assert M.asd(a, b, spacing) == pytest.approx(asd_ref, abs=1e-9)
        assert M.hd95(a, b, spacing) <= 3 * spacing[0] + 1e-9  # never beyond the shift
    # 10x10x10 cubes overlapping 7 of 10 slices: Dice = 2*700/2000, Jaccard = 700/1300
    assert M.dice(a, b) == pytest.approx(0.7)
    assert M.jaccard(a, b) == pytest.approx(700 / 1300)


def test_identical_masks() -> None:
    a = _blob(np.random.default_rng(1), (20, 20, 16))
    assert M.dice(a, a) == 1.0 and M.jaccard(a, a) == 1.0
    assert M.hd95(a, a, (1, 2, 3)) == 0.0 and M.asd(a, a) == 0.0


# ----------------------------------------------------------------------------- empty masks
def test_empty_conventions() -> None:
    empty, full = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    full[2:4, 2:4, 2:4] = True
    assert (M.dice(empty, empty), M.jaccard(empty, empty)) == (1.0, 1.0)
    assert (M.hd95(empty, empty), M.asd(empty, empty), M.assd(empty, empty)) == (0.0, 0.0, 0.0)
    for p, g in ((empty, full), (full, empty)):
        assert M.dice(p, g) == 0.0 and M.jaccard(p, g) == 0.0
        assert math.isnan(M.hd95(p, g)) and math.isnan(M.asd(p, g, (1, 1, 2))) and math.isnan(M.assd(p, g))
    with pytest.raises(ValueError):
        M.surface_distances(empty, full)


# ----------------------------------------------------------------------------- evaluate / aggregate
def test_evaluate_case_multiclass_and_units() -> None:
    gt = np.zeros((20, 20, 10), np.uint8)
    gt[2:8, 2:8, 2:6] = 1
    gt[12:18, 12:18, 2:6] = 2
    pred = gt.copy()
    pred[pred == 2] = 0
    pred[12:18, 12:18, 4:8] = 2  # class 2 shifted by 2 slices along z; class 3 absent in both
    spacing = (0.5, 0.5, 2.0)
    res = M.evaluate_case(pred, gt, spacing, num_classes=4)
    assert set(res) == {1, 2, 3} and set(res[1]) == set(M.METRIC_NAMES)
    assert res[1]["dice"] == 1.0 and res[1]["hd95_mm"] == 0.0
    assert res[2]["dice"] == pytest.approx(0.5) and res[2]["jaccard"] == pytest.approx(1 / 3)
    hd_ref, asd_ref = _brute_force(pred == 2, gt == 2, spacing)
    assert res[2]["hd95_mm"] == pytest.approx(hd_ref) and res[2]["asd_mm"] == pytest.approx(asd_ref)
    hd_vox, _ = _brute_force(pred == 2, gt == 2, (1, 1, 1))
    assert res[2]["hd95_vox"] == pytest.approx(hd_vox) and res[2]["hd95_mm"] > res[2]["hd95_vox"]
    assert res[3] == {**dict.fromkeys(M.METRIC_NAMES, 0.0), "dice": 1.0, "jaccard": 1.0}
    with_bg = M.evaluate_case(pred, gt, None, num_classes=4, include_background=True)
    assert 0 in with_bg and with_bg[2]["hd95_mm"] == with_bg[2]["hd95_vox"]


def test_evaluate_case_errors() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        M.evaluate_case(a, np.zeros((4, 4, 5), np.uint8), None, 2)
    with pytest.raises(ValueError, match="outside"):
        M.evaluate_case(a + 2, a, None, 2)
    with pytest.raises(ValueError, match="spacing"):
        M.evaluate_case(a, a, (1.0, 0.0, 1.0), 2)
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, (1.0, 1.0))


def test_aggregate_excludes_nan_and_counts() -> None:
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    shifted = np.roll(gt, 1, axis=0)
    cases = [
        M.evaluate_case(gt, gt, (1, 1, 1), 2),  # perfect
        M.evaluate_case(shifted, gt, (1, 1, 1), 2),  # one-voxel shift
        M.evaluate_case(np.zeros_like(gt), gt, (1, 1, 1), 2),  # missed: dice 0, distances NaN
    ]
    agg = M.aggregate(cases)[1]
    assert agg["dice"]["n"] == 3 and agg["dice"]["n_nan"] == 0
    assert agg["dice"]["mean"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert agg["dice"]["std"] == pytest.approx(np.std([1.0, 0.75, 0.0]))
    assert agg["hd95_mm"]["n"] == 2 and agg["hd95_mm"]["n_nan"] == 1
    assert agg["hd95_mm"]["mean"] == pytest.approx(cases[1][1]["hd95_mm"] / 2)
    assert agg["hd95_mm"]["max"] == pytest.approx(cases[1][1]["hd95_mm"])
    only_nan = M.aggregate([cases[2]])[1]["asd_mm"]
    assert math.isnan(only_nan["mean"]) and only_nan["n"] == 0 and only_nan["n_nan"] == 1


# ----------------------------------------------------------------------------- medpy agreement
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_medpy(seed: int) -> None:
    """Same algorithm as medpy (6-connected surfaces, EDT with sampling, numpy percentile), so the
    distances agree to floating-point round-off (1e-9 mm), Dice / Jaccard to 1e-12."""
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(seed)
    shape = (36, 30, 22)
    a = _blob(rng, shape)
    b = _blob(rng, shape) | (a & (rng.random(shape) < 0.6))  # partial overlap, some border contact
    spacing = ((0.7, 0.9, 2.1), (1.0, 1.0, 1.0), (0.625, 0.625, 0.625))[seed % 3]
    assert a.any() and b.any()
    assert M.dice(a, b) == pytest.approx(binary.dc(a, b), abs=1e-12)
    assert M.jaccard(a, b) == pytest.approx(binary.jc(a, b), abs=1e-12)
    assert M.hd95(a, b, spacing) == pytest.approx(binary.hd95(a, b, voxelspacing=spacing), abs=1e-9)
    assert M.asd(a, b, spacing) == pytest.approx(binary.asd(a, b, voxelspacing=spacing), abs=1e-9)
    assert M.asd(b, a, spacing) == pytest.approx(binary.asd(b, a, voxelspacing=spacing), abs=1e-9)
    assert M.assd(a, b, spacing) == pytest.approx(binary.assd(a, b, voxelspacing=spacing), abs=1e-9)
    res = M.evaluate_case(a.astype(np.uint8), b.astype(np.uint8), spacing, 2)[1]
    assert res["hd95_vox"] == pytest.approx(binary.hd95(a, b), abs=1e-9)


def test_auroc_hand_computed() -> None:
    from models.metrics import auroc

    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert auroc(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0], bool)) == 0.75  # a tie counts half
    assert auroc(np.array([3.0, 2.0]), np.array([1, 0], bool)) == 1.0
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([1, 1], bool)))
