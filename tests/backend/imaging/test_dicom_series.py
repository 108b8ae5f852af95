from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from backend.imaging.dicom_series import list_series, read_dicom_series
from backend.imaging.errors import (
    ImagingError,
    InconsistentSeries,
    InvalidImage,
    MultipleSeriesError,
    UnsupportedInput,
    VolumeTooLarge,
)
from backend.imaging.geometry import voxel_to_world
from tests.backend.imaging.factory import (
    SeriesSpec,
    make_slice,
    oblique_iop,
    series_datasets,
    stored_values,
    write_datasets,
    write_series,
)


def _assert_geometry_matches_files(paths: list[Path], spec: SeriesSpec) -> None:
    """Every voxel (i=column, j=row, k) lands where the file's IPP/IOP/PixelSpacing put that pixel."""
    vol = read_dicom_series(paths)
    assert vol.dicom is not None
    k_of = {uid: k for k, uid in enumerate(vol.dicom.sop_instance_uids)}
    row_cos, col_cos = np.array(spec.iop[:3]), np.array(spec.iop[3:])
    row_sp, col_sp = spec.pixel_spacing
    for path in paths:
        ds = pydicom.dcmread(path)
        k = k_of[str(ds.SOPInstanceUID)]
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        pixels = ds.pixel_array * spec.slope + spec.intercept
        for r, c in [(0, 0), (spec.rows - 1, 0), (0, spec.cols - 1), (5, 7)]:
            lps = ipp + c * col_sp * row_cos + r * row_sp * col_cos
            ras = lps * [-1, -1, 1]
            np.testing.assert_allclose(voxel_to_world(vol.affine, [c, r, k]), ras, atol=1e-4)
            assert vol.array[c, r, k] == pytest.approx(pixels[r, c])


def test_oblique_mr_shuffled_affine_and_values(tmp_path: Path) -> None:
    spec = SeriesSpec(iop=oblique_iop())
    paths = write_series(tmp_path, spec, shuffle=True)
    _assert_geometry_matches_files(paths, spec)
    vol = read_dicom_series(paths)
    assert vol.shape == (spec.cols, spec.rows, spec.slices)
    assert vol.spacing == pytest.approx((0.7, 0.9, 2.5), abs=1e-5)
    np.testing.assert_array_equal(vol.array, stored_values(spec).astype(np.float32))
    info = vol.dicom
    assert info is not None
    assert info.series_uid == spec.series_uid and info.study_uid == spec.study_uid
    assert info.frame_of_reference_uid == spec.for_uid
    assert info.modality == "MR" and info.series_number == 3 and info.series_description == "synthetic"
    assert len(info.datasets) == spec.slices and "PixelData" not in info.datasets[0]
    assert [ds.SOPInstanceUID for ds in info.datasets] == list(info.sop_instance_uids)
    assert "Test^Synthetic" not in repr(vol)


def test_slices_sorted_along_normal_not_instance_number(tmp_path: Path) -> None:
    spec = SeriesSpec(iop=oblique_iop(-40, 10, 75), slice_spacing=1.25)
    datasets = series_datasets(spec)
    for ds in datasets:  # reversed instance numbers must not matter
        ds.InstanceNumber = 100 - int(ds.InstanceNumber)
    paths = write_datasets(tmp_path, datasets)
    _assert_geometry_matches_files(paths, spec)


def test_ct_rescale_applied_signed(tmp_path: Path) -> None:
    spec = SeriesSpec(modality="CT", slope=2.0, intercept=-1024.0, signed=True)
    paths = write_series(tmp_path, spec)
    vol = read_dicom_series(paths)
    expected = stored_values(spec).astype(np.float64) * 2.0 - 1024.0
    np.testing.assert_allclose(vol.array, expected)
    assert vol.dicom is not None and vol.dicom.modality == "CT"
    _assert_geometry_matches_files(paths, spec)


def test_missing_slice_names_the_gap(tmp_path: Path) -> None:
    spec = SeriesSpec()
    datasets = series_datasets(spec)
    del datasets[4]
    paths = write_datasets(tmp_path, datasets)
    with pytest.raises(InconsistentSeries, match="missing slices") as err:
        read_dicom_series(paths)
    message = str(err.value)
    assert "instance 4" in message and "instance 6" in message and "about 1 slice(s) missing" in message


def test_mixed_orientation_rejected(tmp_path: Path) -> None:
    spec = SeriesSpec()
    datasets = series_datasets(spec)
    scout = make_slice(spec.with_(iop=(0, 1, 0, 0, 0, -1)), 0, stored_values(spec)[:, :, 0])
    paths = write_datasets(tmp_path, [*datasets, scout])
    with pytest.raises(InconsistentSeries, match="mixes slice orientations") as err:
        read_dicom_series(paths)
    assert "8 slice(s)" in str(err.value) and "1 slice(s)" in str(err.value)


def test_gantry_tilt_rejected(tmp_path: Path) -> None:
    spec = SeriesSpec(modality="CT", slice_spacing=5.0)
    values = stored_values(spec)
    tilt = np.tan(np.radians(15.0))
    datasets = [
        make_slice(spec, k, values[:, :, k], position=spec.position(k) + [0.0, k * 5.0 * tilt, 0.0])
        for k in range(spec.slices)
    ]
    with pytest.raises(InconsistentSeries, match="gantry tilt") as err:
        read_dicom_series(write_datasets(tmp_path, datasets))
    assert "15.0 degrees" in str(err.value)


def test_irregular_spacing_rejected(tmp_path: Path) -> None:
    spec = SeriesSpec()
    values = stored_values(spec)
    datasets = [
        make_slice(spec, k, values[:, :, k], position=spec.position(k) + [0, 0, 0.6 if k == 3 else 0])
        for k in range(spec.slices)
    ]
    with pytest.raises(InconsistentSeries, match="irregular"):
        read_dicom_series(write_datasets(tmp_path, datasets))


def test_duplicate_positions_rejected(tmp_path: Path) -> None:
    spec = SeriesSpec()
    values = stored_values(spec)
    echo1 = [make_slice(spec, k, values[:, :, k]) for k in range(spec.slices)]
    echo2 = [make_slice(spec, k, values[:, :, k]) for k in range(spec.slices)]
    with pytest.raises(InconsistentSeries, match="share the same position"):
        read_dicom_series(write_datasets(tmp_path, echo1 + echo2))


def test_different_sizes_and_spacing_rejected(tmp_path: Path) -> None:
    spec = SeriesSpec()
    datasets = series_datasets(spec)
    odd = make_slice(spec.with_(rows=10), 8, np.zeros((spec.cols, 10), dtype=np.uint16))
    with pytest.raises(InconsistentSeries, match="differ in size"):
        read_dicom_series(write_datasets(tmp_path / "a", [*datasets, odd]))
    datasets = series_datasets(spec)
    datasets[2].PixelSpacing = [1.2, 0.7]
    with pytest.raises(InconsistentSeries, match="pixel spacing differs"):
        read_dicom_series(write_datasets(tmp_path / "b", datasets))


def test_multiple_series_listed(tmp_path: Path) -> None:
    a = SeriesSpec(series_number=2, description="T1 axial")
    b = SeriesSpec(series_number=5, description="T2 coronal", slices=5)
    paths = write_series(tmp_path / "a", a) + write_series(tmp_path / "b", b)
    with pytest.raises(MultipleSeriesError) as err:
        read_dicom_series(paths)
    listed = err.value.series
    assert [s.series_uid for s in listed] == [a.series_uid, b.series_uid]
    assert [s.instance_count for s in listed] == [8, 5]
    assert "T1 axial" in str(err.value) and "T2 coronal" in str(err.value) and "series_uid" in str(err.value)
    assert err.value.status_code == 409
    summaries = list_series(paths)
    assert [(s.series_description, s.series_number, s.modality) for s in summaries] == [
        ("T1 axial", 2, "MR"),
        ("T2 coronal", 5, "MR"),
    ]
    vol = read_dicom_series(paths, series_uid=b.series_uid)
    assert vol.shape == (16, 14, 5)
    with pytest.raises(ImagingError, match="not among"):
        read_dicom_series(paths, series_uid="1.2.3.4")


def test_non_image_objects_skipped_and_rejected(tmp_path: Path) -> None:
    others = [
        get_testdata_file(name, download=False) for name in ("test-SR.dcm", "rtplan.dcm", "reportsi.dcm")
    ]
    readme = tmp_path / "README.txt"
    readme.write_text("not dicom")
    paths = [Path(str(p)) for p in others if p is not None] + [readme]
    with pytest.raises(UnsupportedInput, match="none of the 4 uploaded file") as err:
        read_dicom_series(paths)
    message = str(err.value)
    assert "Comprehensive SR Storage is not a CT/MR image" in message and "not a DICOM file" in message
    # next to a real series they are ignored
    spec = SeriesSpec()
    vol = read_dicom_series(write_series(tmp_path / "s", spec) + paths)
    assert vol.shape == (16, 14, 8)


def test_seg_object_alone_rejected() -> None:
    seg = get_testdata_file("liver_1frame.dcm", download=False)
    assert seg is not None
    with pytest.raises(UnsupportedInput, match="Segmentation Storage is not a CT/MR image"):
        read_dicom_series([seg])


def test_missing_pixel_data(tmp_path: Path) -> None:
    spec = SeriesSpec()
    datasets = series_datasets(spec)
    del datasets[3].PixelData
    with pytest.raises(InvalidImage, match="no pixel data"):
        read_dicom_series(write_datasets(tmp_path, datasets))


def test_truncated_pixel_data(tmp_path: Path) -> None:
    spec = SeriesSpec()
    paths = write_series(tmp_path, spec, shuffle=False)
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw[:-100])
    with pytest.raises(InvalidImage, match=paths[2].name):
        read_dicom_series(paths)


def test_missing_position_rejected(tmp_path: Path) -> None:
    datasets = series_datasets(SeriesSpec())
    del datasets[0].ImagePositionPatient
    with pytest.raises(UnsupportedInput, match="ImagePositionPatient"):
        read_dicom_series(write_datasets(tmp_path, datasets))


def test_size_limit(tmp_path: Path) -> None:
    paths = write_series(tmp_path, SeriesSpec())
    with pytest.raises(VolumeTooLarge):
        read_dicom_series(paths, max_voxels=100)


def test_pydicom_single_slice_files() -> None:
    ct = get_testdata_file("CT_small.dcm", download=False)
    assert ct is not None
    vol = read_dicom_series([ct])
    ds = pydicom.dcmread(ct)
    assert vol.shape == (128, 128, 1)
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(vol.array[:, :, 0], expected)
    assert vol.spacing[2] == pytest.approx(float(ds.SliceThickness))
