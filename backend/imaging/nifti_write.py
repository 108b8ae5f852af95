"""NIfTI-1 writers: label masks (uint8), maps in [0, 1] (scaled int16) and any array (a given dtype).

The file is streamed: the header, then the voxels in slabs along the last axis (NIfTI's slowest, so each
slab is one contiguous run of the file), converted and transposed one slab at a time, through a fast
gzip encoder for ``.nii.gz`` (:mod:`backend.imaging.gz`). No full-size copy of the array is made.

Maps in [0, 1] (the normalised entropy) are stored as int16 ``q`` with ``scl_slope`` = 1/32767 and
``scl_inter`` = 0: a reader gets ``q * scl_slope``. The step is 3.05e-5, so the round-trip error is half
a step plus float32 rounding, below 1.6e-5 (:data:`UNIT_MAX_ERROR`); 0 maps to 0 and 1 to 1, and every
decoded value stays in [0, 1] (``q`` is capped at ``floor(1 / scl_slope)``). int16 is the NIfTI type
every viewer reads (Analyze's "signed short"); NiiVue, nibabel, ITK and FSL apply ``scl_slope``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from os import PathLike
from typing import BinaryIO

import nibabel as nib
import numpy as np
import numpy.typing as npt

from backend.imaging.errors import ImagingError
from backend.imaging.geometry import check_affine
from backend.imaging.gz import open_gzip_writer

XFORM_SCANNER = 1
XFORM_ALIGNED = 2

#: int16 steps over [0, 1] of a unit-interval map
UNIT_STEPS = 32767
#: the stored scl_slope (a float32 in the header)
UNIT_SLOPE = float(np.float32(1.0 / UNIT_STEPS))
#: the largest stored value: q * UNIT_SLOPE <= 1 for every q up to it
UNIT_MAX_Q = min(UNIT_STEPS, math.floor(1.0 / UNIT_SLOPE))
#: bound on the absolute round-trip error of a unit-interval map: half a step (1.526e-5) plus float32
#: rounding of the quantisation and of a reader's ``q * scl_slope`` (measured <= 1.53e-5)
UNIT_MAX_ERROR = 1.6e-5

_SLAB_VOXELS = 1 << 22  # voxels converted at a time (bounds the temporaries)

Convert = Callable[[np.ndarray], np.ndarray]


def _header(shape: tuple[int, ...], aff: np.ndarray, dtype: np.dtype, xform_code: int, intent: str | None,
            slope: float, cal: tuple[float, float] | None) -> nib.Nifti1Header:
    img = nib.Nifti1Image(np.empty((0, 0, 0), dtype=dtype), aff)
    header = img.header
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    img.set_sform(aff, code=xform_code)
    img.set_qform(aff, code=xform_code)
    if not np.allclose(img.get_qform(), aff, atol=1e-4):  # a sheared affine cannot be a qform
        img.set_qform(aff, code=0)
    header.set_xyzt_units(xyz="mm")
    header["scl_slope"] = slope
    header["scl_inter"] = 0.0
    if intent is not None:
        header.set_intent(intent)
    if cal is not None:
        header["cal_min"], header["cal_max"] = cal
    return header


def _stream(out: BinaryIO, header: nib.Nifti1Header, arr: np.ndarray, convert: Convert) -> None:
    header.write_to(out)  # 348 bytes + the 4-byte "no extension" flag = vox_offset 352
    shape = arr.shape
    step = max(1, _SLAB_VOXELS // max(1, shape[0] * shape[1]))
    for k in range(0, shape[2], step):
        block = convert(arr[:, :, k : k + step])
        out.write(np.ascontiguousarray(block.transpose(2, 1, 0)).data.cast("B"))


def _write(path: str | PathLike[str], header: nib.Nifti1Header, arr: np.ndarray, convert: Convert) -> None:
    with ExitStack() as stack:
        name = str(path)
        out = (open_gzip_writer(name) if name.endswith(".gz") else open(name, "wb"))  # noqa: SIM115
        stack.enter_context(out)
        _stream(out, header, arr, convert)


def _checked(array: npt.ArrayLike, affine: npt.ArrayLike, xform_code: int) -> tuple[np.ndarray, np.ndarray]:
    if xform_code not in (XFORM_SCANNER, XFORM_ALIGNED):
        raise ValueError(f"xform_code must be 1 (scanner) or 2 (aligned), got {xform_code}")
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ImagingError(f"NIfTI output must be 3D, got shape {arr.shape}")
    return arr, check_affine(affine)


def write_nifti(
    path: str | PathLike[str],
    array: npt.ArrayLike,
    affine: npt.ArrayLike,
    *,
    dtype: npt.DTypeLike,
    xform_code: int = XFORM_SCANNER,
    intent: str | None = None,
) -> None:
    """Write a 3D array as NIfTI-1 of ``dtype`` with exactly ``affine`` (sform and, when representable,
    qform; a sheared affine gets qform code 0 and readers use the sform). ``xform_code`` is 1 (scanner
    anatomical) or 2 (aligned anatomical). Units are mm; ``scl_slope`` 1. The file type follows the suffix
    (``.nii`` or ``.nii.gz``). Atomic replacement is the caller's job."""
    arr, aff = _checked(array, affine, xform_code)
    out_dtype = np.dtype(dtype)
    cal = (float(arr.min()), float(arr.max())) if arr.size else None
    header = _header(arr.shape, aff, out_dtype, xform_code, intent, 1.0, cal)
    _write(path, header, arr, lambda block: block.astype(out_dtype, copy=False))


def _quantize_unit(block: np.ndarray) -> np.ndarray:
    q = np.multiply(block, np.float32(UNIT_STEPS), dtype=np.float32)
    np.rint(q, out=q)
    np.clip(q, 0, UNIT_MAX_Q, out=q)
    return q.astype(np.int16)


def write_unit_interval_nifti(
    path: str | PathLike[str], values: npt.ArrayLike, affine: npt.ArrayLike, *,
    xform_code: int = XFORM_SCANNER,
) -> None:
    """Write a map with values in [0, 1] as int16 scaled by ``scl_slope`` = 1/32767 (see the module doc:
    round-trip error <= :data:`UNIT_MAX_ERROR`, about 1.5e-5). Values must be finite and within 1e-5 of
    [0, 1] (they are clipped to it)."""
    arr, aff = _checked(values, affine, xform_code)
    lo = hi = 0.0
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ImagingError("the map contains NaN or infinite values")
        if lo < -1e-5 or hi > 1 + 1e-5:
            raise ImagingError(f"the map's values must be in [0, 1], got {lo:.4g}..{hi:.4g}")
    cal = (max(0.0, lo), min(1.0, hi)) if arr.size else None
    header = _header(arr.shape, aff, np.dtype(np.int16), xform_code, None, UNIT_SLOPE, cal)
    _write(path, header, arr, _quantize_unit)


def write_mask_nifti(
    path: str | PathLike[str], mask: npt.ArrayLike, affine: npt.ArrayLike, *, xform_code: int = XFORM_SCANNER
) -> None:
    """Write a label mask as uint8 NIfTI (intent ``label``). Values must be integers in 0..255."""
    arr = np.asarray(mask)
    if arr.size and (np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0)):
        raise ImagingError("mask values must be integers")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ImagingError(f"mask values must be in 0..255, got {arr.min()}..{arr.max()}")
    write_nifti(path, arr, affine, dtype=np.uint8, xform_code=xform_code, intent="label")


def write_entropy_nifti(
    path: str | PathLike[str],
    entropy: npt.ArrayLike,
    affine: npt.ArrayLike,
    *,
    xform_code: int = XFORM_SCANNER,
) -> None:
    """Write a normalised entropy map (values in [0, 1]) as scaled int16 NIfTI
    (:func:`write_unit_interval_nifti`)."""
    write_unit_interval_nifti(path, entropy, affine, xform_code=xform_code)
