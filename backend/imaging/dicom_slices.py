"""Per-slice geometry of a DICOM series and the checks that it forms one regular 3D grid.

A *slice record* is one 2D plane: a single-frame instance, or one frame of an enhanced (multi-frame)
instance whose geometry comes from the Shared/Per-frame Functional Groups (PlanePositionSequence,
PlaneOrientationSequence, PixelMeasuresSequence, PixelValueTransformationSequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from backend.imaging.dicom_scan import DicomHeader
from backend.imaging.errors import ImagingError, InconsistentSeries, UnsupportedInput
from backend.imaging.geometry import split_orientation

FloatArray = npt.NDArray[np.float64]

#: Largest difference between direction cosines of slices considered "the same orientation".
ORIENTATION_TOL = 1e-3
#: Relative tolerance on pixel spacing differences between slices.
PIXEL_SPACING_RTOL = 1e-3
#: Slices closer than this (mm) along the normal count as the same position.
DUPLICATE_TOL_MM = 1e-2
#: Largest in-plane offset (as a fraction of the smallest pixel spacing) of a slice from the line through
#: the first slice along the normal; beyond it the stack is tilted/sheared (e.g. CT gantry tilt).
TILT_TOL_PIXELS = 0.1
#: A step larger than this multiple of the median step is reported as missing slice(s).
GAP_FACTOR = 1.5
#: Largest deviation of any slice from the uniform grid, as a fraction of the slice step.
SPACING_RTOL = 0.1


@dataclass(frozen=True)
class SliceRecord:
    header_index: int
    frame: int | None  # 0-based frame index of a multi-frame instance; None for single-frame
    label: str  # human-readable: "instance 12 (IM0012.dcm)" or "frame 3 of enh.dcm"
    position: FloatArray  # ImagePositionPatient, LPS mm
    orientation: FloatArray  # ImageOrientationPatient (6 values)
    pixel_spacing: FloatArray  # [row spacing, column spacing] mm
    rows: int
    cols: int
    slope: float
    intercept: float
    thickness: float | None  # SpacingBetweenSlices or SliceThickness, used for one-slice series


@dataclass(frozen=True)
class Stack:
    """Records sorted by position along the normal, and the LPS vector from one slice to the next."""

    records: list[SliceRecord]
    step: FloatArray


def _floats(value: object, count: int) -> FloatArray | None:
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (count,) and np.all(np.isfinite(arr)) else None


def _fg_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of functional group ``sequence`` for ``frame``: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        group = per_frame[frame]
        if sequence in group and len(group[sequence].value) > 0:
            return group[sequence].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared) > 0:
        group = shared[0]
        if sequence in group and len(group[sequence].value) > 0:
            return group[sequence].value[0]
    return None


def _get(item: Dataset | None, keyword: str, fallback: Dataset | None) -> object:
    if item is not None and keyword in item:
        return item.get(keyword)
    return fallback.get(keyword) if fallback is not None else None


def _number(value: object, default: float) -> float:
    try:
        number = float(str(value)) if value not in (None, "") else default
    except ValueError:
        return default
    return number if np.isfinite(number) else default


def _thickness(*values: object) -> float | None:
    for value in values:
        try:
            number = float(str(value)) if value not in (None, "") else 0.0
        except ValueError:
            continue
        if number > 0 and np.isfinite(number):
            return number
    return None


def _record(index: int, header: DicomHeader, frame: int | None, multiframe: bool) -> SliceRecord:
    ds = header.dataset
    name = header.name
    if frame is None:
        label = f"instance {ds.get('InstanceNumber', '?')} ({name})"
        plane_pos = plane_ori = measures = transform = None
    else:
        label = f"frame {frame + 1} of {name}"
        plane_pos = _fg_item(ds, frame, "PlanePositionSequence")
        plane_ori = _fg_item(ds, frame, "PlaneOrientationSequence")
        measures = _fg_item(ds, frame, "PixelMeasuresSequence")
        transform = _fg_item(ds, frame, "PixelValueTransformationSequence")
    top = ds if not multiframe or header.frame_count == 1 else None
    position = _floats(_get(plane_pos, "ImagePositionPatient", top), 3)
    orientation = _floats(_get(plane_ori, "ImageOrientationPatient", ds), 6)
    spacing = _floats(_get(measures, "PixelSpacing", ds), 2)
    where = " (PlanePositionSequence in the functional groups)" if multiframe else ""
    if position is None:
        raise UnsupportedInput(
            f"{label} has no usable ImagePositionPatient{where}; dualseg needs slices located in patient"
            " space (3D CT/MR series)"
        )
    if orientation is None:
        raise UnsupportedInput(f"{label} has no usable ImageOrientationPatient; cannot place the slice")
    if spacing is None or np.any(spacing <= 0):
        raise UnsupportedInput(f"{label} has no usable PixelSpacing; cannot size the voxels")
    try:
        split_orientation(orientation)
    except ImagingError as exc:
        raise InconsistentSeries(f"{label}: {exc}") from exc
    slope = _number(_get(transform, "RescaleSlope", ds), 1.0)
    intercept = _number(_get(transform, "RescaleIntercept", ds), 0.0)
    if slope == 0:
        raise InconsistentSeries(f"{label} has RescaleSlope 0; its pixel values cannot be used")
    return SliceRecord(
        header_index=index,
        frame=frame,
        label=label,
        position=position,
        orientation=orientation,
        pixel_spacing=spacing,
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        slope=slope,
        intercept=intercept,
        thickness=_thickness(
            _get(measures, "SpacingBetweenSlices", ds), _get(measures, "SliceThickness", ds)
        ),
    )


def slice_records(headers: Sequence[DicomHeader]) -> list[SliceRecord]:
    """One record per 2D plane of the series, in file/frame order."""
    records: list[SliceRecord] = []
    for index, header in enumerate(headers):
        ds = header.dataset
        multiframe = "NumberOfFrames" in ds or "PerFrameFunctionalGroupsSequence" in ds
        if not multiframe:
            records.append(_record(index, header, None, False))
            continue
        for frame in range(header.frame_count):
            records.append(_record(index, header, frame, True))
    if not records:
        raise UnsupportedInput("the series has no image planes")
    return records


def _fmt(values: FloatArray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _check_uniform(records: Sequence[SliceRecord]) -> None:
    sizes = sorted({(r.rows, r.cols) for r in records})
    if len(sizes) > 1 or sizes[0][0] < 1 or sizes[0][1] < 1:
        counts = {s: sum((r.rows, r.cols) == s for r in records) for s in sizes}
        listing = ", ".join(f"{n} slice(s) of {rw}x{c}" for (rw, c), n in counts.items())
        raise InconsistentSeries(f"slices differ in size (rows x columns): {listing}; upload one image stack")
    ref = records[0]
    groups: list[tuple[FloatArray, list[SliceRecord]]] = []
    for r in records:
        for orientation, members in groups:
            if np.max(np.abs(orientation - r.orientation)) <= ORIENTATION_TOL:
                members.append(r)
                break
        else:
            groups.append((r.orientation, [r]))
    if len(groups) > 1:
        listing = "; ".join(
            f"{len(m)} slice(s) with ImageOrientationPatient {_fmt(o)} (e.g. {m[0].label})" for o, m in groups
        )
        raise InconsistentSeries(
            f"the series mixes slice orientations: {listing}. It may include localizer/scout images;"
            " upload only the slices of one 3D stack"
        )
    for r in records:
        if not np.allclose(r.pixel_spacing, ref.pixel_spacing, rtol=PIXEL_SPACING_RTOL, atol=0):
            raise InconsistentSeries(
                f"pixel spacing differs between slices: {ref.label} has {_fmt(ref.pixel_spacing)} mm,"
                f" {r.label} has {_fmt(r.pixel_spacing)} mm"
            )


def check_stack(records: Sequence[SliceRecord]) -> Stack:
    """Sort ``records`` along the slice normal and verify they form one regular grid.

    Returns the sorted records and the slice step vector (LPS mm). Raises :class:`InconsistentSeries`.
    """
    _check_uniform(records)
    normal = split_orientation(records[0].orientation)[2]
    dist = np.array([float(r.position @ normal) for r in records])
    order = np.argsort(dist, kind="stable")
    ordered = [records[i] for i in order]
    dist = dist[order]
    if len(ordered) == 1:
        thickness = ordered[0].thickness or 1.0
        return Stack(records=ordered, step=normal * thickness)

    steps = np.diff(dist)
    dupes = np.flatnonzero(steps < DUPLICATE_TOL_MM)
    if dupes.size:
        examples = ", ".join(f"{ordered[i].label} and {ordered[i + 1].label}" for i in dupes[:3])
        raise InconsistentSeries(
            f"{dupes.size} pair(s) of slices share the same position (e.g. {examples}); the series holds"
            " several volumes (echoes, phases, time points or repeated acquisitions). Split it and upload one"
        )

    positions = np.stack([r.position for r in ordered])
    rel = positions - positions[0]
    perpendicular = rel - np.outer(rel @ normal, normal)
    deviation = np.linalg.norm(perpendicular, axis=1)
    min_pixel = float(np.min(ordered[0].pixel_spacing))
    if float(np.max(deviation)) > TILT_TOL_PIXELS * min_pixel:
        worst = int(np.argmax(deviation))
        angle = float(np.degrees(np.arctan2(deviation[worst], abs(dist[worst] - dist[0]))))
        raise InconsistentSeries(
            f"slice positions are not along the slice normal (gantry tilt or sheared stack, about"
            f" {angle:.1f} degrees: {ordered[worst].label} is {deviation[worst]:.2f} mm off the line through"
            f" {ordered[0].label}); reconstruct the series without tilt (or resample it) before uploading"
        )

    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        parts = []
        for i in gaps[:5]:
            missing = max(1, round(steps[i] / median) - 1)
            parts.append(
                f"between {ordered[i].label} at {dist[i]:.2f} mm and {ordered[i + 1].label} at"
                f" {dist[i + 1]:.2f} mm (gap {steps[i]:.2f} mm, about {missing} slice(s) missing)"
            )
        raise InconsistentSeries(
            f"the series has missing slices (regular spacing {median:.3g} mm): "
            + "; ".join(parts)
            + ". Upload the complete series"
        )

    uniform = (dist[-1] - dist[0]) / (len(dist) - 1)
    residual = np.abs(dist - (dist[0] + uniform * np.arange(len(dist))))
    if float(np.max(residual)) > SPACING_RTOL * uniform:
        worst = int(np.argmax(residual))
        raise InconsistentSeries(
            f"slice spacing is irregular: {ordered[worst].label} is {residual[worst]:.2f} mm off a regular"
            f" {uniform:.3g} mm grid (steps range {steps.min():.3g}..{steps.max():.3g} mm); resample the"
            " series to regular spacing before uploading"
        )
    return Stack(records=ordered, step=(positions[-1] - positions[0]) / (len(ordered) - 1))
