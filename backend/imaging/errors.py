"""Imaging errors.

Every error raised by :mod:`backend.imaging` for bad *input* is an :class:`ImagingError` (a ``ValueError``)
whose message tells the person who uploaded the data what is wrong and what to do about it. The API maps
them to 4xx responses using :attr:`ImagingError.code` and :attr:`ImagingError.status_code`; messages never
contain patient names or IDs (only file names, UIDs, series descriptions and numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


class ImagingError(ValueError):
    """Bad or unusable imaging input (maps to HTTP 422 unless a subclass says otherwise)."""

    code: ClassVar[str] = "imaging_error"
    status_code: ClassVar[int] = 422


class UnsupportedInput(ImagingError):
    """Valid data of a kind dualseg does not handle (2D/4D images, colour, non-image DICOM, ...)."""

    code = "unsupported_input"
    status_code = 415


class InvalidImage(ImagingError):
    """Corrupt, truncated or otherwise unreadable data, or values that are not usable (NaN/Inf)."""

    code = "invalid_image"


class VolumeTooLarge(UnsupportedInput):
    """The volume exceeds the configured size limits."""

    code = "volume_too_large"
    status_code = 413


class VolumeTooSmall(ImagingError):
    """The volume is below the minimum shape a 3D model can segment (``backend.imaging.min_shape``)."""

    code = "volume_too_small"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details or {})


class InconsistentSeries(ImagingError):
    """The slices of a DICOM series do not form one regular 3D grid."""

    code = "inconsistent_series"


@dataclass(frozen=True)
class SeriesSummary:
    """One DICOM series found among uploaded files (no patient data)."""

    series_uid: str
    study_uid: str
    modality: str
    series_description: str
    series_number: int | None
    sop_class_uid: str
    instance_count: int
    frame_count: int

    def describe(self) -> str:
        number = "?" if self.series_number is None else str(self.series_number)
        desc = self.series_description or "(no description)"
        return (
            f"series {number} '{desc}' [{self.modality}] with {self.instance_count} instance(s)"
            f" ({self.frame_count} frame(s)), series_uid={self.series_uid}"
        )


class MultipleSeriesError(ImagingError):
    """The upload holds several image series; the client must choose one with ``series_uid``."""

    code = "multiple_series"
    status_code = 409

    def __init__(self, series: Sequence[SeriesSummary]) -> None:
        self.series: tuple[SeriesSummary, ...] = tuple(series)
        lines = "; ".join(s.describe() for s in self.series)
        super().__init__(
            f"the upload contains {len(self.series)} image series; choose one by passing its series_uid: "
            + lines
        )
