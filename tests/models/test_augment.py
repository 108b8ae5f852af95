"""Crop augmentation: reproducible, label-aligned, each transform doing what it says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.data.augment import build_augment, random_affine
from models.training.config import AugmentConfig, TrainConfig

PROBS = [f.name for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")]


def _only(name: str, **kw: object) -> AugmentConfig:
    return AugmentConfig(enabled=True, **{**{p: 0.0 for p in PROBS}, name: 1.0, **kw})  # type: ignore[arg-type]


def test_off_by_default_and_validated() -> None:
    assert build_augment(AugmentConfig()) is None
    with pytest.raises(ValueError, match="augment"):
        TrainConfig.from_dict({"augment": {"gamma_prob": 1.5}})


def test_affine_axes_and_identity() -> None:
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32), (1, 16, 16, 32)).copy()
    out, _ = random_affine(ramp, None, np.diag([1.0, 1.0, 0.5]))  # 2x zoom along the third axis
    assert np.allclose(out[0, 3, 3, 14:18], [14.75, 15.25, 15.75, 16.25], atol=1e-4)
    img = np.random.default_rng(0).normal(size=(1, 16, 16, 12)).astype(np.float32)
    lab = (img[0] > 1).astype(np.uint8)
    same, same_lab = random_affine(img, lab, np.eye(3))
    assert np.abs(same - img).max() < 1e-4 and np.array_equal(same_lab, lab)


@pytest.mark.parametrize("name", ["affine_prob", "elastic_prob"])
def test_spatial_moves_image_and_label_together(name: str) -> None:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 40, 32)], indexing="ij"))
    lab = (np.sqrt((grid**2).sum(0)) < 0.5).astype(np.uint8)
    img = (lab * 10.0)[None].astype(np.float32)
    aug = build_augment(_only(name))
    assert aug is not None
    moved, moved_lab = aug(img, lab, 3)
    assert moved_lab is not None and set(np.unique(moved_lab)) <= {0, 1} and moved_lab.dtype == np.uint8
    assert not np.array_equal(moved_lab, lab)
    agree = np.mean((moved[0] > 5) == (moved_lab > 0))
    assert agree > 0.99


@pytest.mark.parametrize("name", [p for p in PROBS if p not in ("affine_prob", "elastic_prob")])
def test_intensity_changes_image_only(name: str) -> None:
    img = np.random.default_rng(1).normal(size=(1, 24, 24, 16)).astype(np.float32)
    lab = (img[0] > 0.5).astype(np.uint8)
    aug = build_augment(_only(name))
    assert aug is not None
    out, out_lab = aug(img, lab, 11)
    again, _ = aug(img, lab, 11)
    assert np.array_equal(out, again)  # the seed decides everything
    assert out.dtype == np.float32 and out.shape == img.shape and np.isfinite(out).all()
    assert np.array_equal(out_lab, lab) and not np.allclose(out, img)


def test_gamma_and_inversion_values() -> None:
    img = np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 2, 2, 2)
    out, _ = build_augment(_only("gamma_prob", gamma_range=(2.0, 2.0)))(img, None, 0)  # type: ignore[misc]
    assert np.allclose(out, img**2, atol=1e-6)
    inv, _ = build_augment(_only("invert_prob"))(img, None, 0)  # type: ignore[misc]
    assert np.allclose(inv, 1.0 - img, atol=1e-6)
