"""First pass over uploaded DICOM files: read headers, keep CT/MR images, group them by series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from backend.imaging.errors import InvalidImage, SeriesSummary, UnsupportedInput

#: SOP classes read as volumes. Everything else (SEG, SR, RT*, PR, KO, secondary capture, US, ...) is
#: skipped; when nothing is left the upload is rejected with a list of what was found.
VOLUME_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}


@dataclass(frozen=True)
class DicomHeader:
    """One image file's header (read without pixel data)."""

    path: str
    dataset: Dataset = field(repr=False)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def series_uid(self) -> str:
        return str(self.dataset.get("SeriesInstanceUID", ""))

    @property
    def frame_count(self) -> int:
        return int(self.dataset.get("NumberOfFrames", 1) or 1)


@dataclass(frozen=True)
class ScanResult:
    """Image headers grouped by SeriesInstanceUID, plus ``(file name, reason)`` for every skipped file."""

    series: dict[str, list[DicomHeader]]
    skipped: list[tuple[str, str]]

    def summaries(self) -> list[SeriesSummary]:
        return sorted(
            (summarize(headers) for headers in self.series.values()),
            key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid),
        )


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else f"SOP class {uid or '(missing)'}"


def _int_or_none(value: object) -> int | None:
    try:
        return None if value in (None, "") else int(str(value))
    except ValueError:
        return None


def summarize(headers: Sequence[DicomHeader]) -> SeriesSummary:
    """Describe one series (no patient data)."""
    first = headers[0].dataset
    return SeriesSummary(
        series_uid=headers[0].series_uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        modality=str(first.get("Modality", "")),
        series_description=str(first.get("SeriesDescription", "")),
        series_number=_int_or_none(first.get("SeriesNumber")),
        sop_class_uid=str(first.get("SOPClassUID", "")),
        instance_count=len(headers),
        frame_count=sum(h.frame_count for h in headers),
    )


def _read_header(path: str) -> Dataset | None:
    """The header of ``path``, or None when the file is not DICOM at all (no 'DICM' preamble)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as exc:
        raise InvalidImage(
            f"{Path(path).name} looks like DICOM but its header cannot be parsed ({exc});"
            " re-export the series"
        ) from exc


def _skip_reason(ds: Dataset) -> str | None:
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in VOLUME_SOP_CLASSES:
        return f"{_sop_class_name(sop)} is not a CT/MR image"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour image (SamplesPerPixel > 1)"
    if not ds.get("SeriesInstanceUID"):
        return "no SeriesInstanceUID"
    return None


def scan_files(paths: Sequence[str | PathLike[str]]) -> ScanResult:
    """Read every file's header; keep CT/MR image instances grouped by series.

    Non-DICOM files (README, DICOMDIR's companions, ...) and non-image DICOM objects are skipped and
    listed in :attr:`ScanResult.skipped`. A file that claims to be DICOM but cannot be parsed raises
    :class:`InvalidImage`. Duplicate SOP Instance UIDs (the same file uploaded twice) are kept once.
    """
    series: dict[str, list[DicomHeader]] = {}
    skipped: list[tuple[str, str]] = []
    seen_sops: set[str] = set()
    for raw in paths:
        path = str(raw)
        name = Path(path).name
        if not Path(path).is_file():
            skipped.append((name, "not a file"))
            continue
        ds = _read_header(path)
        if ds is None:
            skipped.append((name, "not a DICOM file"))
            continue
        reason = _skip_reason(ds)
        if reason is not None:
            skipped.append((name, reason))
            continue
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        if sop_uid and sop_uid in seen_sops:
            skipped.append((name, "duplicate of another file (same SOP Instance UID)"))
            continue
        seen_sops.add(sop_uid)
        header = DicomHeader(path=path, dataset=ds)
        series.setdefault(header.series_uid, []).append(header)
    return ScanResult(series=series, skipped=skipped)


def describe_skipped(skipped: Sequence[tuple[str, str]], limit: int = 8) -> str:
    """Summarise skipped files as 'N × reason' groups, e.g. '2 × Segmentation Storage is not ...'."""
    counts: dict[str, int] = {}
    for _, reason in skipped:
        counts[reason] = counts.get(reason, 0) + 1
    parts = [f"{n} x {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    if len(parts) > limit:
        parts = parts[:limit] + [f"... ({len(parts) - limit} more kinds)"]
    return "; ".join(parts) if parts else "no files"


def require_images(result: ScanResult, file_count: int) -> None:
    """Raise :class:`UnsupportedInput` when the scan found no CT/MR image instances."""
    if result.series:
        return
    if file_count == 0:
        raise UnsupportedInput("no files were given; upload the DICOM files of one CT or MR series")
    raise UnsupportedInput(
        f"none of the {file_count} uploaded file(s) is a CT or MR image ({describe_skipped(result.skipped)});"
        " upload the image series itself (CT/MR Image Storage or their Enhanced/Legacy Converted forms)"
    )


def list_series(paths: Sequence[str | PathLike[str]]) -> list[SeriesSummary]:
    """Summaries of the CT/MR image series among ``paths``, ordered by series number.

    Raises :class:`UnsupportedInput` when no file is a CT/MR image.
    """
    result = scan_files(paths)
    require_images(result, len(paths))
    return result.summaries()
