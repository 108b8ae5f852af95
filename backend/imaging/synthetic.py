"""A DICOM image series made from a NIfTI volume, so NIfTI uploads can get DICOM SEG / Parametric Maps too.

Choice: a plain **MR Image Storage** (default) or **CT Image Storage** series — not Secondary Capture,
which has no Image Plane module, so SEG/PM could not be placed on it. One single-frame instance per
slice ``k`` (``datasets[k]`` holds ``array[:, :, k]``), so the datasets are directly the ``source`` of
:func:`~backend.imaging.seg.build_seg` and :func:`~backend.imaging.pmap.build_entropy_pmap` with the
mask/entropy in the NIfTI grid. The images are marked ``DERIVED\\SECONDARY``; UIDs are derived from
``uid_seed`` (deterministic) or random. Pixel values are stored as int16 when they are integers in range,
else as uint16 with RescaleSlope/Intercept; the geometry is exactly the volume's affine (columns = i,
rows = j). A sheared affine (slices not stacked along their normal) cannot be a DICOM series and is
refused.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from backend.imaging.dicom_refs import derived_uid
from backend.imaging.errors import UnsupportedInput
from backend.imaging.geometry import LPS_TO_RAS
from backend.imaging.volume import ImageVolume

SOP_CLASS = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}


def _geometry(volume: ImageVolume) -> tuple[list[float], list[float], np.ndarray, float]:
    """IOP, PixelSpacing, per-slice IPP (n, 3) in LPS, and slice spacing."""
    lps = LPS_TO_RAS @ volume.affine
    sx, sy, sz = volume.spacing
    row_cos = lps[:3, 0] / sx
    col_cos = lps[:3, 1] / sy
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise UnsupportedInput(
            "the volume's i and j axes are not perpendicular (sheared affine); resample it before asking"
            " for DICOM output"
        )
    normal = np.cross(row_cos, col_cos)
    k_axis = lps[:3, 2]
    off_normal = k_axis - (k_axis @ normal) * normal
    if float(np.linalg.norm(off_normal)) > 1e-3 * sz:
        raise UnsupportedInput(
            "the volume's slices are not stacked along their normal (sheared affine); resample it before"
            " asking for DICOM output"
        )
    n = volume.shape[2]
    positions = lps[:3, 3][np.newaxis, :] + np.arange(n)[:, np.newaxis] * k_axis[np.newaxis, :]
    iop = [float(v) for v in (*row_cos, *col_cos)]
    return iop, [float(sy), float(sx)], positions, float(sz)


def _encode(array: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """Stored pixel values, PixelRepresentation, slope, intercept."""
    lo, hi = float(array.min()), float(array.max())
    if np.all(np.mod(array, 1) == 0) and lo >= -32768 and hi <= 32767:
        return array.astype(np.int16), 1, 1.0, 0.0
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.clip(np.rint((array - lo) / slope), 0, 65535).astype(np.uint16)
    return stored, 0, slope, lo


def _ds(value: float) -> str:
    """Format a number for a DS element (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def nifti_to_dicom_series(
    volume: ImageVolume,
    *,
    modality: Literal["MR", "CT"] = "MR",
    uid_seed: str | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "dualseg source (from NIfTI)",
    study_description: str = "",
    patient_name: str = "",
    patient_id: str | None = None,
    manufacturer: str = "dualseg",
    pixels: bool = True,
) -> list[Dataset]:
    """Make an MR (default) or CT image series (one dataset per slice ``k``) on the volume's grid.

    Each dataset has ``file_meta`` (Explicit VR Little Endian) and can be saved with
    ``ds.save_as(path, enforce_file_format=True)``. Patient name is empty unless given; the patient ID,
    unless given, is ``DUALSEG-`` plus 10 hex digits derived from ``uid_seed`` (random without a seed), so
    a PACS does not merge unrelated NIfTI uploads into one empty-ID patient.

    ``pixels=False`` makes the headers only (no PixelData, no window, nominal int16 pixel description):
    all a SEG or Parametric Map needs of its source, several seconds faster for a CT-sized volume.
    """
    if modality not in SOP_CLASS:
        raise ValueError(f"modality must be 'MR' or 'CT', got {modality!r}")
    iop, pixel_spacing, positions, thickness = _geometry(volume)
    stored, pixel_rep, slope, intercept = _encode(volume.array) if pixels else (None, 1, 1.0, 0.0)
    needs_rescale = modality == "CT" or slope != 1.0 or intercept != 0.0
    lo, hi = np.percentile(volume.array, [1, 99]) if pixels and volume.array.size else (0.0, 1.0)
    now = datetime.now(UTC)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if patient_id is None:
        digest = derived_uid(uid_seed, "synthetic-patient")
        patient_id = "DUALSEG-" + hashlib.sha256(digest.encode()).hexdigest()[:10].upper()
    study = study_uid or derived_uid(uid_seed, "synthetic-study")
    series = derived_uid(uid_seed, "synthetic-series")
    frame_of_reference = derived_uid(uid_seed, "synthetic-frame-of-reference")
    cols, rows, n = volume.shape
    datasets: list[Dataset] = []
    for k in range(n):
        sop_uid = derived_uid(uid_seed, "synthetic-instance", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(SOP_CLASS[modality])
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = SOP_CLASS[modality]
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
        ds.Modality = modality
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = study
        ds.StudyDate, ds.StudyTime = date, time
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        if study_description:
            ds.StudyDescription = study_description[:64]
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description[:64]
        ds.Laterality = ""  # General Series Type 2C: dciodvfy requires it; the body part is unknown
        ds.PatientPosition = ""
        ds.Manufacturer = manufacturer
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.DerivationDescription = "Converted from a NIfTI volume by dualseg"
        ds.ImagePositionPatient = [_ds(float(v)) for v in positions[k]]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
        ds.SliceThickness = _ds(thickness)
        ds.SpacingBetweenSlices = _ds(thickness)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = pixel_rep
        if needs_rescale:
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
        if modality == "CT":
            ds.KVP = ""
            ds.AcquisitionNumber = ""
        else:
            ds.ScanningSequence = "RM"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = ""
            ds.EchoTrainLength = ""
            ds.RepetitionTime = ""
        if stored is not None:
            ds.WindowCenter = _ds(float((lo + hi) / 2))
            ds.WindowWidth = _ds(max(float(hi - lo), 1e-3))
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        datasets.append(ds)
    return datasets
