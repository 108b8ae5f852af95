"""Imaging I/O for dualseg (no torch): readers, geometry and writers.

Modules (import the one you need; the DICOM writers pull in highdicom):

* :mod:`.errors` — ``ImagingError`` (a ``ValueError``) and subclasses, mapped to 4xx by the API.
* :mod:`.volume` — ``ImageVolume`` (``array[i, j, k]`` float32 + 4×4 RAS ``affine``) and ``DicomInfo``.
* :mod:`.min_shape` — ``check_min_shape``: the smallest volume a model segments (else 422).
* :mod:`.geometry` — DICOM → RAS affines, voxel↔mm, closest axes, ``same_grid``.
* :mod:`.nifti` — ``read_nifti`` (validated), ``write_mask_nifti`` / ``write_entropy_nifti``.
* :mod:`.dicom_series` — ``read_dicom_series``, ``list_series``.
* :mod:`.seg` — ``build_seg`` (DICOM SEG, BINARY); :mod:`.pmap` — ``build_entropy_pmap``.
* :mod:`.synthetic` — ``nifti_to_dicom_series`` (an MR/CT series for NIfTI uploads, so SEG/PM work).
* :mod:`.png` — ``render_slice_png``, ``render_montage_png``.
"""

from backend.imaging.errors import (
    ImagingError,
    InconsistentSeries,
    InvalidImage,
    MultipleSeriesError,
    SeriesSummary,
    UnsupportedInput,
    VolumeTooLarge,
    VolumeTooSmall,
)
from backend.imaging.volume import DicomInfo, ImageVolume, SliceRef

__all__ = [
    "DicomInfo",
    "ImageVolume",
    "ImagingError",
    "InconsistentSeries",
    "InvalidImage",
    "MultipleSeriesError",
    "SeriesSummary",
    "SliceRef",
    "UnsupportedInput",
    "VolumeTooLarge",
    "VolumeTooSmall",
]
