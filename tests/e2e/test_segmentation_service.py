"""The segmentation service through HTTP with real API and worker processes, on the embedded default
(SQLite + filesystem broker) and on PostgreSQL + Redis."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.helpers import (
    LiveStack,
    blob_volume,
    make_tiny_package,
    oblique_affine,
    write_dicom_series,
    write_nifti,
)


@pytest.fixture(scope="module", params=["embedded", "postgres_redis"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp(request.param)
    db = broker = None
    cleanup = None
    if request.param == "postgres_redis":
        import redis as redis_lib

        from tests.conftest import REDIS_URL, _unavailable, create_database

        db, cleanup = create_database("dualseg_e2e")
        broker = REDIS_URL.rsplit("/", 1)[0] + "/14"
        try:
            redis_lib.Redis.from_url(broker, socket_connect_timeout=2).flushdb()
        except Exception as exc:  # noqa: BLE001
            cleanup()
            _unavailable("Redis", exc)
    s = LiveStack(tmp / "var", database_url=db, broker_url=broker)
    pkg = make_tiny_package(tmp / "pkg", version="tiny-e2e-1")
    out = s.cli("models", "import", str(pkg), "--activate")
    assert "imported tiny-e2e-1" in out.stdout, out.stderr
    s.start("api", "worker")
    yield s
    s.stop()
    if cleanup:
        cleanup()


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    image, _ = blob_volume((40, 36, 24), seed=3)
    image = (np.round(image * 2) / 2).astype(np.float32)  # representable exactly in DICOM (slope 0.5)
    return image, oblique_affine()


@pytest.fixture
def client(stack: LiveStack) -> Iterator[httpx.Client]:
    with stack.client("admin") as c:
        yield c


def _upload(client: httpx.Client, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    return client.post("/api/v1/cases", files=[("files", (n, b)) for n, b in files], data=form)


def _nifti_bytes(tmp_path: Path, image: np.ndarray, affine: np.ndarray) -> bytes:
    return write_nifti(tmp_path / "in.nii.gz", image, affine).read_bytes()


def _zip(paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, f"{p.parent.name}/{p.name}")
    return buf.getvalue()


def _segment(stack: LiveStack, client: httpx.Client, files: list[tuple[str, bytes]],
             **form: str) -> dict[str, Any]:
    r = _upload(client, files, **form)
    assert r.status_code == 202, r.text
    body = r.json()
    job = stack.wait_job(client, body["job_id"])
    assert job["state"] == "succeeded", (job["error"], stack.log_tail("worker"))
    return body


def _nifti_from(resp: httpx.Response, tmp_path: Path, name: str) -> nib.Nifti1Image:
    p = tmp_path / name
    p.write_bytes(resp.content)
    return nib.load(str(p))


def test_nifti_upload_to_every_artifact(stack: LiveStack, client: httpx.Client, volume: Any,
                                        tmp_path: Path) -> None:
    image, affine = volume
    body = _segment(stack, client, [("phantom.nii.gz", _nifti_bytes(tmp_path, image, affine))])
    cid = body["case_id"]
    case = client.get(f"/api/v1/cases/{cid}").json()
    assert case["shape"] == [40, 36, 24] and case["source_format"] == "nifti"
    assert case["latest_job"]["state"] == "succeeded" and case["latest_job"]["progress"] == 100
    assert case["model_version"] == "tiny-e2e-1"
    assert {a["kind"] for a in case["artifacts"]} >= {"mask_nifti", "entropy_nifti", "regions_json",
                                                      "seg_dicom", "pm_dicom"}
    timings = case["latest_job"]["timings"]
    assert timings["total"] > 0 and "predict_inference" in timings

    r = client.get(f"/api/v1/cases/{cid}/mask", params={"format": "nifti"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert int(r.headers["content-length"]) == len(r.content)
    assert f'{cid}_mask.nii.gz' in r.headers["content-disposition"]
    etag = r.headers["etag"]
    assert client.get(f"/api/v1/cases/{cid}/mask", headers={"If-None-Match": etag}).status_code == 304
    mask_img = _nifti_from(r, tmp_path, "mask.nii.gz")
    assert mask_img.shape == image.shape
    np.testing.assert_allclose(mask_img.affine, affine, atol=1e-5)
    assert mask_img.get_data_dtype() == np.uint8
    mask = np.asarray(mask_img.dataobj)
    assert set(np.unique(mask)) <= {0, 1}

    ent_img = _nifti_from(client.get(f"/api/v1/cases/{cid}/uncertainty"), tmp_path, "ent.nii.gz")
    np.testing.assert_allclose(ent_img.affine, affine, atol=1e-5)
    ent = np.asarray(ent_img.dataobj, dtype=np.float32)
    assert ent.dtype == np.float32 and 0.0 <= ent.min() and ent.max() <= 1.0 and ent.max() > 0

    regions = client.get(f"/api/v1/cases/{cid}/regions").json()
    assert regions["case_id"] == cid and regions["model"]["version"] == "tiny-e2e-1"
    for i, reg in enumerate(regions["regions"], start=1):
        assert reg["rank"] == i
        lo, hi = reg["bbox_voxel"]["min"], reg["bbox_voxel"]["max"]
        assert all(0 <= a <= b < n for a, b, n in zip(lo, hi, image.shape, strict=True))
    masses = [r["entropy_mass"] for r in regions["regions"]]
    assert masses == sorted(masses, reverse=True)

    img = client.get(f"/api/v1/cases/{cid}/image")
    np.testing.assert_allclose(_nifti_from(img, tmp_path, "img.nii.gz").get_fdata(), image, atol=1e-4)

    png = client.get(f"/api/v1/cases/{cid}/uncertainty",
                     params={"format": "png", "axis": "axial", "slice": 5})
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/api/v1/cases/{cid}/uncertainty",
                      params={"format": "png", "slice": 999}).status_code == 422
    montage = client.get(f"/api/v1/cases/{cid}/uncertainty", params={"format": "png", "tiles": 4})
    assert montage.status_code == 200 and montage.headers["content-type"] == "image/png"

    for fmt, path in (("dicom-seg", "mask"), ("dicom-pm", "uncertainty")):
        r = client.get(f"/api/v1/cases/{cid}/{path}", params={"format": fmt})
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
        out = tmp_path / f"{fmt}.dcm"
        out.write_bytes(r.content)
        _check_dicom(out, fmt, mask, ent)


def _check_dicom(path: Path, fmt: str, mask: np.ndarray, ent: np.ndarray) -> None:
    import highdicom as hd
    import pydicom

    ds = pydicom.dcmread(path)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    if fmt == "dicom-seg":
        seg = hd.seg.segread(path)
        assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "82471001"
        assert int(seg.NumberOfFrames) <= mask.shape[2]
    else:
        pm = hd.pm.ParametricMap.from_dataset(ds) if hasattr(hd.pm.ParametricMap, "from_dataset") else ds
        assert float(np.asarray(ds.pixel_array).max()) <= 1.0 + 1e-6
        assert int(ds.NumberOfFrames) == ent.shape[2]
        del pm
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors


def test_dicom_zip_gives_the_same_mask_as_nifti(stack: LiveStack, client: httpx.Client, volume: Any,
                                                tmp_path: Path) -> None:
    image, affine = volume
    a = _segment(stack, client, [("v.nii.gz", _nifti_bytes(tmp_path, image, affine))])
    files = write_dicom_series(tmp_path / "dcm", image, affine, modality="MR", shuffle_names=True)
    b = _segment(stack, client, [("series.zip", _zip(files))])
    case_b = client.get(f"/api/v1/cases/{b['case_id']}").json()
    assert case_b["source_format"] == "dicom" and case_b["modality"] == "MR" and case_b["num_files"] == 24
    mask_a = _nifti_from(client.get(f"/api/v1/cases/{a['case_id']}/mask"), tmp_path, "a.nii.gz")
    mask_b = _nifti_from(client.get(f"/api/v1/cases/{b['case_id']}/mask"), tmp_path, "b.nii.gz")
    np.testing.assert_allclose(mask_b.affine, affine, atol=1e-4)
    # geometry round trip: voxel (i, j, k) of the mask sits at the same patient point as in the source
    ijk = np.array([7, 11, 13, 1.0])
    np.testing.assert_allclose(mask_b.affine @ ijk, affine @ ijk, atol=1e-3)
    agree = float((np.asarray(mask_a.dataobj) == np.asarray(mask_b.dataobj)).mean())
    assert agree == 1.0, agree
    seg = client.get(f"/api/v1/cases/{b['case_id']}/mask", params={"format": "dicom-seg"})
    (tmp_path / "seg.dcm").write_bytes(seg.content)
    import pydicom

    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert ds.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case_b["series_uid"]
    _check_dicom(tmp_path / "seg.dcm", "dicom-seg", np.asarray(mask_b.dataobj), np.zeros(0))


def test_multi_series_zip_lists_series_and_picks_one(stack: LiveStack, client: httpx.Client, volume: Any,
                                                     tmp_path: Path) -> None:
    image, affine = volume
    s1 = write_dicom_series(tmp_path / "s1", image[:, :, :8], affine,
                            series_uid="1.2.826.0.1.3680043.8.498.11")
    s2 = write_dicom_series(tmp_path / "s2", image[:, :, :6], affine,
                            series_uid="1.2.826.0.1.3680043.8.498.22")
    before = client.get("/api/v1/cases").json()["total"]
    r = _upload(client, [("study.zip", _zip(s1 + s2))])
    assert r.status_code == 422
    err = r.json()["error"]
    assert "series_uid" in err["message"]
    uids = {s["series_uid"] for s in err["details"]["series"]}
    assert uids == {"1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.22"}
    assert client.get("/api/v1/cases").json()["total"] == before
    r = _upload(client, [("study.zip", _zip(s1 + s2))], series_uid="1.2.826.0.1.3680043.8.498.22",
                segment="false")
    assert r.status_code == 202 and r.json()["job_id"] is None
    case = client.get(f"/api/v1/cases/{r.json()['case_id']}").json()
    assert case["shape"] == [40, 36, 6] and case["latest_job"] is None


def test_bad_uploads_get_4xx_and_leave_nothing(stack: LiveStack, client: httpx.Client,
                                               tmp_path: Path) -> None:
    before = client.get("/api/v1/cases").json()["total"]
    assert _upload(client, [("x.nii.gz", b"\x1f\x8b\x08garbage")]).status_code == 422
    assert _upload(client, [("x.dcm", b"not dicom at all" * 10)]).status_code == 422
    assert client.post("/api/v1/cases").status_code == 422
    bad2d = write_nifti(tmp_path / "flat.nii.gz", np.zeros((5, 5), np.float32), np.eye(4))
    r = _upload(client, [("flat.nii.gz", bad2d.read_bytes())])
    assert r.status_code == 422
    assert "is a 2D image" in r.json()["error"]["message"]
    assert client.get("/api/v1/cases").json()["total"] == before
    incoming = stack.env["DUALSEG_DATA_DIR"] + "/artifacts/.incoming"
    assert list(Path(incoming).iterdir()) == []
    assert client.get("/api/v1/cases/nope").status_code == 404
    assert client.get("/api/v1/jobs/nope").status_code == 404


def test_worklist_jobs_and_resegment(stack: LiveStack, client: httpx.Client, volume: Any,
                                     tmp_path: Path) -> None:
    image, affine = volume
    a = _segment(stack, client, [("a.nii.gz", _nifti_bytes(tmp_path, image, affine))])
    noisy = image + np.random.default_rng(1).normal(0, 60, image.shape).astype(np.float32)
    b = _segment(stack, client, [("b.nii.gz", _nifti_bytes(tmp_path, noisy, affine))])
    listing = client.get("/api/v1/cases",
                         params={"sort": "uncertainty", "state": "succeeded", "limit": 500}).json()
    scores = [c["uncertainty"]["score"] for c in listing["items"]]
    assert scores == sorted(scores, reverse=True) and all(s is not None for s in scores)
    assert {a["case_id"], b["case_id"]} <= {c["case_id"] for c in listing["items"]}
    page = client.get("/api/v1/cases", params={"limit": 1, "offset": 1}).json()
    assert len(page["items"]) == 1 and page["total"] >= 2
    done = client.delete(f"/api/v1/jobs/{a['job_id']}")
    assert done.status_code == 409
    r = client.post(f"/api/v1/cases/{a['case_id']}/segmentations", json={"model_version": "tiny-e2e-1"})
    assert r.status_code == 202
    job2 = stack.wait_job(client, r.json()["job_id"])
    assert job2["state"] == "succeeded" and job2["model_version"] == "tiny-e2e-1"
    assert client.post(f"/api/v1/cases/{a['case_id']}/segmentations",
                       json={"model_version": "no-such"}).status_code == 404
    assert client.delete(f"/api/v1/cases/{b['case_id']}").status_code == 204
    assert client.get(f"/api/v1/cases/{b['case_id']}").status_code == 404
    assert json.loads(client.get("/openapi.json").text)["paths"]["/api/v1/cases"]["post"]


def test_corrections_nifti_and_seg_round_trip(stack: LiveStack, client: httpx.Client, volume: Any,
                                              tmp_path: Path) -> None:
    image, affine = volume
    files = write_dicom_series(tmp_path / "dcm", image, affine, modality="MR")
    body = _segment(stack, client, [("series.zip", _zip(files))])
    cid = body["case_id"]
    mask = np.asarray(_nifti_from(client.get(f"/api/v1/cases/{cid}/mask"), tmp_path, "m.nii.gz").dataobj)
    entropy = np.asarray(
        _nifti_from(client.get(f"/api/v1/cases/{cid}/uncertainty"), tmp_path, "e.nii.gz").dataobj)
    corrected = mask.copy()
    corrected[10:14, 10:14, 5:8] = 1 - corrected[10:14, 10:14, 5:8]  # flip a 4x4x3 block
    path = write_nifti(tmp_path / "corr.nii.gz", corrected.astype(np.uint8), affine)
    r = client.put(f"/api/v1/cases/{cid}/correction", files={"file": ("corr.nii.gz", path.read_bytes())})
    assert r.status_code == 201, r.text
    stats = r.json()["stats"]
    changed = mask != corrected
    assert stats["voxels_changed"] == 48 == int(changed.sum())
    assert stats["voxels_added"] == int(((corrected > 0) & (mask == 0)).sum())
    assert stats["voxels_removed"] == int(((mask > 0) & (corrected == 0)).sum())
    inter = int(((mask > 0) & (corrected > 0)).sum())
    assert stats["dice"] == pytest.approx(2 * inter / (int((mask > 0).sum()) + int((corrected > 0).sum())))
    assert stats["changed_in_flagged_share"] == pytest.approx(float((entropy[changed] >= 0.5).mean()))
    assert r.json()["model_version"] == "tiny-e2e-1" and r.json()["author"] == "tests-admin"

    # our own SEG sent back as a correction reproduces the mask exactly
    seg = client.get(f"/api/v1/cases/{cid}/mask", params={"format": "dicom-seg"}).content
    r = client.put(f"/api/v1/cases/{cid}/correction", files={"file": ("seg.dcm", seg)})
    assert r.status_code == 201, r.text
    assert r.json()["stats"]["voxels_changed"] == 0 and r.json()["source_format"] == "dicom-seg"
    history = client.get(f"/api/v1/cases/{cid}/corrections").json()
    assert [h["source_format"] for h in history] == ["dicom-seg", "nifti"]

    wrong_grid = write_nifti(tmp_path / "wg.nii.gz", corrected[:-1].astype(np.uint8), affine)
    r = client.put(f"/api/v1/cases/{cid}/correction", files={"file": ("wg.nii.gz", wrong_grid.read_bytes())})
    assert r.status_code == 422 and "grid" in r.json()["error"]["message"]
    out_of_range = write_nifti(tmp_path / "oor.nii.gz", (corrected * 7).astype(np.uint8), affine)
    r = client.put(f"/api/v1/cases/{cid}/correction", files={"file": ("o.nii.gz", out_of_range.read_bytes())})
    assert r.status_code == 422 and "0..1" in r.json()["error"]["message"]
    assert len(client.get(f"/api/v1/cases/{cid}/corrections").json()) == 2

    stats = client.get("/api/v1/models/tiny-e2e-1/stats").json()
    assert stats["corrections"] >= 2 and stats["dice"]["n"] >= 2
    models = client.get("/api/v1/models").json()
    assert [m["state"] for m in models if m["version"] == "tiny-e2e-1"] == ["active"]
    viewer = stack.client("viewer")
    assert viewer.put(f"/api/v1/cases/{cid}/correction",
                      files={"file": ("c.nii.gz", path.read_bytes())}).status_code == 403


def test_out_of_distribution_case_is_flagged_everywhere(stack: LiveStack, client: httpx.Client, volume: Any,
                                                       tmp_path: Path) -> None:
    """A package whose reference lies far from this volume flags it on the job, the case, the regions JSON
    and the worklist (first, although its entropy is low)."""
    from models.inference.ood import FEATURES, fit_reference

    far = fit_reference([{f: 50.0 + i for f in FEATURES} for i in range(3)])
    pkg = make_tiny_package(tmp_path / "pkg-ood", version="tiny-ood-1", ood_reference=far)
    assert "imported tiny-ood-1" in stack.cli("models", "import", str(pkg)).stdout
    image, affine = volume
    done = _segment(stack, client, [("ood.nii.gz", _nifti_bytes(tmp_path, image, affine))],
                    model_version="tiny-ood-1")
    job = client.get(f"/api/v1/jobs/{done['job_id']}").json()
    assert job["uncertainty"]["out_of_distribution"] is True and job["uncertainty"]["ood_score"] > 0.5
    case = client.get(f"/api/v1/cases/{done['case_id']}").json()
    assert case["uncertainty"]["out_of_distribution"] is True
    assert "unlike the model's training data" in case["uncertainty"]["ood_reason"]
    regions = client.get(f"/api/v1/cases/{done['case_id']}/regions").json()
    assert regions["reliability"]["region_ranking_reliable"] is False and regions["reliability"]["note"]
    first = client.get("/api/v1/cases", params={"sort": "uncertainty", "limit": 1}).json()["items"][0]
    assert first["case_id"] == done["case_id"]
    plain = client.get("/api/v1/cases", params={"sort": "uncertainty", "limit": 500}).json()["items"]
    others = [c for c in plain if c["case_id"] != done["case_id"] and c["uncertainty"]["score"] is not None]
    assert all(c["uncertainty"]["out_of_distribution"] is None for c in others)  # tiny-e2e-1 has no reference
