"""Shared plumbing of the DICOM writers: source series → frame order, UIDs, output identity."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from backend.imaging.errors import ImagingError, UnsupportedInput
from backend.imaging.volume import DicomInfo

DicomSource = DicomInfo | Sequence[Dataset]


@dataclass(frozen=True)
class SourceFrames:
    """The source images of a derived object and how volume slices map onto their frames.

    ``frame_slices[t]`` is the volume slice index ``k`` that becomes output frame ``t`` (output frames
    follow the source frames one to one, so the derived object lies in the acquisition plane).
    """

    datasets: list[Dataset]
    rows: int
    cols: int
    frame_slices: npt.NDArray[np.intp]
    laterality: str

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return (self.cols, self.rows, int(self.frame_slices.size))


def _laterality(ds: Dataset) -> str:
    return str(ds.get("Laterality", "") or "")


def resolve_source(source: DicomSource) -> SourceFrames:
    """Normalise ``source`` (a volume's :class:`DicomInfo`, or single-frame datasets in slice order)."""
    if isinstance(source, DicomInfo):
        datasets = list(source.datasets)
        if not datasets or not source.slices:
            raise ImagingError("the volume's DICOM information has no source datasets")
        if source.is_multiframe:
            if len(datasets) != 1:
                raise UnsupportedInput(
                    f"the source series has {len(datasets)} multi-frame instances; DICOM SEG/Parametric Map"
                    " output needs a single multi-frame instance or single-frame instances"
                )
            frames = int(datasets[0].get("NumberOfFrames", 1) or 1)
            frame_slices = np.full(frames, -1, dtype=np.intp)
            for k, ref in enumerate(source.slices):
                if ref.frame_number is None or not 1 <= ref.frame_number <= frames:
                    raise ImagingError(f"slice {k} refers to an invalid frame {ref.frame_number}")
                frame_slices[ref.frame_number - 1] = k
            if np.any(frame_slices < 0):
                raise UnsupportedInput("not every frame of the multi-frame source is a slice of the volume")
        else:
            if [ref.dataset_index for ref in source.slices] != list(range(len(datasets))):
                raise ImagingError("single-frame source datasets are not in slice order")
            frame_slices = np.arange(len(datasets), dtype=np.intp)
        first = datasets[0]
        laterality = source.laterality or _laterality(first)
    else:
        datasets = list(source)
        if not datasets:
            raise ImagingError("no source datasets given")
        if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
            raise UnsupportedInput("pass multi-frame sources as a volume's DicomInfo, not as datasets")
        frame_slices = np.arange(len(datasets), dtype=np.intp)
        first = datasets[0]
        laterality = _laterality(first)
    rows, cols = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    if any(int(ds.get("Rows", 0) or 0) != rows or int(ds.get("Columns", 0) or 0) != cols for ds in datasets):
        raise ImagingError("source datasets differ in rows/columns")
    if not first.get("FrameOfReferenceUID"):
        raise UnsupportedInput(
            "the source series has no FrameOfReferenceUID, so DICOM SEG/Parametric Map output cannot be"
            " aligned with it; use NIfTI output instead"
        )
    return SourceFrames(datasets, rows, cols, frame_slices, laterality)


def volume_to_frames(array: npt.ArrayLike, frames: SourceFrames, what: str) -> np.ndarray:
    """Reorder a volume ``[i, j, k]`` on the source grid into source frames ``(frame, row, column)``.

    A Fortran-ordered volume (the predictor's outputs) whose slices are the frames in order is returned
    as a view, without a copy."""
    arr = np.asarray(array)
    if arr.shape != frames.volume_shape:
        raise ImagingError(
            f"{what} has shape {arr.shape} but the source series grid is {frames.volume_shape}"
            " (columns, rows, slices); outputs must be on the input's own grid"
        )
    frames_view = arr.transpose(2, 1, 0)  # (slice, row, column): C-ordered for a Fortran-ordered volume
    if np.array_equal(frames.frame_slices, np.arange(arr.shape[2])):
        return np.ascontiguousarray(frames_view)  # frames in slice order: no gather, no copy when possible
    return np.ascontiguousarray(frames_view[frames.frame_slices])


#: Namespace of dualseg's name-based (version 5) UUIDs, for deterministic UIDs.
_UID_NAMESPACE = uuid.UUID("6f1f7d0c-2b7e-5a55-9d3c-64a75c1e5e9a")


def derived_uid(seed: str | None, *parts: str) -> str:
    """A new UID: random when ``seed`` is None, else derived deterministically from seed and parts.

    Both are UUID-derived UIDs (``2.25.<128-bit integer>``, PS3.5 B.2): a random UUID, or a name-based
    UUID (version 5) of ``seed`` and ``parts``, so a re-run job rewrites objects with the same UIDs.
    """
    if seed is None:
        return str(generate_uid(prefix=None))
    name = "\x1f".join([seed, *parts])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"
