"""DICOM SEG / Parametric Map writers and the NIfTI → DICOM synthetic series."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from backend.imaging.dicom_series import read_dicom_series
from backend.imaging.errors import ImagingError, UnsupportedInput
from backend.imaging.geometry import voxel_to_world
from backend.imaging.pmap import build_entropy_pmap
from backend.imaging.seg import build_seg
from backend.imaging.synthetic import nifti_to_dicom_series
from backend.imaging.volume import DicomInfo, ImageVolume
from tests.backend.imaging.conftest import run_dciodvfy
from tests.backend.imaging.factory import SeriesSpec, oblique_iop, write_series


@pytest.fixture
def oblique_mr(tmp_path: Path) -> ImageVolume:
    return read_dicom_series(write_series(tmp_path / "src", SeriesSpec(iop=oblique_iop())))


def _mask(shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:10, 2:8, 2:6] = 1
    mask[11:14, 9:12, 4:7] = 2
    return mask


def _entropy(shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(3).random(shape).astype(np.float32)


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _nifti_volume(left_handed: bool = False) -> ImageVolume:
    rot = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.0])
    affine[:3, 3] = [12.0, -30.0, 5.5]
    if left_handed:
        affine[:3, 0] *= -1
    array = (np.random.default_rng(5).random((12, 10, 6)) * 300.5 - 20).astype(np.float32)
    return ImageVolume(array=array, affine=affine, source="nifti")


def _pmap_volume(path: Path, info: DicomInfo) -> np.ndarray:
    """Parametric Map frames put back on the source grid via each frame's source image reference."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    k_of = {(s.sop_instance_uid, s.frame_number): k for k, s in enumerate(info.slices)}
    out = np.full((frames.shape[2], frames.shape[1], len(info.slices)), np.nan, dtype=np.float32)
    for t, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        number = source.get("ReferencedFrameNumber")
        k = k_of[(str(source.ReferencedSOPInstanceUID), int(number) if number is not None else None)]
        out[:, :, k] = frames[t].T
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        if not info.is_multiframe:
            expected = [float(v) for v in info.datasets[k].ImagePositionPatient]
            np.testing.assert_allclose(position, expected, atol=1e-4)
    return out


def _check_seg_content(seg_path: Path, source: ImageVolume, mask: np.ndarray) -> None:
    assert source.dicom is not None
    seg = hd.seg.segread(seg_path)
    uids = list(source.dicom.sop_instance_uids)
    pixels = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels, mask.transpose(2, 1, 0))
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == source.dicom.frame_of_reference_uid
    assert seg.StudyInstanceUID == source.dicom.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.dicom.series_uid
    first_iop = [float(v) for v in source.dicom.datasets[0].ImageOrientationPatient]
    seg_iop = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in seg_iop], first_iop, atol=1e-6)


def test_seg_from_oblique_mr(oblique_mr: ImageVolume, tmp_path: Path, classes: list[dict[str, Any]]) -> None:
    mask = _mask(oblique_mr.shape)
    assert oblique_mr.dicom is not None
    seg = build_seg(mask, oblique_mr.dicom, classes, model_version="2.1.0", uid_seed="job-1")
    path = _save(seg, tmp_path / "seg.dcm")
    _check_seg_content(path, oblique_mr, mask)
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["left atrium", "left ventricle"]
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "82471001"
    assert segments[0].SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segments[1].SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "dualseg" and algorithm.AlgorithmVersion == "2.1.0"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert "RecommendedDisplayCIELabValue" in segments[0]
    errors, warnings = run_dciodvfy(path)
    assert errors == [], errors
    # deterministic UIDs for the same seed
    again = build_seg(mask, oblique_mr.dicom, classes, model_version="2.1.0", uid_seed="job-1")
    assert again.SOPInstanceUID == seg.SOPInstanceUID and again.SeriesInstanceUID == seg.SeriesInstanceUID
    assert build_seg(mask, oblique_mr.dicom, classes, model_version="2").SOPInstanceUID != seg.SOPInstanceUID


def test_seg_manual_and_empty(oblique_mr: ImageVolume, tmp_path: Path, classes: list[dict[str, Any]]) -> None:
    assert oblique_mr.dicom is not None
    empty = np.zeros(oblique_mr.shape, dtype=np.uint8)
    seg = build_seg(empty, oblique_mr.dicom, classes, model_version="1", algorithm_type="MANUAL")
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert "SegmentationAlgorithmIdentificationSequence" not in seg.SegmentSequence[0]
    path = _save(seg, tmp_path / "empty.dcm")
    _check_seg_content(path, oblique_mr, empty)
    assert run_dciodvfy(path)[0] == []


def test_seg_input_errors(oblique_mr: ImageVolume, classes: list[dict[str, Any]]) -> None:
    assert oblique_mr.dicom is not None
    with pytest.raises(ImagingError, match="shape"):
        build_seg(np.zeros((3, 3, 3), np.uint8), oblique_mr.dicom, classes, model_version="1")
    bad = _mask(oblique_mr.shape)
    bad[0, 0, 0] = 7
    with pytest.raises(ImagingError, match=r"labels \[7\]"):
        build_seg(bad, oblique_mr.dicom, classes, model_version="1")
    with pytest.raises(ImagingError, match="invalid class"):
        build_seg(bad, oblique_mr.dicom, [{"index": 1, "name": "x"}], model_version="1")


def test_seg_and_pmap_from_multiframe_source(tmp_path: Path, classes: list[dict[str, Any]]) -> None:
    spec = SeriesSpec(iop=oblique_iop())
    singles = [pydicom.dcmread(p) for p in write_series(tmp_path / "s", spec)]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        singles, series_instance_uid=hd.UID(), series_number=4, sop_instance_uid=hd.UID(), instance_number=1
    )
    enhanced_path = _save(enhanced, tmp_path / "enhanced.dcm")
    vol = read_dicom_series([enhanced_path])
    assert vol.dicom is not None and vol.dicom.is_multiframe
    mask, entropy = _mask(vol.shape), _entropy(vol.shape)
    seg_path = _save(build_seg(mask, vol.dicom, classes, model_version="1"), tmp_path / "seg.dcm")
    seg = hd.seg.segread(seg_path)
    frame_numbers = [s.frame_number or 0 for s in vol.dicom.slices]
    pixels = seg.get_pixels_by_source_frame(
        str(vol.dicom.datasets[0].SOPInstanceUID),
        frame_numbers,
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(pixels, mask.transpose(2, 1, 0))
    assert run_dciodvfy(seg_path)[0] == []
    pm_path = _save(build_entropy_pmap(entropy, vol.dicom, model_version="1"), tmp_path / "pm.dcm")
    np.testing.assert_array_equal(_pmap_volume(pm_path, vol.dicom), entropy)
    assert run_dciodvfy(pm_path)[0] == []


def test_pmap_from_oblique_mr(oblique_mr: ImageVolume, tmp_path: Path) -> None:
    assert oblique_mr.dicom is not None
    entropy = _entropy(oblique_mr.shape)
    pmap = build_entropy_pmap(entropy, oblique_mr.dicom, model_version="2.1.0", uid_seed="job-1")
    path = _save(pmap, tmp_path / "pm.dcm")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert "FloatPixelData" in ds and ds.BitsAllocated == 32
    np.testing.assert_array_equal(_pmap_volume(path, oblique_mr.dicom), entropy)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "entropy"
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == 0.0
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == 1.0
    assert "Laterality" in ds and ds.Laterality == ""
    assert ds.FrameOfReferenceUID == oblique_mr.dicom.frame_of_reference_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == oblique_mr.dicom.series_uid
    errors, _ = run_dciodvfy(path)
    assert errors == [], errors


def test_pmap_rejects_unnormalised(oblique_mr: ImageVolume) -> None:
    assert oblique_mr.dicom is not None
    with pytest.raises(ImagingError, match=r"\[0, 1\]"):
        build_entropy_pmap(_entropy(oblique_mr.shape) * 2, oblique_mr.dicom, model_version="1")
    with pytest.raises(ImagingError, match="NaN"):
        build_entropy_pmap(np.full(oblique_mr.shape, np.nan), oblique_mr.dicom, model_version="1")


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_nifti_derived_series_seg_and_pmap(
    tmp_path: Path, classes: list[dict[str, Any]], modality: str
) -> None:
    volume = _nifti_volume()
    series = nifti_to_dicom_series(volume, modality=modality, uid_seed="case-7")  # type: ignore[arg-type]
    assert len(series) == volume.shape[2]
    paths = [_save(ds, tmp_path / f"src{k:03d}.dcm") for k, ds in enumerate(series)]
    errors, _ = run_dciodvfy(paths[0])
    assert errors == [], errors
    again = read_dicom_series(paths)
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-5)
    slope = float(series[0].get("RescaleSlope", 1))
    np.testing.assert_allclose(again.array, volume.array, atol=slope / 2 + 1e-3)
    assert series[0].PatientID.startswith("DUALSEG-") and series[0].Laterality == ""
    assert nifti_to_dicom_series(volume, uid_seed="case-7")[3].SOPInstanceUID == series[3].SOPInstanceUID

    mask, entropy = _mask(volume.shape), _entropy(volume.shape)
    seg_path = _save(build_seg(mask, series, classes, model_version="1"), tmp_path / "seg.dcm")
    _check_seg_content(seg_path, again, mask)
    assert run_dciodvfy(seg_path)[0] == []
    pm_path = _save(build_entropy_pmap(entropy, series, model_version="1"), tmp_path / "pm.dcm")
    assert again.dicom is not None
    np.testing.assert_array_equal(_pmap_volume(pm_path, again.dicom), entropy)
    assert run_dciodvfy(pm_path)[0] == []


def test_nifti_derived_series_left_handed_affine(tmp_path: Path) -> None:
    volume = _nifti_volume(left_handed=True)
    paths = [_save(ds, tmp_path / f"s{k}.dcm") for k, ds in enumerate(nifti_to_dicom_series(volume))]
    again = read_dicom_series(paths)
    # the reader sorts along the slice normal: k is reversed, the voxel positions are the same
    n = volume.shape[2]
    ijk = np.array([[1, 2, 0], [5, 7, 3], [11, 9, 5]])
    flipped = ijk.copy()
    flipped[:, 2] = n - 1 - ijk[:, 2]
    np.testing.assert_allclose(
        voxel_to_world(again.affine, flipped), voxel_to_world(volume.affine, ijk), atol=1e-4
    )
    np.testing.assert_allclose(
        again.array[:, :, ::-1], volume.array, atol=float(np.ptp(again.array)) / 65535 + 1e-3
    )


def test_sheared_volume_refused() -> None:
    volume = _nifti_volume()
    affine = volume.affine.copy()
    affine[0, 2] += 0.5
    with pytest.raises(UnsupportedInput, match="sheared"):
        nifti_to_dicom_series(ImageVolume(array=volume.array, affine=affine, source="nifti"))


def test_source_without_frame_of_reference(tmp_path: Path, classes: list[dict[str, Any]]) -> None:
    series = nifti_to_dicom_series(_nifti_volume())
    for ds in series:
        del ds.FrameOfReferenceUID
    with pytest.raises(UnsupportedInput, match="FrameOfReferenceUID"):
        build_seg(_mask((12, 10, 6)), series, classes, model_version="1")
