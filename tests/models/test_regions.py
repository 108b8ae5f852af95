"""Tests for models/inference/regions.py: components, ranking, exact geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.inference.regions import extract_regions

KEYS = {
    "rank", "voxel_count", "volume_mm3", "entropy_mass", "mean_entropy", "max_entropy", "centroid_voxel",
    "centroid_mm", "bbox_voxel", "bbox_mm", "slice_range", "labels",
}  # fmt: skip


def two_blobs() -> tuple[np.ndarray, np.ndarray]:
    """Blob A: big box, entropy 0.6 (mass 0.6 * 60 = 36); blob B: small box, entropy 1.0 (mass 8)."""
    ent = np.zeros((20, 16, 12), dtype=np.float32)
    ent[2:5, 3:7, 4:9] = 0.6  # 3 * 4 * 5 = 60 voxels
    ent[10:12, 10:12, 1:3] = 1.0  # 8 voxels
    ent[11, 11, 2] = 0.9  # mass 7.9, max still 1.0
    mask = np.zeros(ent.shape, dtype=np.uint8)
    mask[2:4] = 1
    mask[10:12, 10:12, 1] = 2
    return ent, mask


def test_two_blobs_ranked_by_mass_with_exact_voxel_geometry() -> None:
    ent, mask = two_blobs()
    regions = extract_regions(ent, np.eye(4), threshold=0.5, min_voxels=1, mask=mask)
    assert len(regions) == 2
    json.dumps(regions)  # JSON-ready
    a, b = regions
    assert set(a) == KEYS and set(b) == KEYS
    assert (a["rank"], b["rank"]) == (1, 2)
    assert a["voxel_count"] == 60 and b["voxel_count"] == 8
    assert a["entropy_mass"] == pytest.approx(36.0, rel=1e-6)
    assert b["entropy_mass"] == pytest.approx(7.9, rel=1e-6)
    assert a["mean_entropy"] == pytest.approx(0.6, rel=1e-6)
    assert a["max_entropy"] == pytest.approx(0.6, rel=1e-6) and b["max_entropy"] == 1.0
    assert a["bbox_voxel"] == {"min": [2, 3, 4], "max": [4, 6, 8]}
    assert b["bbox_voxel"] == {"min": [10, 10, 1], "max": [11, 11, 2]}
    assert a["centroid_voxel"] == [3.0, 4.5, 6.0]
    assert b["centroid_voxel"] == [10.5, 10.5, 1.5]
    assert a["slice_range"] == [4, 8] and b["slice_range"] == [1, 2]
    assert a["volume_mm3"] == 60.0
    assert a["centroid_mm"] == a["centroid_voxel"]
    assert a["bbox_mm"] == {"min": [2.0, 3.0, 4.0], "max": [4.0, 6.0, 8.0]}
    assert a["labels"] == [0, 1] and b["labels"] == [0, 2]


def test_mm_coordinates_through_oblique_affine() -> None:
    ent, _ = two_blobs()
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.array(
        [[0.0, -1.2 * c, 2.5 * s, 10.0], [-0.8, 0.0, 0.0, -20.0], [0.0, 1.2 * s, 2.5 * c, 5.0], [0, 0, 0, 1]]
    )
    (a, b) = extract_regions(ent, aff, threshold=0.5, min_voxels=1)
    to_mm = lambda v: aff[:3, :3] @ np.asarray(v, float) + aff[:3, 3]  # noqa: E731
    np.testing.assert_allclose(a["centroid_mm"], to_mm([3.0, 4.5, 6.0]), atol=1e-12)
    corners = np.array([to_mm([i, j, k]) for i in (2, 4) for j in (3, 6) for k in (4, 8)])
    np.testing.assert_allclose(a["bbox_mm"]["min"], corners.min(0), atol=1e-12)
    np.testing.assert_allclose(a["bbox_mm"]["max"], corners.max(0), atol=1e-12)
    assert a["volume_mm3"] == pytest.approx(60 * 0.8 * 1.2 * 2.5)
    assert b["volume_mm3"] == pytest.approx(8 * 0.8 * 1.2 * 2.5)
    assert a["labels"] == []


def test_connectivity_threshold_min_voxels_and_cap() -> None:
    ent = np.zeros((10, 10, 10), dtype=np.float32)
    ent[1, 1, 1] = ent[2, 2, 2] = 0.9  # diagonal neighbours: one 26-connected component
    ent[5, 5, 5] = 0.49  # below threshold
    ent[7:9, 7:9, 7:9] = 0.5  # exactly at threshold: included, mass 4
    regions = extract_regions(ent, np.eye(4), threshold=0.5, min_voxels=1)
    assert [r["voxel_count"] for r in regions] == [8, 2]
    assert extract_regions(ent, np.eye(4), threshold=0.5, min_voxels=3)[0]["voxel_count"] == 8
    assert len(extract_regions(ent, np.eye(4), threshold=0.5, min_voxels=1, max_regions=1)) == 1
    assert extract_regions(np.zeros((4, 4, 4)), np.eye(4)) == []
    assert extract_regions(ent, np.eye(4), max_regions=0) == []


def test_many_regions_sorted_and_capped() -> None:
    rng = np.random.default_rng(0)
    ent = np.zeros((40, 40, 40), dtype=np.float32)
    for n in range(30):  # 30 separated cubes of varied size / entropy
        i, j, k = (n % 5) * 8, ((n // 5) % 6) * 6 + 1, 2 + (n % 3) * 10
        size = 1 + n % 4
        ent[i : i + size, j : j + size, k : k + size] = rng.uniform(0.5, 1.0)
    regions = extract_regions(ent, np.eye(4), threshold=0.5, min_voxels=1, max_regions=20)
    assert len(regions) == 20
    masses = [r["entropy_mass"] for r in regions]
    assert masses == sorted(masses, reverse=True)
    assert [r["rank"] for r in regions] == list(range(1, 21))


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        extract_regions(np.zeros((4, 4)), np.eye(4))
    with pytest.raises(ValueError):
        extract_regions(np.zeros((4, 4, 4)), np.eye(3))
    with pytest.raises(ValueError):
        extract_regions(np.zeros((4, 4, 4)), np.eye(4), mask=np.zeros((4, 4, 3)))


def test_fortran_ordered_maps_give_the_same_regions() -> None:
    """The predictor hands Fortran-ordered maps; they are labelled as their transpose, axes reversed back."""
    rng = np.random.default_rng(7)
    entropy = np.clip(np.abs(rng.normal(0, 0.35, (23, 17, 11))), 0, 1).astype(np.float32)
    mask = (entropy > 0.3).astype(np.uint8) + (entropy > 0.8)
    affine = np.array([[0.9, 0.1, 0, -5], [0, 1.1, 0.2, 3], [0.1, 0, 2.0, 7], [0, 0, 0, 1]])
    c_order = extract_regions(entropy, affine, min_voxels=2, max_regions=50, mask=mask)
    f_order = extract_regions(np.asfortranarray(entropy), affine, min_voxels=2, max_regions=50,
                              mask=np.asfortranarray(mask))
    assert len(c_order) > 5

    def key(r: dict) -> tuple:  # type: ignore[type-arg]
        return (r["voxel_count"], round(r["entropy_mass"], 5), r["bbox_voxel"]["min"], r["bbox_voxel"]["max"],
                r["slice_range"], r["labels"], [round(v, 6) for v in r["centroid_mm"]],
                [round(v, 6) for v in r["bbox_mm"]["min"] + r["bbox_mm"]["max"]])

    assert sorted(map(key, f_order)) == sorted(map(key, c_order))
