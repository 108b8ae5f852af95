"""NIfTI-1/2 reading (validated); the writers live in :mod:`backend.imaging.nifti_write` (re-exported)."""

from __future__ import annotations

import zlib
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError, SpatialImage

from backend.imaging.errors import ImagingError, InvalidImage, UnsupportedInput, VolumeTooLarge
from backend.imaging.geometry import check_affine
from backend.imaging.nifti_write import (  # noqa: F401 - re-exported: the writers' historical home
    XFORM_ALIGNED,
    XFORM_SCANNER,
    write_entropy_nifti,
    write_mask_nifti,
    write_nifti,
    write_unit_interval_nifti,
)
from backend.imaging.volume import ImageVolume

#: Default cap on the number of voxels of an input volume (512 × 512 × 1024).
DEFAULT_MAX_VOXELS = 512 * 512 * 1024
#: Largest accepted size of one axis.
DEFAULT_MAX_DIM = 2048


_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error, MemoryError)


def _load(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    name = path.name
    if not path.is_file():
        raise ImagingError(f"NIfTI file {name} does not exist")
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise InvalidImage(
            f"{name} is not a readable NIfTI file (.nii or .nii.gz): {exc}. Re-export the volume as NIfTI."
        ) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedInput(f"{name} is a {type(img).__name__}, not a NIfTI image; upload .nii or .nii.gz")
    return img


def load_image(path: str | PathLike[str]) -> SpatialImage:
    """``nib.load`` of a volume dualseg stored itself (no validation; ``read_nifti`` checks uploads).
    Typed as the volume image it is: nibabel declares the base class, without ``dataobj``/``affine``."""
    img = nib.load(str(path))
    if not isinstance(img, SpatialImage):
        raise UnsupportedInput(f"{Path(path).name} is a {type(img).__name__}, not a volume image")
    return img


def _raw_zooms(path: Path, img: nib.Nifti1Image | nib.Nifti2Image) -> npt.NDArray[np.float64]:
    """Voxel sizes as stored in the file (nibabel silently replaces zero pixdims by 1 on load)."""
    try:
        with ImageOpener(str(path)) as fobj:
            raw = type(img.header).from_fileobj(fobj, check=False)
    except _READ_ERRORS as exc:
        raise InvalidImage(f"{path.name}: the NIfTI header cannot be read ({exc})") from exc
    return np.asarray(raw.get_zooms()[:3], dtype=np.float64)


def _check_shape(shape: tuple[int, ...], name: str, max_voxels: int, max_dim: int) -> tuple[int, int, int]:
    if len(shape) < 3:
        raise UnsupportedInput(f"{name} is a {len(shape)}D image of shape {shape}; dualseg needs a 3D volume")
    extra = shape[3:]
    if any(d != 1 for d in extra):
        raise UnsupportedInput(
            f"{name} is a {len(shape)}D image of shape {shape} (several volumes, e.g. time points or"
            " channels); upload a single 3D volume"
        )
    spatial = (int(shape[0]), int(shape[1]), int(shape[2]))
    for axis, size in enumerate(spatial):
        if not 1 <= size <= max_dim:
            raise VolumeTooLarge(
                f"{name}: axis {axis} has {size} voxels; each axis must have 1..{max_dim} voxels"
            )
    total = spatial[0] * spatial[1] * spatial[2]
    if total > max_voxels:
        raise VolumeTooLarge(
            f"{name}: {spatial[0]}x{spatial[1]}x{spatial[2]} = {total} voxels exceeds the limit of"
            f" {max_voxels}; crop or downsample the volume"
        )
    return spatial


def _check_dtype(dtype: np.dtype[np.generic], name: str) -> None:
    if dtype.fields is not None or dtype.names is not None:
        raise UnsupportedInput(f"{name} holds colour (RGB/RGBA) voxels; upload a single-channel volume")
    if np.issubdtype(dtype, np.complexfloating):
        raise UnsupportedInput(f"{name} holds complex voxels; upload magnitude images")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise UnsupportedInput(f"{name} has unsupported voxel type {dtype}")


def read_nifti(
    path: str | PathLike[str],
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    max_dim: int = DEFAULT_MAX_DIM,
) -> ImageVolume:
    """Read and validate a ``.nii`` / ``.nii.gz`` file into a float32 :class:`ImageVolume`.

    Checks: NIfTI format, 3D (trailing singleton dimensions are squeezed), every axis ``1..max_dim``,
    at most ``max_voxels`` voxels (checked from the header before the data are read), real scalar voxel
    type, positive finite spacing, invertible affine, every value finite. ``scl_slope``/``scl_inter`` are
    applied. The affine is nibabel's choice (sform if its code is set, else qform).
    Raises :class:`ImagingError` subclasses with a message for the uploader.
    """
    p = Path(path)
    name = p.name
    img = _load(p)
    header = img.header
    shape = tuple(int(d) for d in header.get_data_shape())
    spatial = _check_shape(shape, name, max_voxels, max_dim)
    _check_dtype(header.get_data_dtype(), name)

    zooms = _raw_zooms(p, img)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InvalidImage(
            f"{name} has voxel spacing {[float(z) for z in zooms]} (pixdim); spacing must be positive"
        )
    try:
        affine = check_affine(img.affine)
    except ImagingError as exc:
        raise InvalidImage(f"{name} has an unusable orientation (sform/qform): {exc}") from exc

    try:
        with np.errstate(over="ignore", invalid="ignore"):
            data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except _READ_ERRORS as exc:
        raise InvalidImage(
            f"{name}: the voxel data could not be read (file truncated or corrupt: {exc}); upload it again"
        ) from exc
    data = data.reshape(spatial)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InvalidImage(
            f"{name} contains {bad} NaN or infinite voxel value(s) (or values beyond the float32 range);"
            " fix or mask them first"
        )
    # nibabel returns the voxels in the file's (Fortran) order: kept, a C-order copy would cost a
    # full-size transpose (the writers and the predictor take either order)
    if not (data.flags.f_contiguous or data.flags.c_contiguous):
        data = np.ascontiguousarray(data)
    return ImageVolume(array=data, affine=affine, source="nifti")
