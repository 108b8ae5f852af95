"""No patient names or IDs in any process log (nor in the audit trail) after an end-to-end run —
upload, segmentation, downloads, a correction, a refused upload — with a DICOM series whose
PatientName / PatientID are distinctive strings, also used in the uploaded file names. Run twice: as
is, and with DUALSEG_DEIDENTIFY_ON_INGEST (then nothing stored for the case, and no DICOM output, holds
them either, and an admin's read of the identity mapping leaves no trace of them in the logs)."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.helpers import (
    LiveStack,
    blob_volume,
    make_tiny_package,
    oblique_affine,
    write_dicom_series,
    write_nifti,
)

pytestmark = pytest.mark.slow
NAME, PID, OTHER = "Zqxwvbrm^Jklmnopt", "PID-7731-XQZK", "OTHERID-5582"
NEEDLES = ("Zqxwvbrm", "Jklmnopt", "PID-7731-XQZK", "7731-XQZK", "OTHERID-5582", "19370412")


@pytest.fixture(scope="module", params=[False, True], ids=["identified", "deidentified"])
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("phi")
    s = LiveStack(tmp / "var", extra_env={"DUALSEG_DEIDENTIFY_ON_INGEST": str(request.param).lower()})
    out = s.cli("models", "import", str(make_tiny_package(tmp / "pkg", version="tiny-phi-1")), "--activate")
    assert "imported" in out.stdout, out.stderr
    s.start("api", "worker")
    yield s
    s.stop()


def _series(folder: Path, image: np.ndarray, affine: np.ndarray, drop_pixels: bool = False) -> bytes:
    paths = write_dicom_series(folder, image, affine, modality="CT")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, p in enumerate(paths):
            ds = pydicom.dcmread(p)
            ds.PatientName, ds.PatientID, ds.OtherPatientIDs = NAME, PID, OTHER
            ds.PatientBirthDate = "19370412"
            if drop_pixels and n == 2:
                del ds.PixelData
            ds.save_as(p, enforce_file_format=True)
            zf.write(p, f"Zqxwvbrm_Jklmnopt/{PID}_{n:03d}.dcm")
    return buf.getvalue()


def test_logs_and_audit_hold_no_patient_identifiers(stack: LiveStack, tmp_path: Path) -> None:
    image, _ = blob_volume((24, 20, 8), seed=7)
    image = np.round(image * 2) / 2
    affine = oblique_affine()
    with stack.client("annotator") as client:
        r = client.post(
            "/api/v1/cases", files=[("files", (f"{NAME}_{PID}.zip", _series(tmp_path / "a", image, affine)))]
        )
        assert r.status_code == 202, r.text
        case_id, job_id = r.json()["case_id"], r.json()["job_id"]
        assert stack.wait_job(client, job_id)["state"] == "succeeded", stack.log_tail("worker")
        downloads = []
        for path, params in (
            ("mask", {}),
            ("mask", {"format": "dicom-seg"}),
            ("uncertainty", {}),
            ("uncertainty", {"format": "dicom-pm"}),
            ("regions", {}),
            ("image", {}),
        ):
            got = client.get(f"/api/v1/cases/{case_id}/{path}", params=params)
            assert got.status_code == 200
            downloads.append(got.content)
        mask = client.get(f"/api/v1/cases/{case_id}/mask")
        (tmp_path / "m.nii.gz").write_bytes(mask.content)
        import nibabel as nib

        m = nib.load(str(tmp_path / "m.nii.gz"))
        fixed = write_nifti(tmp_path / f"{NAME}_fix.nii.gz", np.asarray(m.dataobj).astype(np.uint8), m.affine)
        r = client.put(
            f"/api/v1/cases/{case_id}/correction", files={"file": (f"{PID}.nii.gz", fixed.read_bytes())}
        )
        assert r.status_code == 201, r.text
        bad = client.post(
            "/api/v1/cases",
            files=[("files", (f"{NAME}.zip", _series(tmp_path / "b", image, affine, drop_pixels=True)))],
        )
        assert 400 <= bad.status_code < 500
    deidentified = stack.env["DUALSEG_DEIDENTIFY_ON_INGEST"] == "true"
    if deidentified:
        _assert_case_holds_no_identifiers(stack, case_id, downloads)
    with stack.client("admin") as admin:
        identity = admin.get(f"/api/v1/cases/{case_id}/identity")
        assert identity.status_code == (200 if deidentified else 404), identity.text
        if deidentified:
            assert identity.json()["identifiers"]["PatientID"] == PID
        assert admin.delete(f"/api/v1/cases/{case_id}").status_code == 204
        audit = admin.get("/api/v1/audit", params={"limit": 1000}).text
    actions = {e["action"] for e in admin_json(audit)}
    assert {"case.upload", "case.download", "correction.create", "case.delete"} <= actions, actions
    stack.stop()  # flush and close every log
    logs = sorted(stack.logs.glob("*.log"))
    assert {p.name for p in logs} >= {"api.log", "worker.log"}
    found = []
    for log in logs:
        text = log.read_text(errors="replace")
        assert len(text) > 200, f"{log.name} is suspiciously empty"
        found += [f"{log.name}: {n}" for n in NEEDLES if n.lower() in text.lower()]
    found += [f"audit: {n}" for n in NEEDLES if n.lower() in audit.lower()]
    assert not found, found


def _assert_case_holds_no_identifiers(stack: LiveStack, case_id: str, downloads: list[bytes]) -> None:
    folder = Path(stack.env["DUALSEG_DATA_DIR"]) / "artifacts" / "cases" / case_id
    raw = downloads + [p.read_bytes() for p in folder.rglob("*") if p.is_file()]
    contents = [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in raw]
    found = [n for n in NEEDLES for b in contents if n.lower().encode() in b.lower()]
    names = [str(p) for p in folder.rglob("*") if any(n.lower() in str(p).lower() for n in NEEDLES)]
    assert not found and not names, (found, names)


def admin_json(text: str) -> list[dict[str, object]]:
    import json

    return list(json.loads(text)["items"])
