"""Compressed transfer syntaxes, pydicom's own test files and enhanced (multi-frame) series."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from backend.imaging.dicom_series import read_dicom_series
from backend.imaging.errors import InvalidImage, UnsupportedInput
from tests.backend.imaging.factory import (
    SeriesSpec,
    oblique_iop,
    series_datasets,
    stored_values,
    write_datasets,
)
from tests.backend.imaging.jpeg_lossless import encode_jpeg_lossless


def _testdata(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not available offline (pip install pydicom-data==1.0.0)")
    return str(path)


def _compress(syntax: str) -> Callable[[Dataset], None]:
    def transform(ds: Dataset) -> None:
        ds.compress(syntax, generate_instance_uid=False)

    return transform


@pytest.mark.parametrize(
    ("syntax", "module"),
    [(RLELossless, None), (JPEGLSLossless, "jpeg_ls"), (JPEG2000Lossless, "openjpeg")],
    ids=["rle", "jpeg-ls", "jpeg2000"],
)
def test_lossless_encoded_series_equals_uncompressed(tmp_path: Path, syntax: str, module: str | None) -> None:
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} encoder not installed")
    spec = SeriesSpec(iop=oblique_iop(), cols=64, rows=48, slices=4)  # J2K needs >= 2^5 pixels a side
    plain = read_dicom_series(write_datasets(tmp_path / "plain", series_datasets(spec)))
    paths = write_datasets(tmp_path / "enc", series_datasets(spec), transform=_compress(syntax))
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    vol = read_dicom_series(paths)
    np.testing.assert_array_equal(vol.array, plain.array)
    np.testing.assert_allclose(vol.affine, plain.affine)
    assert vol.dicom is not None and vol.dicom.transfer_syntax_uids == (syntax,)


def test_jpeg_lossless_process14_decoded(tmp_path: Path) -> None:
    spec = SeriesSpec(modality="CT", intercept=-1024.0)
    values = stored_values(spec)

    def to_jpeg_lossless(ds: Dataset) -> None:
        frame = encode_jpeg_lossless(ds.pixel_array.astype(np.uint16))
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1

    paths = write_datasets(tmp_path, series_datasets(spec, values), transform=to_jpeg_lossless)
    vol = read_dicom_series(paths)
    np.testing.assert_allclose(vol.array, values.astype(np.float64) - 1024.0)


def test_jpeg_baseline_decoded(tmp_path: Path) -> None:
    spec = SeriesSpec(cols=32, rows=24, slices=3)
    values = (np.indices((32, 24, 3)).sum(axis=0) * 4).astype(np.uint8)

    def to_jpeg(ds: Dataset) -> None:
        pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit

    paths = write_datasets(tmp_path, series_datasets(spec, values.astype(np.uint16)), transform=to_jpeg)
    vol = read_dicom_series(paths)
    assert vol.shape == (32, 24, 3)
    assert float(np.max(np.abs(vol.array - values))) <= 6  # lossy, but the image is there


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_compressed_file(tmp_path: Path) -> None:
    paths = write_datasets(tmp_path, series_datasets(SeriesSpec()), transform=_compress(RLELossless))
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[: len(raw) - 300])
    with pytest.raises(InvalidImage, match=f"{paths[0].name} has no pixel data.*truncated"):
        read_dicom_series(paths)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
)
def test_pydicom_compressed_test_files(name: str) -> None:
    if name == "MR_small_jpeg_ls_lossless.dcm" and importlib.util.find_spec("jpeg_ls") is None:
        pytest.skip("no JPEG-LS decoder (pyjpegls) installed")
    reference = read_dicom_series([_testdata("MR_small.dcm")])
    vol = read_dicom_series([_testdata(name)])
    np.testing.assert_array_equal(vol.array, reference.array)
    np.testing.assert_allclose(vol.affine, reference.affine)


def test_pydicom_truncated_test_file() -> None:
    with pytest.raises(InvalidImage, match="MR_truncated.dcm"):
        read_dicom_series([_testdata("MR_truncated.dcm")])


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the test file's UIDs are hex digests
def test_pydicom_data_jpeg_lossless_ct() -> None:
    path = _testdata("bad_sequence.dcm")  # CT, JPEG Lossless process 14 SV1 (pydicom-data)
    vol = read_dicom_series([path])
    ds = pydicom.dcmread(path)
    assert vol.shape == (512, 512, 1)
    expected = ds.pixel_array.T * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_allclose(vol.array[:, :, 0], expected)


def test_enhanced_mr_without_plane_positions_rejected() -> None:
    with pytest.raises(UnsupportedInput, match="PlanePositionSequence"):
        read_dicom_series([_testdata("emri_small.dcm")])


def test_enhanced_ct_test_file() -> None:
    path = _testdata("eCT_Supplemental.dcm")
    vol = read_dicom_series([path])
    assert vol.shape == (512, 512, 2)
    assert vol.dicom is not None and vol.dicom.is_multiframe
    assert [s.frame_number for s in vol.dicom.slices] in ([1, 2], [2, 1])


def _legacy_enhanced(spec: SeriesSpec, tmp_path: Path) -> tuple[Path, list[Path]]:
    paths = write_datasets(tmp_path / "single", series_datasets(spec))
    datasets = [pydicom.dcmread(p) for p in paths]
    cls = (
        hd.legacy.LegacyConvertedEnhancedCTImage
        if spec.modality == "CT"
        else hd.legacy.LegacyConvertedEnhancedMRImage
    )
    enhanced = cls(datasets, series_instance_uid=str(generate_uid()), series_number=9,
                   sop_instance_uid=str(generate_uid()), instance_number=1)  # fmt: skip
    out = tmp_path / "enhanced.dcm"
    enhanced.save_as(out)
    return out, paths


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_multiframe_matches_single_frame(tmp_path: Path, modality: str) -> None:
    ct = modality == "CT"
    spec = SeriesSpec(
        iop=oblique_iop(), modality=modality, slope=2.0 if ct else 1.0, intercept=-1024.0 if ct else 0.0
    )
    enhanced, singles = _legacy_enhanced(spec, tmp_path)
    ds = pydicom.dcmread(enhanced, stop_before_pixels=True)
    assert "PerFrameFunctionalGroupsSequence" in ds and int(ds.NumberOfFrames) == spec.slices
    multi = read_dicom_series([enhanced])
    single = read_dicom_series(singles)
    np.testing.assert_allclose(multi.array, single.array)
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-5)
    assert multi.dicom is not None and multi.dicom.is_multiframe
    assert len(multi.dicom.datasets) == 1
    assert sorted(s.frame_number or 0 for s in multi.dicom.slices) == list(range(1, spec.slices + 1))


def test_transfer_syntax_without_decoder(tmp_path: Path) -> None:
    def to_unknown(ds: Dataset) -> None:
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video: no decoder

    paths = write_datasets(tmp_path, series_datasets(SeriesSpec()), transform=to_unknown)
    with pytest.raises(UnsupportedInput, match="cannot be decoded here"):
        read_dicom_series(paths)


def test_corrupt_jpeg_lossless_is_invalid(tmp_path: Path) -> None:
    def corrupt(ds: Dataset) -> None:
        # libjpeg pads a cut-off scan silently, so cut inside the headers instead
        frame = encode_jpeg_lossless(ds.pixel_array.astype(np.uint16))
        ds.PixelData = encapsulate([frame[:30]])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1

    paths = write_datasets(tmp_path, series_datasets(SeriesSpec()), transform=corrupt)
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        read_dicom_series(paths)
