"""A second synthetic family: contrast-CT-like volumes on oblique grids (``dualseg phantoms --family ct``).

It plays "another hospital" for the adaptation benchmark (bench/adaptation.py) and the out-of-distribution
flag: the same task (one contrast-filled chamber, label 1) seen through another scanner, another protocol
and another body. It is a separate generator, not a parameter change of :mod:`models.data.phantoms`:

* **contrast and units**: Hounsfield-like signed intensities (air -1000, fat about -100, soft tissue 20-70,
  contrast-filled blood 180-380, bone 400-900), stored as int16; Gaussian (not Rician) noise of 8-30 HU and
  no multiplicative bias field, only a gentle additive drift;
* **context**: a body outline (an elliptic cylinder along the scanner's z axis, 140-220 mm wide) with a
  subcutaneous fat layer and dark air around it, a bright spine (vertebral body + cortical rim) behind the
  target, a large liver-like organ of mid brightness touching it, a contrast-filled aorta-like tube of the
  target's brightness next to it and small calcifications; **no lungs**;
* **target shapes**: a bent super-ellipsoid (boxy, exponent 2.5-4) with a sinusoidal surface ripple and a
  finger-like appendage, instead of a union of smooth lobes with pulmonary veins;
* **geometry**: an oblique grid (voxel axes rotated 10-35 degrees against RAS, written into the affine, so the
  affine is not diagonal), 0.9-1.6 mm in-plane and 1.25-2.5 mm slices, the origin anywhere.

Everything is a deterministic function of ``(seed, case index)``. Speed: ~0.5 s per 128x128x96 case on one
core of the reference machine.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from models.data.phantoms import Phantom

__all__ = ["CT_STRUCTURES", "make_ct_phantom"]

#: structure ids of :class:`~models.data.phantoms.Phantom.structures` for this family (only 1 is labeled)
CT_STRUCTURES: dict[int, str] = {
    0: "air", 1: "chamber", 2: "aorta", 3: "liver", 4: "spine", 5: "fat", 6: "soft_tissue", 7: "calcium",
}


def _rotation(rng: np.random.Generator, lo_deg: float, hi_deg: float) -> np.ndarray:
    """A rotation ``(3, 3)`` about a random axis by an angle uniform in ``[lo_deg, hi_deg]``."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = np.deg2rad(rng.uniform(lo_deg, hi_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)


def _world(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World (RAS mm) coordinates of every voxel, three float32 arrays of ``shape``."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    a = affine.astype(np.float32)
    out = []
    for r in range(3):
        out.append(a[r, 0] * i[:, None, None] + a[r, 1] * j[None, :, None] + a[r, 2] * k[None, None, :]
                   + a[r, 3])
    return out[0], out[1], out[2]


def _local(xyz: tuple[np.ndarray, ...], centre: np.ndarray, rot: np.ndarray) -> list[np.ndarray]:
    """Coordinates in a frame centred at ``centre`` with axes the columns of ``rot``."""
    d = [xyz[a] - np.float32(centre[a]) for a in range(3)]
    return [np.float32(rot[0, c]) * d[0] + np.float32(rot[1, c]) * d[1] + np.float32(rot[2, c]) * d[2]
            for c in range(3)]


def _superellipsoid(u: list[np.ndarray], radii: np.ndarray, p: float) -> np.ndarray:
    """Approximate signed distance (mm) to ``|x/a|^p + |y/b|^p + |z/c|^p = 1`` in local coordinates."""
    e = np.float32(p)
    acc = (np.abs(u[0] / np.float32(radii[0])) ** e + np.abs(u[1] / np.float32(radii[1])) ** e
           + np.abs(u[2] / np.float32(radii[2])) ** e)
    return np.asarray((acc ** np.float32(1.0 / p) - 1.0) * np.float32(radii.min()))


def _cylinder_z(xyz: tuple[np.ndarray, ...], c: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (mm) to an infinite cylinder of radius ``r`` along world z through ``c``."""
    return np.asarray(np.sqrt((xyz[0] - np.float32(c[0])) ** 2 + (xyz[1] - np.float32(c[1])) ** 2)
                      - np.float32(r))


def _capsule(xyz: tuple[np.ndarray, ...], p0: np.ndarray, p1: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (mm) to the segment ``p0 -> p1`` thickened by ``r``."""
    d = p1 - p0
    length2 = float(d @ d)
    along = sum((xyz[a] - np.float32(p0[a])) * np.float32(d[a]) for a in range(3))
    t = np.asarray(along / np.float32(length2))
    t = np.clip(t, 0.0, 1.0)
    dist2 = sum((xyz[a] - np.float32(p0[a]) - t * np.float32(d[a])) ** 2 for a in range(3))
    return np.asarray(np.sqrt(dist2) - np.float32(r))


def _soft(f: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Occupancy in [0, 1] of ``f < 0`` with a linear edge of ``edge`` mm."""
    return np.clip(0.5 - f / np.float32(edge), 0.0, 1.0)


def _grid(rng: np.random.Generator, shape: tuple[int, int, int] | None
          ) -> tuple[tuple[int, int, int], np.ndarray]:
    if shape is None:
        n = int(rng.integers(112, 145))
        shape = (n, n + int(rng.integers(-8, 9)), int(rng.integers(72, 105)))
    inplane = rng.uniform(0.9, 1.6)
    spacing = np.array([inplane, inplane, rng.uniform(1.25, 2.5)])
    rot = _rotation(rng, 10.0, 35.0)
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing
    centre_vox = (np.asarray(shape) - 1) / 2.0
    world_centre = rng.uniform(-150.0, 150.0, size=3)
    affine[:3, 3] = world_centre - affine[:3, :3] @ centre_vox
    return shape, affine


def make_ct_phantom(seed: int | np.random.Generator, shape: tuple[int, int, int] | None = None) -> Phantom:
    """One CT-like case.

    Args:
        seed: an int or a ``numpy.random.Generator``.
        shape: grid ``(X, Y, Z)``; default random, 112-144 in-plane and 72-104 slices.

    Returns:
        :class:`~models.data.phantoms.Phantom` with ``image`` float32 in HU, ``label`` uint8 (1 = chamber),
        ``structures`` uint8 (:data:`CT_STRUCTURES`) and the oblique ``affine``.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape, affine = _grid(rng, shape)
    xyz = _world(shape, affine)
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
    fov = float(np.min(np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(shape)))

    # the body: an elliptic cylinder along world z, shifted a little against the grid centre
    body_c = centre + np.r_[rng.uniform(-10, 10, size=2), 0.0]
    ax, ay = rng.uniform(0.42, 0.62) * fov, rng.uniform(0.36, 0.5) * fov
    rx = (xyz[0] - np.float32(body_c[0])) / np.float32(ax)
    ry = (xyz[1] - np.float32(body_c[1])) / np.float32(ay)
    rho = np.sqrt(rx * rx + ry * ry)
    body_f = (rho - 1.0) * np.float32(min(ax, ay))  # mm-ish signed distance to the skin
    fat_mm = rng.uniform(5.0, 16.0)

    # the target chamber: bent super-ellipsoid + ripple + appendage, anterior-left of the body centre
    t_c = body_c + np.r_[rng.uniform(-0.12, 0.12) * fov, rng.uniform(0.0, 0.1) * fov, rng.uniform(-8, 8)]
    t_rot = _rotation(rng, 0.0, 50.0)
    radii = np.array([rng.uniform(16, 30), rng.uniform(12, 22), rng.uniform(12, 22)])
    u = _local(xyz, t_c, t_rot)
    bend = np.float32(rng.uniform(-0.25, 0.25) / radii[0])
    u[1] = u[1] + bend * u[0] * u[0]
    chamber = _superellipsoid(u, radii, rng.uniform(2.5, 4.0))
    freq = rng.uniform(0.08, 0.18, size=3).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    chamber += np.float32(rng.uniform(1.0, 2.5)) * np.sin(freq[0] * u[0] + phase[0]) * np.cos(
        freq[1] * u[1] + phase[1]) * np.sin(freq[2] * u[2] + phase[2])
    tip_dir = t_rot @ np.array([0.2, 1.0, rng.uniform(-0.5, 0.5)])
    tip_dir /= np.linalg.norm(tip_dir)
    tip0 = t_c + tip_dir * radii[1] * 0.6
    finger = _capsule(xyz, tip0, tip0 + tip_dir * rng.uniform(10, 18), rng.uniform(3.0, 5.0))
    chamber = np.minimum(chamber, finger)

    # neighbours: spine behind, liver-like organ to one side (touching), aorta-like tube along z
    sp_c = body_c + np.r_[rng.uniform(-6, 6), -ay * rng.uniform(0.55, 0.7), 0.0]
    sp_r = rng.uniform(12, 18)
    spine = _cylinder_z(xyz, sp_c, sp_r)
    side = rng.choice([-1.0, 1.0])
    lv_c = t_c + np.r_[side * (radii[0] + rng.uniform(18, 32)), rng.uniform(-15, 5), rng.uniform(-10, 10)]
    liver = _superellipsoid(_local(xyz, lv_c, _rotation(rng, 0, 30)),
                            np.array([rng.uniform(30, 45), rng.uniform(28, 40), rng.uniform(30, 50)]), 2.0)
    gap = rng.uniform(-1.0, 3.0)  # may touch or merge with the chamber: an ambiguous border
    ao_c = np.r_[t_c[0] - side * rng.uniform(4, 12), sp_c[1] + sp_r + rng.uniform(4, 10) + gap, 0.0]
    ao_r = rng.uniform(8, 13)
    aorta = _cylinder_z(xyz, ao_c, ao_r)

    hu_blood = rng.uniform(180, 380)
    hu_soft = rng.uniform(20, 70)
    img = np.full(shape, -1000.0, dtype=np.float32)
    body = _soft(body_f, 1.5)
    img += body * np.float32(-100.0 + 1000.0)  # fat everywhere inside the skin
    inner = _soft(body_f + np.float32(fat_mm), 2.0)
    tex = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    img += inner * (np.float32(hu_soft + 100.0) + np.float32(rng.uniform(6, 15)) * tex)
    liver_occ = _soft(liver, 1.5) * inner
    img += liver_occ * (np.float32(rng.uniform(60, 120)) - img)
    spine_occ = _soft(spine, 1.0) * inner
    rim = _soft(np.abs(spine) - np.float32(2.0), 1.0) * inner
    img += spine_occ * (np.float32(rng.uniform(250, 450)) - img)
    img += rim * (np.float32(rng.uniform(600, 900)) - img)
    ao_occ = _soft(aorta, 1.2) * inner
    img += ao_occ * (np.float32(hu_blood * rng.uniform(0.85, 1.15)) - img)
    ch_occ = _soft(chamber, 1.2) * inner
    img += ch_occ * (np.float32(hu_blood) - img)
    for _ in range(int(rng.integers(2, 6))):  # small calcifications near the chamber wall
        p = t_c + rng.normal(size=3) * radii * 0.9
        calc = _capsule(xyz, p, p + rng.normal(size=3) * 2.0, rng.uniform(1.0, 2.0))
        img += _soft(calc, 0.8) * inner * (np.float32(rng.uniform(500, 900)) - img)

    # acquisition: slice-thickness blur (voxel units), additive drift, Gaussian noise
    sigma = (rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9), rng.uniform(0.6, 1.0))
    img = ndi.gaussian_filter(img, sigma=sigma)
    drift = ndi.zoom(rng.normal(size=(3, 3, 3)).astype(np.float32), np.asarray(shape) / 3.0, order=1)
    img += np.float32(rng.uniform(0, 12)) * drift[: shape[0], : shape[1], : shape[2]]
    img += np.float32(rng.uniform(8, 30)) * rng.standard_normal(shape).astype(np.float32)

    label = ((chamber < 0) & (inner > 0.5)).astype(np.uint8)
    structures = np.zeros(shape, dtype=np.uint8)
    for sid, occ in ((5, body), (6, inner), (3, liver_occ), (4, spine_occ), (2, ao_occ)):
        structures[occ > 0.5] = sid
    structures[label > 0] = 1
    return Phantom(image=img, label=label, structures=structures, affine=affine)
