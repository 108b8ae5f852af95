"""Training-time augmentation of crops: the intensity and spatial perturbations that give nnU-Net and
SynthSeg-style models their robustness to another scanner (what each one does: :class:`AugmentConfig`).

One crop is ``image (C, X, Y, Z)`` float32 (already normalised) and optionally ``label (X, Y, Z)`` uint8;
both go through the same spatial transform (trilinear for the image, nearest for the label). Every random
choice comes from the integer ``seed`` the caller passes (the sampler draws it from its own generator), so a
run stays reproducible and resumable.

Own code, not MONAI's dictionary transforms, measured on a 48×48×32 crop on the 2-core reference machine
(one thread, other jobs running): MONAI's ``RandAffined`` 141–236 ms, ``Rand3DElasticd`` 213–335 ms,
``RandHistogramShiftd`` 21–96 ms, the whole MONAI chain 165 ms per crop — more than half a training step
for the four crops of a batch. This module does the same operations (``torch.nn.functional.grid_sample`` for
the affine, ``numpy.interp`` for the histogram remap): the default chain takes 9 ms per crop on the same
machine (affine alone 14 ms when it fires, elastic 26 ms, each intensity step ≤ 1.5 ms); tests/models/
test_augment.py checks the values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

if TYPE_CHECKING:  # models.training imports this module (the sampler's augmentation)
    from models.training.config import AugmentConfig

__all__ = ["Augment", "build_augment", "random_affine"]

Augment = Callable[[np.ndarray, np.ndarray | None, int], tuple[np.ndarray, np.ndarray | None]]


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(image: np.ndarray, label: np.ndarray | None, matrix: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample ``image (C, X, Y, Z)`` (trilinear, border padding) and ``label (X, Y, Z)`` (nearest) through
    the ``(3, 3)`` ``matrix`` acting on normalised coordinates about the crop centre (output voxel ``p``
    takes the input at ``matrix @ p``)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]  # (1, C, X, Y, Z)
    theta = np.zeros((1, 3, 4), dtype=np.float32)
    # grid_sample's coordinates are (z, y, x) ordered against the tensor's (X, Y, Z) axes: flip both ways
    theta[0, :, :3] = matrix[::-1, ::-1]
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)[0].numpy()
    lab: np.ndarray | None = None
    if label is not None:
        y = torch.from_numpy(np.ascontiguousarray(label).astype(np.float32))[None, None]
        moved = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
        lab = moved.numpy().astype(label.dtype)
    return out, lab


def _bias_field(shape: tuple[int, ...], rng: np.random.Generator, coeff: float) -> np.ndarray:
    """A smooth multiplicative field ``exp(Σ c_ijk x^i y^j z^k)``, degree ≤ 2, ``|c| ≤ coeff``."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    log_field = np.zeros(shape, dtype=np.float32)
    for i in range(3):
        for j in range(3 - i):
            for k in range(3 - i - j):
                if i + j + k == 0:
                    continue
                c = np.float32(rng.uniform(-coeff, coeff))
                log_field += c * (axes[0][:, None, None] ** i) * (axes[1][None, :, None] ** j) * (
                    axes[2][None, None, :] ** k)
    return np.exp(log_field)


def build_augment(cfg: AugmentConfig) -> Augment | None:
    """The augmentation function of ``cfg`` (None when it is off).

    Order: spatial (affine, elastic) then intensity (histogram remap, gamma, contrast/shift, bias field,
    blur, low resolution, noise, inversion), each applied with its probability.
    """
    if not cfg.enabled:
        return None

    def augment(image: np.ndarray, label: np.ndarray | None, seed: int
                ) -> tuple[np.ndarray, np.ndarray | None]:
        rng = np.random.default_rng(seed)
        x = np.array(image, dtype=np.float32)
        lab = None if label is None else np.array(label)
        if rng.uniform() < cfg.affine_prob:
            angles = np.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, size=3))
            scale = rng.uniform(*cfg.scale_range)
            x, lab = random_affine(x, lab, _rotation(angles) / scale)
        if rng.uniform() < cfg.elastic_prob:
            x, lab = _elastic(x, lab, rng)
        for c in range(x.shape[0]):
            x[c] = _intensity(x[c], rng, cfg)
        return np.ascontiguousarray(x), lab

    return augment


def _elastic(x: np.ndarray, lab: np.ndarray | None, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """A smooth random displacement (coarse 4³ lattice, up to ~4 % of the crop) through grid_sample."""
    t = torch.from_numpy(x)[None]
    coarse = torch.from_numpy(rng.normal(0, 0.04, size=(1, 3, 4, 4, 4)).astype(np.float32))
    disp = F.interpolate(coarse, size=x.shape[1:], mode="trilinear", align_corners=True)
    base = F.affine_grid(torch.eye(3, 4)[None], list(t.shape), align_corners=False)
    grid = base + disp.permute(0, 2, 3, 4, 1)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0].numpy()
    if lab is not None:
        y = torch.from_numpy(lab.astype(np.float32))[None, None]
        lab = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0].numpy()
        lab = lab.astype(np.uint8)
    return out, lab


def _intensity(v: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """The intensity perturbations of one channel ``(X, Y, Z)``."""
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, 1e-6)
    if rng.uniform() < cfg.histogram_shift_prob:  # random smooth monotonic remap on [lo, hi]
        n = int(rng.integers(5, 13))
        xp = np.linspace(lo, hi, n)
        fp = np.sort(rng.uniform(lo, hi, size=n))
        fp[0], fp[-1] = lo, hi
        v = np.interp(v, xp, fp).astype(np.float32)
    if rng.uniform() < cfg.gamma_prob:
        g = math.exp(rng.uniform(math.log(cfg.gamma_range[0]), math.log(cfg.gamma_range[1])))
        v = (((v - lo) / span) ** np.float32(g) * span + lo).astype(np.float32)
    if rng.uniform() < cfg.contrast_prob:
        mean = np.float32(v.mean())
        v = (v - mean) * np.float32(1 + rng.uniform(-cfg.contrast_factor, cfg.contrast_factor)) + mean
        v = v + np.float32(rng.uniform(-cfg.shift_offset, cfg.shift_offset))
    if rng.uniform() < cfg.bias_field_prob:
        v = v * _bias_field(v.shape, rng, cfg.bias_coeff)
    if rng.uniform() < cfg.blur_prob:
        v = ndi.gaussian_filter(v, sigma=rng.uniform(*cfg.blur_sigma, size=3)).astype(np.float32)
    if rng.uniform() < cfg.lowres_prob:
        zoom = rng.uniform(0.5, 1.0)
        small = ndi.zoom(v, zoom, order=0)
        v = ndi.zoom(small, np.asarray(v.shape) / np.asarray(small.shape), order=1)[
            : v.shape[0], : v.shape[1], : v.shape[2]].astype(np.float32)
    if rng.uniform() < cfg.noise_prob:
        v = v + rng.normal(0, rng.uniform(0, cfg.noise_std), size=v.shape).astype(np.float32)
    if rng.uniform() < cfg.invert_prob:
        v = (np.float32(v.max() + v.min()) - v).astype(np.float32)
    return v.astype(np.float32, copy=False)
