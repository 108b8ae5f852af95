"""De-identification on ingest (DUALSEG_DEIDENTIFY_ON_INGEST) and the private identity mapping.

The pure policy on a pydicom Dataset; then the API in-process: what is stored for a named DICOM series
(read back from the artifact store), the stable pseudonym, the admin-only identity endpoint and its audit
event, the setting off, NIfTI header text, a DICOM SEG correction, and deletion of the mapping.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from backend.config import Settings
from backend.db import session_scope
from backend.errors import Conflict
from backend.imaging import deid
from backend.imaging.dicom_refs import DicomSource
from backend.main import create_app
from backend.migrations import run_migrations
from backend.security import create_token
from backend.services import identity
from backend.storage import ArtifactStore
from backend.tables import Case, CaseIdentity, Role
from tests.helpers import LA_CLASSES, blob_volume, oblique_affine, write_dicom_series

SECRET = "deid-test-secret-0123456789"
PATIENT_A = {
    "PatientName": "Qwxzvb^Ylmnopr",
    "PatientID": "PID-4417-QQZ",
    "PatientBirthDate": "19410317",
    "AccessionNumber": "ACC-99817",
    "OtherPatientIDs": "OTH-55120",
    "StudyID": "STY-8841",
    "InstitutionName": "St Zyxw Clinic",
    "ReferringPhysicianName": "Dr^Vexhollow",
}
PATIENT_B = {**PATIENT_A, "PatientName": "Bravo^Kettleworth", "PatientID": "PID-0002-BBB"}
PRIVATE_VALUE = "PRIVATE-PHI-7719"


def _needles(patient: dict[str, str]) -> list[bytes]:
    parts = [*patient.values(), *patient["PatientName"].split("^"), PRIVATE_VALUE]
    return [p.encode() for p in parts]


# --- the pure function -------------------------------------------------------------------------------


def _rich_dataset() -> Dataset:
    ds = Dataset()
    for keyword, value in PATIENT_A.items():
        setattr(ds, keyword, value)
    ds.PatientSex, ds.PatientAge, ds.PatientAddress = "F", "084Y", "1 Zyxw Road"
    other = Dataset()
    other.PatientID = "SEQ-ID-3310"
    ds.OtherPatientIDsSequence = Sequence([other])
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, "20240102")
    ds.StudyTime, ds.StudyDescription, ds.SeriesDescription = "101010", "Qwxzvb brain", "Qwxzvb T1"
    ds.InstitutionAddress, ds.StationName, ds.OperatorsName = "Zyxw street", "CT-ZY-1", "Op^Erator"
    ds.PerformingPhysicianName, ds.DeviceSerialNumber, ds.ProtocolName = "Dr^Perf", "SN-123", "Qwxzvb proto"
    ds.ImageComments, ds.PatientComments = "patient Qwxzvb moved", "talkative"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
    ds.FrameOfReferenceUID, ds.Modality, ds.Rows, ds.Columns = "1.2.3.9", "CT", 2, 2
    ds.ImagePositionPatient, ds.PixelSpacing = [1.0, 2.0, 3.0], [0.5, 0.5]
    ds.add_new(0x00091010, "LO", PRIVATE_VALUE)
    ds.add_new(0x60003000, "OW", b"\x01\x00")  # overlay data
    ds.add_new(0x60004000, "LT", "overlay note Qwxzvb")  # overlay comments
    ds.add_new(0x50003000, "OW", b"\x00\x00")  # curve data
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5.7"
    ref.add_new(0x00191001, "LO", PRIVATE_VALUE)
    ref.PatientName = "Nested^Qwxzvb"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.SourceApplicationEntityTitle = "ZYXW_CT"
    return ds


def test_deidentify_applies_the_basic_profile_with_retained_uids() -> None:
    ds = _rich_dataset()
    original = deid.identity_of(ds)
    assert original["PatientName"] == PATIENT_A["PatientName"] and original["PatientSex"] == "F"
    assert original["OtherPatientIDs"] == "OTH-55120\\SEQ-ID-3310"
    deid.deidentify(ds, "DSG-TESTPSEUDONYM")
    assert ds.PatientName == "DSG-TESTPSEUDONYM^" and ds.PatientID == "DSG-TESTPSEUDONYM"
    for keyword in (
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ContentDate",
        "ReferringPhysicianName",
    ):
        assert keyword in ds and ds.data_element(keyword).value in ("", None), keyword  # Z: kept, empty
    for keyword in (
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "PatientAge",
        "PatientAddress",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "OperatorsName",
        "PerformingPhysicianName",
        "DeviceSerialNumber",
        "ProtocolName",
        "StudyDescription",
        "SeriesDescription",
        "SeriesDate",
        "AcquisitionDate",
        "ImageComments",
        "PatientComments",
    ):
        assert keyword not in ds, keyword  # X: removed
    assert not any(elem.tag.is_private for elem in ds.iterall())
    assert not any(0x5000 <= elem.tag.group <= 0x60FF for elem in ds.iterall())
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.ReferencedImageSequence[0].PatientName.family_name == "DSG-TESTPSEUDONYM"  # nested items too
    # Retain UIDs Option: every UID is the original one; geometry untouched
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID) == (
        "1.2.3.4",
        "1.2.3.4.5",
        "1.2.3.4.5.6",
        "1.2.3.9",
    )
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5.7"
    assert list(ds.ImagePositionPatient) == [1.0, 2.0, 3.0] and ds.Modality == "CT"
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert "Basic Profile" in ds.DeidentificationMethod
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113110", "DCM")]
    assert b"Qwxzvb" not in _encoded(ds) and PRIVATE_VALUE.encode() not in _encoded(ds)


def _encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def test_pseudonyms_are_keyed_and_stable() -> None:
    a1, a2, b = Dataset(), Dataset(), Dataset()
    a1.PatientID, a2.PatientID, b.PatientID = "PID-1", "PID-1", "PID-2"
    a2.PatientName = "Other^Spelling"
    p = identity.pseudonym_for(SECRET, a1)
    assert p == identity.pseudonym_for(SECRET, a2) != identity.pseudonym_for(SECRET, b)
    assert p.startswith("DSG-") and len(p) == 20
    assert p != identity.pseudonym_for("another-secret-0123456789", a1)
    no_id_1, no_id_2 = Dataset(), Dataset()
    no_id_1.StudyInstanceUID, no_id_2.StudyInstanceUID = "1.2.3", "1.2.4"
    assert identity.pseudonym_for(SECRET, no_id_1) != identity.pseudonym_for(SECRET, no_id_2)
    for bad in ("", "a\\b", "a^b", "x" * 64):
        with pytest.raises(ValueError):
            deid.deidentify(Dataset(), bad)


def test_the_mapping_is_encrypted_and_needs_the_same_secret(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, secret_key=SECRET)
    row = identity.mapping_row(s, "c" * 32, identity.Identity("DSG-X", {"PatientName": "Qwxzvb^Ylmnopr"}))
    assert "Qwxzvb" not in row.identifiers and row.pseudonym == "DSG-X"
    run_migrations(s.resolved_database_url)
    with session_scope(s.resolved_database_url) as session:
        session.add(
            Case(
                id="c" * 32,
                source_format="dicom",
                sha256="0",
                image_key="k",
                shape=[1, 1, 1],
                spacing=[1, 1, 1],
                affine=np.eye(4).tolist(),
                meta={},
            )
        )
        session.add(row)
    with session_scope(s.resolved_database_url) as session:
        assert identity.read_identity(session, s, "c" * 32)[1] == {"PatientName": "Qwxzvb^Ylmnopr"}
        rotated = Settings(data_dir=tmp_path, secret_key="rotated-secret-0123456789")
        with pytest.raises(Conflict):
            identity.read_identity(session, rotated, "c" * 32)


# --- through the API -----------------------------------------------------------------------------------


@dataclass
class Api:
    settings: Settings
    store: ArtifactStore
    clients: dict[str, TestClient]


def _api(tmp_path: Path, deidentify: bool) -> Api:
    s = Settings(data_dir=tmp_path / "var", secret_key=SECRET, deidentify_on_ingest=deidentify)
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    app = create_app(s)
    clients = {}
    with session_scope(s.resolved_database_url) as session:
        for role in Role:
            token, _ = create_token(session, s.secret_key, f"deid-{role.value}", role, None)
            clients[role.value] = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    return Api(s, ArtifactStore(s.resolved_storage_dir), clients)


@pytest.fixture
def on(tmp_path: Path) -> Iterator[Api]:
    api = _api(tmp_path, deidentify=True)
    yield api
    for c in api.clients.values():
        c.close()


def _named_series(folder: Path, patient: dict[str, str], seed: int = 0) -> list[Path]:
    """A small CT series with ``patient``'s identifiers, a private tag, and the name in the file names."""
    image, _ = blob_volume((12, 10, 4), seed=seed)
    paths = write_dicom_series(folder, np.round(image * 2) / 2, oblique_affine(), modality="CT", seed=seed)
    named = []
    for n, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        for keyword, value in patient.items():
            setattr(ds, keyword, value)
        ds.SeriesDescription = f"{patient['PatientName'].split('^')[0]} chest"
        ds.private_block(0x0009, "ZYXW vendor", create=True).add_new(0x10, "LO", PRIVATE_VALUE)
        target = folder / f"{patient['PatientName'].replace('^', '_')}_{patient['PatientID']}_{n:03d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        path.unlink()
        named.append(target)
    return named


def _zip(paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in paths:
            zf.write(p, p.name)
    return buf.getvalue()


def _upload(api: Api, paths: list[Path], name: str) -> dict[str, object]:
    r = api.clients["annotator"].post(
        "/api/v1/cases", files=[("files", (name, _zip(paths)))], data={"segment": "false"}
    )
    assert r.status_code == 202, r.text
    return api.clients["viewer"].get(f"/api/v1/cases/{r.json()['case_id']}").json()


def _stored(api: Api, case_id: str) -> list[Path]:
    return sorted(p for p in api.store.path(f"cases/{case_id}").rglob("*") if p.is_file())


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _source_datasets(api: Api, case_id: str) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in _stored(api, case_id) if p.suffix == ".dcm"]


def _source_and_mask(api: Api, case: dict[str, object]) -> tuple[DicomSource, np.ndarray]:
    """The case's DICOM source (as the writers get it) and a small box mask on its grid."""
    from backend.services.dicom_outputs import source_for_case

    with session_scope(api.settings.resolved_database_url) as session:
        row = session.get(Case, str(case["case_id"]))
        assert row is not None
        source = source_for_case(api.settings, api.store, row)
    mask = np.zeros(tuple(case["shape"]), dtype=np.uint8)  # type: ignore[arg-type]
    mask[3:8, 3:7, 1:3] = 1
    return source, mask


def test_a_named_series_is_stored_de_identified(on: Api, tmp_path: Path) -> None:
    paths = _named_series(tmp_path / "a", PATIENT_A)
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    case = _upload(on, paths, "Qwxzvb_Ylmnopr.zip")
    case_id = str(case["case_id"])
    stored = _source_datasets(on, case_id)
    assert len(stored) == len(paths)
    for path in _stored(on, case_id):  # no identifier anywhere in the case folder: content or file names
        data = _content(path)
        assert not [n for n in _needles(PATIENT_A) if n in data or n.decode() in str(path)], path.name
    pseudonym = case["pseudonym"]
    assert isinstance(pseudonym, str) and pseudonym.startswith("DSG-")
    for ds in stored:
        assert ds.PatientName.family_name == pseudonym and ds.PatientID == pseudonym
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientBirthDate == "" and ds.AccessionNumber == ""
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    assert {ds.SOPInstanceUID for ds in stored} == {ds.SOPInstanceUID for ds in originals}
    assert {(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) for ds in stored} == {
        (originals[0].StudyInstanceUID, originals[0].SeriesInstanceUID, originals[0].FrameOfReferenceUID)
    }
    assert case["study_uid"] == originals[0].StudyInstanceUID
    assert case["original_name"] is None and case["series_description"] is None
    assert not [n for n in _needles(PATIENT_A) if n.decode() in str(case)]


def test_the_pseudonym_is_stable_per_patient(on: Api, tmp_path: Path) -> None:
    first = _upload(on, _named_series(tmp_path / "a1", PATIENT_A, seed=1), "a1.zip")
    again = _upload(on, _named_series(tmp_path / "a2", PATIENT_A, seed=2), "a2.zip")
    other = _upload(on, _named_series(tmp_path / "b", PATIENT_B, seed=3), "b.zip")
    assert first["series_uid"] != again["series_uid"]
    assert first["pseudonym"] == again["pseudonym"] != other["pseudonym"]
    assert _source_datasets(on, str(other["case_id"]))[0].PatientID == other["pseudonym"]


def test_the_identity_endpoint_is_admin_only_and_audited(on: Api, tmp_path: Path) -> None:
    case_id = str(_upload(on, _named_series(tmp_path / "a", PATIENT_A), "a.zip")["case_id"])
    url = f"/api/v1/cases/{case_id}/identity"
    assert on.clients["viewer"].get(url).status_code == 403
    assert on.clients["annotator"].get(url).status_code == 403
    admin = on.clients["admin"]
    r = admin.get(url)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["case_id"] == case_id and body["pseudonym"].startswith("DSG-")
    ids = body["identifiers"]
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "OtherPatientIDs",
        "InstitutionName",
        "ReferringPhysicianName",
        "StudyID",
    ):
        assert ids[keyword] == PATIENT_A[keyword], keyword
    assert ids["SeriesDescription"] == "Qwxzvb chest"
    with session_scope(on.settings.resolved_database_url) as session:  # encrypted at rest
        row = session.get(CaseIdentity, case_id)
        assert row is not None and not [n for n in _needles(PATIENT_A) if n.decode() in row.identifiers]
    events = admin.get("/api/v1/audit", params={"action": "case.identity_read"}).json()["items"]
    assert [(e["actor"], e["resource_type"], e["resource_id"]) for e in events] == [
        ("deid-admin", "case", case_id)
    ]
    audit_text = admin.get("/api/v1/audit", params={"limit": 1000}).text
    assert not [n for n in _needles(PATIENT_A) if n.decode() in audit_text]
    upload = admin.get("/api/v1/audit", params={"action": "case.upload"}).json()["items"][0]
    assert upload["details"]["deidentified"] is True
    assert admin.delete(f"/api/v1/cases/{case_id}").status_code == 204
    with session_scope(on.settings.resolved_database_url) as session:
        assert session.get(CaseIdentity, case_id) is None
    assert admin.get(url).status_code == 404


def test_with_the_setting_off_nothing_changes(tmp_path: Path) -> None:
    api = _api(tmp_path, deidentify=False)
    paths = _named_series(tmp_path / "a", PATIENT_A)
    case = _upload(api, paths, "Qwxzvb_Ylmnopr.zip")
    stored = _source_datasets(api, str(case["case_id"]))
    assert {str(ds.PatientName) for ds in stored} == {PATIENT_A["PatientName"]}
    assert {ds.PatientID for ds in stored} == {PATIENT_A["PatientID"]}
    assert all(ds.PatientBirthDate == PATIENT_A["PatientBirthDate"] for ds in stored)
    assert all("PatientIdentityRemoved" not in ds and any(e.tag.is_private for e in ds) for ds in stored)
    assert case["pseudonym"] is None and case["original_name"] == "Qwxzvb_Ylmnopr.zip"
    assert case["series_description"] == "Qwxzvb chest"
    r = api.clients["admin"].get(f"/api/v1/cases/{case['case_id']}/identity")
    assert r.status_code == 404


def test_nifti_header_text_is_cleared(on: Api, tmp_path: Path) -> None:
    image, _ = blob_volume((10, 8, 6), seed=4)
    img = nib.Nifti1Image(image.astype(np.int16), oblique_affine())
    img.header["descrip"], img.header["aux_file"] = b"Qwxzvb^Ylmnopr 1941", b"PID-4417-QQZ"
    img.header["intent_name"], img.header["db_name"] = b"Ylmnopr", b"ACC-99817"
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"patient Qwxzvb"))
    img.header.set_slope_inter(0.5, -3.0)
    path = tmp_path / "Qwxzvb_Ylmnopr.nii.gz"
    nib.save(img, str(path))
    img = nib.load(str(path))
    expected = img.get_fdata()
    assert img.header["descrip"].item().startswith(b"Qwxzvb") and len(img.header.extensions) == 1
    r = on.clients["annotator"].post(
        "/api/v1/cases", files=[("files", (path.name, path.read_bytes()))], data={"segment": "false"}
    )
    assert r.status_code == 202, r.text
    case_id = r.json()["case_id"]
    sources = [p for p in _stored(on, case_id) if "/source/" in p.as_posix()]
    assert [p.name for p in sources] == ["000000.nii.gz"]
    out = nib.load(str(sources[0]))
    assert [out.header[f].item() for f in deid.NIFTI_TEXT_FIELDS] == [b""] * 4
    assert len(out.header.extensions) == 0
    np.testing.assert_array_equal(out.get_fdata(), expected)
    assert (out.dataobj.slope, out.dataobj.inter, out.get_data_dtype()) == (0.5, -3.0, np.int16)
    np.testing.assert_allclose(out.affine, img.affine)
    assert not [n for n in _needles(PATIENT_A) for p in _stored(on, case_id) if n in _content(p)]
    case = on.clients["viewer"].get(f"/api/v1/cases/{case_id}").json()
    assert case["original_name"] is None and case["pseudonym"] is None
    assert on.clients["admin"].get(f"/api/v1/cases/{case_id}/identity").status_code == 404


def test_dicom_outputs_and_a_seg_correction_stay_de_identified(on: Api, tmp_path: Path) -> None:
    from backend.imaging.dicom_series import read_dicom_series
    from backend.imaging.pmap import build_entropy_pmap
    from backend.imaging.seg import build_seg

    paths = _named_series(tmp_path / "a", PATIENT_A)
    case = _upload(on, paths, "a.zip")
    case_id, pseudonym = str(case["case_id"]), case["pseudonym"]
    source, mask = _source_and_mask(on, case)
    seg = build_seg(mask, source, LA_CLASSES, model_version="t", uid_seed="job")
    pm = build_entropy_pmap(mask.astype(np.float32) / 2, source, model_version="t", uid_seed="job")
    for out in (seg, pm):  # derived objects carry the pseudonym and reference the real study and series
        assert out.PatientID == pseudonym and out.StudyInstanceUID == case["study_uid"]
        assert out.ReferencedSeriesSequence[0].SeriesInstanceUID == case["series_uid"]
    # a SEG made on the identified images (e.g. in a viewer on the PACS) comes back as a correction
    original = read_dicom_series([str(p) for p in paths]).dicom
    assert original is not None
    named_seg = build_seg(
        mask, original, LA_CLASSES, model_version="t", uid_seed="viewer", algorithm_type="MANUAL"
    )
    assert named_seg.PatientID == PATIENT_A["PatientID"]
    seg_path = tmp_path / "Qwxzvb_seg.dcm"
    named_seg.save_as(seg_path, enforce_file_format=True)
    r = on.clients["annotator"].put(
        f"/api/v1/cases/{case_id}/correction", files={"file": (seg_path.name, seg_path.read_bytes())}
    )
    assert r.status_code == 201, r.text
    stored_seg = on.store.path(f"cases/{case_id}/corrections/{r.json()['correction_id']}.seg.dcm")
    ds = pydicom.dcmread(stored_seg)
    assert ds.PatientID == pseudonym and ds.PatientIdentityRemoved == "YES"
    assert not [n for n in _needles(PATIENT_A) if n in stored_seg.read_bytes()]


def test_de_identified_instances_and_their_outputs_are_valid_dicom(on: Api, tmp_path: Path) -> None:
    from backend.imaging.pmap import build_entropy_pmap
    from backend.imaging.seg import build_seg
    from tests.backend.imaging.conftest import run_dciodvfy

    paths = _named_series(tmp_path / "a", PATIENT_A)
    before = {line for p in paths for line in run_dciodvfy(p)[0]}  # the test writer's own DS rounding
    case = _upload(on, paths, "a.zip")
    case_id = str(case["case_id"])
    stored = [p for p in _stored(on, case_id) if p.suffix == ".dcm"]
    assert not {line for p in stored for line in run_dciodvfy(p)[0]} - before
    source, mask = _source_and_mask(on, case)
    seg_path, pm_path = tmp_path / "seg.dcm", tmp_path / "pm.dcm"
    build_seg(mask, source, LA_CLASSES, model_version="t").save_as(seg_path, enforce_file_format=True)
    build_entropy_pmap(mask.astype(np.float32) / 2, source, model_version="t").save_as(
        pm_path, enforce_file_format=True
    )
    for path in (seg_path, pm_path):
        errors, _ = run_dciodvfy(path)
        assert errors == [], (path.name, errors)
