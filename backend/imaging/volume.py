"""The in-memory volume every reader returns and every writer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from backend.imaging.errors import ImagingError
from backend.imaging.geometry import check_affine, spacing_from_affine

VolumeSource = Literal["nifti", "dicom"]


@dataclass(frozen=True)
class SliceRef:
    """Where slice ``k`` of a volume came from: an instance and, for multi-frame instances, a frame."""

    sop_instance_uid: str
    frame_number: int | None  # 1-based frame number in a multi-frame instance, None for single-frame
    dataset_index: int  # index into ``DicomInfo.datasets``


@dataclass(frozen=True)
class DicomInfo:
    """DICOM identity of a volume, kept to build outputs (SEG / Parametric Map) in the same study.

    The descriptive fields carry no patient data. ``datasets`` are the source instances (header only,
    pixel data dropped) in first-use order; for single-frame series that is the sorted slice order, so
    ``datasets[k]`` is slice ``k``. ``slices[k]`` says which instance/frame array slice ``k`` came from.
    ``datasets`` do hold the patient/study modules (highdicom copies them into derived objects), so they
    are excluded from ``repr`` and must never be logged.
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    modality: str
    sop_class_uid: str
    series_description: str = ""
    series_number: int | None = None
    study_description: str = ""
    manufacturer: str = ""
    body_part_examined: str = ""
    laterality: str = ""
    transfer_syntax_uids: tuple[str, ...] = ()
    slices: tuple[SliceRef, ...] = ()
    datasets: tuple[Dataset, ...] = field(default=(), repr=False, compare=False)
    paths: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOP Instance UID of each slice ``k`` (repeats for multi-frame sources)."""
        return tuple(s.sop_instance_uid for s in self.slices)

    @property
    def is_multiframe(self) -> bool:
        return any(s.frame_number is not None for s in self.slices)


@dataclass(frozen=True)
class ImageVolume:
    """A 3D scalar image: ``array[i, j, k]`` (float32) and the 4×4 ``affine`` voxel → RAS mm.

    For DICOM sources ``i`` is the column index, ``j`` the row index and ``k`` the slice index sorted by
    position along the slice normal (see :mod:`backend.imaging.geometry`).
    """

    array: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    source: VolumeSource
    dicom: DicomInfo | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray) or self.array.ndim != 3:
            raise ImagingError(f"a volume must be a 3D array, got shape {np.shape(self.array)}")
        if self.array.dtype != np.float32:
            raise ImagingError(f"volume array must be float32, got {self.array.dtype}")
        object.__setattr__(self, "affine", check_affine(self.affine))
        if self.source not in ("nifti", "dicom"):
            raise ImagingError(f"unknown volume source {self.source!r}")
        if self.dicom is not None and self.dicom.slices and len(self.dicom.slices) != self.array.shape[2]:
            raise ImagingError(
                f"DICOM info lists {len(self.dicom.slices)} slices but the array has {self.array.shape[2]}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along i, j, k."""
        return spacing_from_affine(self.affine)

    def __repr__(self) -> str:
        return (
            f"ImageVolume(shape={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)},"
            f" source={self.source!r}, dicom={self.dicom!r})"
        )
