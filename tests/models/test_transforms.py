"""Tests for models/data/transforms.py: orientation, resampling, intensity normalisation, preprocess."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch

from models.data.transforms import (
    from_canonical,
    normalize_intensity,
    preprocess,
    preprocess_label,
    resample,
    resample_affine,
    resampled_shape,
    restore_to_input,
    to_canonical,
    voxel_spacing,
)


def rotation(angles: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, oblique: float = 0.3) -> np.ndarray:
    """Permuted, flipped, slightly rotated, anisotropic affine."""
    perm = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], size=3)
    base = np.zeros((3, 3))
    for col, row in enumerate(perm):
        base[row, col] = signs[col]
    rot = rotation(tuple(rng.uniform(-oblique, oblique, size=3)))
    aff = np.eye(4)
    aff[:3, :3] = rot @ base @ np.diag(rng.uniform(0.5, 3.0, size=3))
    aff[:3, 3] = rng.uniform(-100, 100, size=3)
    return aff


def world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("seed", range(12))
def test_canonical_preserves_patient_coordinates_and_matches_nibabel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (5, 7, 4)
    arr = rng.normal(size=shape).astype(np.float32)
    aff = random_affine(rng)
    canon, canon_aff, record = to_canonical(arr, aff)

    ref = nib.as_closest_canonical(nib.Nifti1Image(arr, aff))
    np.testing.assert_array_equal(canon, np.asarray(ref.dataobj))
    np.testing.assert_allclose(canon_aff, ref.affine, atol=1e-9)
    assert canon.shape == record.canonical_shape

    # every voxel keeps its world coordinate (and its value)
    for c in itertools.product(*(range(s) for s in canon.shape)):
        v = np.array(c, dtype=float)
        pos = world(canon_aff, v)
        src = np.linalg.solve(aff[:3, :3], pos - aff[:3, 3])
        idx = tuple(int(round(x)) for x in src)
        np.testing.assert_allclose(src, idx, atol=1e-6)
        assert canon[c] == arr[idx]

    # canonical axes point (mostly) along +R, +A, +S
    directions = canon_aff[:3, :3] / np.linalg.norm(canon_aff[:3, :3], axis=0)
    assert np.all(np.argmax(np.abs(directions), axis=0) == [0, 1, 2])
    assert np.all(np.diag(directions) > 0)

    back = from_canonical(canon, record)
    np.testing.assert_array_equal(back, arr)
    assert back.flags["C_CONTIGUOUS"]


def test_canonical_channels_and_torch() -> None:
    rng = np.random.default_rng(1)
    aff = random_affine(rng)
    arr = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    canon, _, record = to_canonical(arr, aff)
    canon_t, _, _ = to_canonical(torch.from_numpy(arr), aff)
    np.testing.assert_array_equal(canon_t.numpy(), canon)
    for c in range(2):
        np.testing.assert_array_equal(canon[c], to_canonical(arr[c], aff)[0])
    np.testing.assert_array_equal(from_canonical(canon_t, record).numpy(), arr)
    with pytest.raises(ValueError):
        from_canonical(canon[:, :-1], record)


def test_canonical_identity_and_singular() -> None:
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    arr = np.arange(24).reshape(2, 3, 4)
    canon, canon_aff, record = to_canonical(arr, aff)
    assert record.is_identity
    np.testing.assert_array_equal(canon, arr)
    np.testing.assert_array_equal(canon_aff, aff)
    bad = aff.copy()
    bad[:3, 2] = bad[:3, 1]
    with pytest.raises(ValueError):
        to_canonical(arr, bad)


def test_resampled_shape_and_affine_geometry() -> None:
    assert resampled_shape((100, 80, 30), (0.8, 1.0, 2.5), (1.0, 1.0, 1.0)) == (80, 80, 75)
    assert resampled_shape((3, 3, 3), (1, 1, 1), (10, 10, 10)) == (1, 1, 1)
    aff = np.diag([0.8, 1.0, 2.5, 1.0])
    aff[:3, 3] = [10, 20, 30]
    new = resample_affine(aff, (100, 80, 30), (80, 80, 75))
    np.testing.assert_allclose(voxel_spacing(new), (1.0, 1.0, 1.0))
    # field of view edges are kept: the outer edge of voxel -0.5 maps to the same point
    np.testing.assert_allclose(world(new, np.array([-0.5, -0.5, -0.5])), world(aff, np.array([-0.5] * 3)))
    np.testing.assert_allclose(
        world(new, np.array([79.5, 79.5, 74.5])), world(aff, np.array([99.5, 79.5, 29.5]))
    )


def test_resample_round_trip_smooth_image() -> None:
    shape = (40, 36, 20)
    grid = np.meshgrid(*(np.linspace(0, 1, s) for s in shape), indexing="ij")
    img = (np.sin(2 * grid[0]) + np.cos(1.5 * grid[1]) * grid[2]).astype(np.float32)
    up = resample(img, (57, 50, 33))
    assert up.shape == (57, 50, 33) and up.dtype == np.float32
    back = resample(up, shape)
    assert back.shape == shape
    inner = (slice(2, -2),) * 3  # borders clamp, interior is near-identity
    np.testing.assert_allclose(back[inner], img[inner], atol=2e-3)
    assert resample(img, shape) is img  # identity, no copy


def test_resample_values_follow_affine() -> None:
    """A linear ramp in world coordinates resampled anywhere equals the ramp at the new affine."""
    aff = np.diag([0.7, 1.3, 2.0, 1.0])
    aff[:3, 3] = [-5, 3, 7]
    shape = (30, 20, 12)
    ijk = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), -1).astype(float)
    ramp = lambda xyz: 0.3 * xyz[..., 0] - 0.2 * xyz[..., 1] + 0.1 * xyz[..., 2]  # noqa: E731
    img = ramp(world(aff, ijk)).astype(np.float64)
    out_shape = (21, 26, 24)
    out = resample(img, out_shape)
    new_aff = resample_affine(aff, shape, out_shape)
    ijk2 = np.stack(np.meshgrid(*(np.arange(s) for s in out_shape), indexing="ij"), -1).astype(float)
    expected = ramp(world(new_aff, ijk2))
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(out[inner], expected[inner], atol=1e-9)


def test_resample_probabilities_and_labels() -> None:
    rng = np.random.default_rng(0)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(3, 6, 5, 4)).astype(np.float32)), 0)
    out = resample(probs, (9, 7, 8))
    assert out.shape == (3, 9, 7, 8) and isinstance(out, torch.Tensor)
    torch.testing.assert_close(out.sum(0), torch.ones(9, 7, 8))
    labels = rng.integers(0, 4, size=(6, 5, 4)).astype(np.uint8)
    up = resample(labels, (12, 10, 8), "nearest")
    assert up.dtype == np.uint8
    np.testing.assert_array_equal(up[::2, ::2, ::2], labels)  # exact 2x: each voxel duplicated
    np.testing.assert_array_equal(resample(up, labels.shape, "nearest"), labels)
    with pytest.raises(ValueError):
        resample(labels, (3, 3, 3), "cubic")


def test_normalize_intensity_modes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(50, 10, size=(10, 10, 10)).astype(np.float32)
    z, stats = normalize_intensity(x, {"mode": "zscore"})
    assert z.dtype == np.float32
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    assert stats["mean"] == pytest.approx(float(x.astype(np.float64).mean()))

    xz = x.copy()
    xz[:5] = 0
    z, _ = normalize_intensity(xz, {"mode": "zscore", "nonzero": True})
    assert np.all(z[:5] == 0)
    assert abs(z[5:].mean()) < 1e-5 and abs(z[5:].std() - 1) < 1e-4

    y = x.copy()
    y.flat[0], y.flat[1] = 1e6, -1e6  # outliers
    c, stats = normalize_intensity(y, {"mode": "clip_zscore"})
    lo, hi = np.percentile(y, [0.5, 99.5])
    assert stats["clip_lower"] == pytest.approx(lo) and stats["clip_upper"] == pytest.approx(hi)
    clipped = np.clip(y, lo, hi)
    np.testing.assert_allclose(c, (clipped - clipped.mean()) / clipped.std(), atol=1e-4)

    ct = np.array([-1000, -100, 0, 70, 240, 3000], dtype=np.int16).reshape(1, 2, 3)
    u, _ = normalize_intensity(ct, {"mode": "ct_window", "lower": -100, "upper": 240})
    np.testing.assert_allclose(u.ravel(), [0, 0, 100 / 340, 170 / 340, 1, 1], atol=1e-6)
    spec = {"mode": "ct_window", "lower": -100, "upper": 240, "output": "zscore", "mean": 70, "std": 50}
    w, _ = normalize_intensity(ct, spec)
    np.testing.assert_allclose(w.ravel(), [-3.4, -3.4, -1.4, 0, 3.4, 3.4], atol=1e-6)

    flat, _ = normalize_intensity(np.full((2, 2, 2), 7.0), {"mode": "zscore"})
    np.testing.assert_array_equal(flat, 0)
    for bad in (
        {"mode": "minmax"},
        {},
        {"mode": "ct_window", "lower": 10},
        {"mode": "ct_window", "lower": 10, "upper": 0},
        {"mode": "ct_window", "lower": 0, "upper": 1, "output": "zscore"},
        {"mode": "clip_zscore", "lower_percentile": 99, "upper_percentile": 1},
    ):
        with pytest.raises(ValueError):
            normalize_intensity(x, bad)


def test_preprocess_and_inverse() -> None:
    rng = np.random.default_rng(3)
    aff = random_affine(rng, oblique=0.2)
    aff[:3, :3] = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0) * np.array([0.9, 1.4, 2.2])
    shape = (30, 22, 12)
    grid = np.meshgrid(*(np.linspace(0, 1, s) for s in shape), indexing="ij")
    vol = (100 + 40 * np.sin(2 * grid[0]) * np.cos(grid[1]) + 20 * grid[2]).astype(np.float32)
    spec = {"spacing": [1.0, 1.0, 1.5], "orientation": "RAS", "intensity": {"mode": "zscore"}}
    x, rec = preprocess(vol, aff, spec)
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[0] == 1
    assert x.shape[1:] == rec.model_shape
    np.testing.assert_allclose(rec.model_spacing, [1.0, 1.0, 1.5], rtol=0.05)
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3
    assert rec.input_shape == shape
    np.testing.assert_array_equal(rec.input_affine, aff)

    # the model-grid affine is consistent: its voxel 0 centre lies in the input's field of view
    back = restore_to_input(x[0], rec)
    assert back.shape == shape
    vol_z = (vol - rec.intensity[0]["mean"]) / rec.intensity[0]["std"]
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(back[inner], vol_z[inner], atol=0.05)

    labels = (grid[0] > 0.5).astype(np.uint8) + (grid[2] > 0.5).astype(np.uint8)
    lab_model = preprocess_label(labels, rec)
    assert lab_model.shape == rec.model_shape and lab_model.dtype == np.uint8
    lab_back = restore_to_input(lab_model, rec, "nearest")
    assert lab_back.shape == shape
    assert (lab_back == labels).mean() > 0.95

    with pytest.raises(ValueError):
        preprocess(vol, aff, {**spec, "orientation": "LPS"})
    with pytest.raises(ValueError):
        preprocess(vol, aff, {**spec, "intensity": {"mode": "nope"}})
    # multi-channel: normalised per channel
    x2, _ = preprocess(np.stack([vol, 10 * vol]), aff, spec)
    assert x2.shape[0] == 2
    np.testing.assert_allclose(x2[0], x2[1], atol=1e-4)


@pytest.mark.parametrize("flip", [False, True])
def test_preprocess_of_a_fortran_ordered_volume_matches_c_order(flip: bool) -> None:
    """NIfTI readers return Fortran-ordered voxels: resampled as the reversed view, same values."""
    rng = np.random.default_rng(4)
    image = rng.normal(100, 20, (30, 26, 14)).astype(np.float32)
    affine = np.diag([0.7, 0.9, 1.5, 1.0])
    if flip:
        affine[0, 0] = -0.7  # canonical orientation flips axis 0
    spec = {"spacing": [2.0, 1.5, 1.0], "orientation": "RAS", "intensity": {"mode": "zscore"}}
    c_out, c_rec = preprocess(image, affine, spec)
    f_out, f_rec = preprocess(np.asfortranarray(image), affine, spec)
    assert f_out.shape == c_out.shape and f_out.flags.c_contiguous and f_rec.model_shape == c_rec.model_shape
    np.testing.assert_allclose(f_out, c_out, rtol=0, atol=1e-5)
