"""Tiny synthetic DICOM series for the imaging tests (written with pydicom, independent of the reader)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from Euler angles in degrees (x, then y, then z)."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_iop(ax: float = 20.0, ay: float = -15.0, az: float = 30.0) -> tuple[float, ...]:
    r = rotation(ax, ay, az)
    return tuple(float(v) for v in (*r[:, 0], *r[:, 1]))


AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class SeriesSpec:
    cols: int = 16
    rows: int = 14
    slices: int = 8
    pixel_spacing: tuple[float, float] = (0.9, 0.7)  # (row spacing, column spacing) as in DICOM
    slice_spacing: float = 2.5
    iop: tuple[float, ...] = AXIAL_IOP
    origin: tuple[float, float, float] = (-10.0, 20.0, 30.0)  # LPS
    modality: str = "MR"
    slope: float = 1.0
    intercept: float = 0.0
    signed: bool = False
    series_number: int = 3
    description: str = "synthetic"
    study_uid: str = field(default_factory=lambda: str(generate_uid()))
    series_uid: str = field(default_factory=lambda: str(generate_uid()))
    for_uid: str = field(default_factory=lambda: str(generate_uid()))

    def with_(self, **changes: object) -> SeriesSpec:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def normal(self) -> np.ndarray:
        row, col = np.array(self.iop[:3]), np.array(self.iop[3:])
        return np.cross(row, col)

    def position(self, k: int) -> np.ndarray:
        return np.array(self.origin) + k * self.slice_spacing * self.normal


def stored_values(spec: SeriesSpec, seed: int = 0) -> np.ndarray:
    """Stored pixel values indexed [column, row, slice] (deterministic pattern plus noise)."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(np.arange(spec.cols), np.arange(spec.rows), np.arange(spec.slices), indexing="ij")
    values = 100 + 10 * i + 3 * j + 50 * k + rng.integers(0, 5, size=i.shape)
    if spec.signed:
        values = values - 400
    return values.astype(np.int16 if spec.signed else np.uint16)


def make_slice(spec: SeriesSpec, k: int, pixels: np.ndarray, position: np.ndarray | None = None) -> Dataset:
    """One single-frame CT/MR dataset; ``pixels`` is [column, row]."""
    sop_class = CT_IMAGE if spec.modality == "CT" else MR_IMAGE
    sop_uid = str(generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if spec.modality == "CT" else "OTHER"]
    ds.Modality = spec.modality
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesInstanceUID = spec.series_uid
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.description
    ds.Laterality = ""
    ds.PatientPosition = "HFS"
    ds.Manufacturer = "dualseg-tests"
    ds.FrameOfReferenceUID = spec.for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = k + 1
    pos = spec.position(k) if position is None else position
    ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in spec.iop]
    ds.PixelSpacing = [f"{v:g}" for v in spec.pixel_spacing]
    ds.SliceThickness = f"{spec.slice_spacing:g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if spec.signed else 0
    if spec.modality == "CT":
        ds.RescaleIntercept = f"{spec.intercept:g}"
        ds.RescaleSlope = f"{spec.slope:g}"
        ds.KVP = "120"
        ds.AcquisitionNumber = "1"
    else:
        if spec.slope != 1.0 or spec.intercept != 0.0:
            ds.RescaleIntercept = f"{spec.intercept:g}"
            ds.RescaleSlope = f"{spec.slope:g}"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "5"
        ds.EchoTime = "2"
        ds.EchoTrainLength = "1"
    ds.PixelData = np.ascontiguousarray(pixels.T).tobytes()
    return ds


def series_datasets(spec: SeriesSpec, values: np.ndarray | None = None) -> list[Dataset]:
    data = stored_values(spec) if values is None else values
    return [make_slice(spec, k, data[:, :, k]) for k in range(spec.slices)]


def write_datasets(
    directory: Path,
    datasets: list[Dataset],
    *,
    shuffle: bool = True,
    seed: int = 1,
    transform: Callable[[Dataset], None] | None = None,
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    order = list(range(len(datasets)))
    if shuffle:
        random.Random(seed).shuffle(order)
    paths = []
    for n, index in enumerate(order):
        ds = datasets[index]
        if transform is not None:
            transform(ds)
        path = directory / f"IM{n:04d}_{ds.SOPInstanceUID[-6:]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_series(directory: Path, spec: SeriesSpec, *, shuffle: bool = True) -> list[Path]:
    return write_datasets(directory, series_datasets(spec), shuffle=shuffle)
