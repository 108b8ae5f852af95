"""Read one DICOM CT/MR series (single-frame or enhanced multi-frame) into an :class:`ImageVolume`.

Array layout: ``array[i, j, k]`` with ``i`` = DICOM column index, ``j`` = DICOM row index and ``k`` = slice
index after sorting the slices (or frames) by ascending position along the slice normal
``n = row_cosine × column_cosine`` (from ImageOrientationPatient). The affine maps ``(i, j, k)`` to RAS mm:
``LPS = IPP_0 + i·Δc·row_cosine + j·Δr·column_cosine + k·step`` followed by negating x and y, where
``step = (IPP_last − IPP_0) / (n_slices − 1)``. The file order of the upload does not matter.

Checks (each failure raises an :class:`ImagingError` subclass whose message names the slices involved):
one series (else :class:`MultipleSeriesError` listing them), same orientation, same rows/columns and
pixel spacing, slice positions along the normal (gantry tilt / sheared stacks are rejected), no duplicate
positions (several echoes/phases in one series), no missing slices, regular spacing, decodable pixel
data. Rescale slope/intercept (or a Modality LUT) is applied per slice/frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from backend.imaging.dicom_scan import (
    DicomHeader,
    list_series,
    require_images,
    scan_files,
)
from backend.imaging.dicom_slices import SliceRecord, check_stack, slice_records
from backend.imaging.errors import (
    ImagingError,
    InvalidImage,
    MultipleSeriesError,
    SeriesSummary,
    UnsupportedInput,
    VolumeTooLarge,
)
from backend.imaging.geometry import affine_from_dicom
from backend.imaging.nifti import DEFAULT_MAX_DIM, DEFAULT_MAX_VOXELS
from backend.imaging.volume import DicomInfo, ImageVolume, SliceRef

__all__ = ["list_series", "read_dicom_series"]


def _select_series(
    series: dict[str, list[DicomHeader]], series_uid: str | None, summaries: Sequence[SeriesSummary]
) -> list[DicomHeader]:
    if series_uid is not None:
        if series_uid not in series:
            available = ", ".join(sorted(series))
            raise ImagingError(
                f"series_uid {series_uid} is not among the uploaded image series (available: {available})"
            )
        return series[series_uid]
    if len(series) > 1:
        raise MultipleSeriesError(summaries)
    return next(iter(series.values()))


def _check_size(rows: int, cols: int, n: int, max_voxels: int, max_dim: int) -> None:
    for label, size in (("columns", cols), ("rows", rows), ("slices", n)):
        if not 1 <= size <= max_dim:
            raise VolumeTooLarge(f"the series has {size} {label}; each axis must have 1..{max_dim} voxels")
    if cols * rows * n > max_voxels:
        raise VolumeTooLarge(
            f"the series is {cols}x{rows}x{n} = {cols * rows * n} voxels, above the limit of {max_voxels}"
        )


def _decoder_available(transfer_syntax: str) -> bool:
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _decode(header: DicomHeader) -> tuple[Dataset, np.ndarray]:
    """Read the full file and decode its pixel data to ``(frames, rows, cols)``."""
    try:
        ds = pydicom.dcmread(header.path)
    except Exception as exc:  # any parser failure is a bad upload
        raise InvalidImage(f"{header.name} cannot be read ({exc}); re-export the series") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InvalidImage(
            f"{header.name} has no pixel data (missing, or cut off because the file is truncated);"
            " upload the complete image files"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID", "")
    syntax_name = getattr(syntax, "name", str(syntax)) or "unknown transfer syntax"
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # no decoder for the syntax, or truncated/corrupt pixel data
        if not _decoder_available(str(syntax)):
            raise UnsupportedInput(
                f"{header.name}: pixel data in {syntax_name} cannot be decoded here ({exc}); send it"
                " uncompressed or in JPEG/JPEG-LS/JPEG 2000/RLE lossless"
            ) from exc
        raise InvalidImage(
            f"{header.name}: pixel data ({syntax_name}) is truncated or corrupt ({exc}); upload it again"
        ) from exc
    frames = header.frame_count
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if pixels.shape != (frames, rows, cols):
        raise InvalidImage(
            f"{header.name}: decoded pixel data has shape {pixels.shape}, expected {(frames, rows, cols)}"
        )
    return ds, pixels


def _to_values(ds: Dataset, raw: np.ndarray, record: SliceRecord) -> np.ndarray:
    if record.frame is None and "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    return raw.astype(np.float64) * record.slope + record.intercept


def _fill_array(headers: Sequence[DicomHeader], records: Sequence[SliceRecord]) -> np.ndarray:
    rows, cols = records[0].rows, records[0].cols
    array = np.empty((cols, rows, len(records)), dtype=np.float32)
    by_file: dict[int, list[tuple[int, SliceRecord]]] = {}
    for k, record in enumerate(records):
        by_file.setdefault(record.header_index, []).append((k, record))
    for header_index, items in by_file.items():
        ds, pixels = _decode(headers[header_index])
        for k, record in items:
            frame = pixels[record.frame if record.frame is not None else 0]
            values = _to_values(ds, frame, record)
            array[:, :, k] = values.T
        del ds, pixels
    if not np.all(np.isfinite(array)):
        raise InvalidImage("the series has pixel values that are not finite after rescaling")
    return array


def _dicom_info(headers: Sequence[DicomHeader], records: Sequence[SliceRecord]) -> DicomInfo:
    order: dict[int, int] = {}
    slices: list[SliceRef] = []
    for record in records:
        index = order.setdefault(record.header_index, len(order))
        ds = headers[record.header_index].dataset
        frame_number = None if record.frame is None else record.frame + 1
        slices.append(SliceRef(str(ds.SOPInstanceUID), frame_number, index))
    used = sorted(order, key=order.__getitem__)
    first = headers[used[0]].dataset
    number = first.get("SeriesNumber")
    syntaxes = sorted({str(headers[i].dataset.file_meta.get("TransferSyntaxUID", "")) for i in used})
    for_uid = first.get("FrameOfReferenceUID")
    return DicomInfo(
        study_uid=str(first.get("StudyInstanceUID", "")),
        series_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(for_uid) if for_uid else None,
        modality=str(first.get("Modality", "")),
        sop_class_uid=str(first.SOPClassUID),
        series_description=str(first.get("SeriesDescription", "")),
        series_number=int(number) if number not in (None, "") else None,
        study_description=str(first.get("StudyDescription", "")),
        manufacturer=str(first.get("Manufacturer", "")),
        body_part_examined=str(first.get("BodyPartExamined", "")),
        laterality=str(first.get("Laterality", "")),
        transfer_syntax_uids=tuple(s for s in syntaxes if s),
        slices=tuple(slices),
        datasets=tuple(headers[i].dataset for i in used),
        paths=tuple(headers[i].path for i in used),
    )


def read_dicom_series(
    paths: Sequence[str | PathLike[str]],
    series_uid: str | None = None,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    max_dim: int = DEFAULT_MAX_DIM,
) -> ImageVolume:
    """Read the CT/MR series among ``paths`` into a float32 :class:`ImageVolume` (``source="dicom"``).

    Non-image and non-DICOM files are skipped. With several image series and no ``series_uid`` a
    :class:`MultipleSeriesError` lists them (``.series``) so the client can pick one. The returned
    volume's ``dicom`` holds the UIDs and the header-only source datasets for SEG/Parametric Map output.
    """
    result = scan_files(paths)
    require_images(result, len(paths))
    headers = _select_series(result.series, series_uid, result.summaries())
    records = slice_records(headers)
    stack = check_stack(records)
    _check_size(records[0].rows, records[0].cols, len(records), max_voxels, max_dim)
    array = _fill_array(headers, stack.records)
    first = stack.records[0]
    affine = affine_from_dicom(first.orientation, first.position, first.pixel_spacing, stack.step)
    return ImageVolume(array=array, affine=affine, source="dicom", dicom=_dicom_info(headers, stack.records))
