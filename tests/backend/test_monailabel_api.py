"""The MONAI Label protocol in-process, without a worker: bounded inference wait (504), bad input in MONAI
Label's error shape changing nothing, training start / status / stop, and the NRRD geometry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import session_scope
from backend.imaging.nrrd import read_nrrd, write_nrrd
from backend.main import create_app
from backend.migrations import run_migrations
from backend.security import create_token
from backend.services import registry
from backend.tables import Role
from tests.helpers import blob_volume, make_tiny_package, oblique_affine, write_nifti

Env = tuple[TestClient, dict[str, dict[str, str]], Path]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("ml")
    s = Settings(data_dir=tmp / "var", secret_key="monailabel-secret-0123456789", monailabel_infer_wait_s=1)
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    headers = {}
    with session_scope(s.resolved_database_url) as session:
        package = make_tiny_package(tmp / "pkg", version="tiny-ml-unit")
        registry.import_package(session, s, package, activate=True)
        for role in Role:
            token, _ = create_token(session, s.secret_key, f"ml-{role.value}", role)
            headers[role.value] = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(s)) as client:
        yield client, headers, tmp


def _upload(client: TestClient, headers: dict[str, str], tmp: Path, name: str) -> str:
    image, _ = blob_volume((40, 36, 24))
    src = write_nifti(tmp / f"{name}.nii.gz", image, oblique_affine())
    r = client.put("/monailabel/datastore/", params={"image": name}, headers=headers,
                   files={"file": (src.name, src.read_bytes())}, data={"params": "{}"})
    assert r.status_code == 200, r.text
    return str(r.json()["image"])


def test_infer_waits_bounded_then_504(env: Env) -> None:
    client, h, tmp = env
    case_id = _upload(client, h["annotator"], tmp, "vol-wait")
    case = client.get(f"/api/v1/cases/{case_id}", headers=h["viewer"]).json()
    assert case["latest_job"]["state"] == "queued" and case["latest_job"]["model_version"] == "tiny-ml-unit"
    r = client.post("/monailabel/infer/dualseg", params={"image": "vol-wait"}, headers=h["annotator"])
    assert r.status_code == 504
    detail = r.json()["detail"]
    assert "still queued" in detail and "after 1 s" in detail and case["latest_job"]["job_id"] in detail
    # no second job: the same queued one is waited for
    r = client.post("/monailabel/infer/dualseg_uncertainty", params={"image": case_id},
                    headers=h["annotator"])
    assert r.status_code == 504 and case["latest_job"]["job_id"] in r.json()["detail"]
    # MONAI Label's "infer on a file": the file becomes a case (one intake), its job is waited for
    total = client.get("/monailabel/datastore/", headers=h["viewer"]).json()["total"]
    src = tmp / "vol-wait.nii.gz"
    r = client.post("/monailabel/infer/dualseg", headers=h["annotator"], data={"params": "{}"},
                    files={"file": (src.name, src.read_bytes())})
    assert r.status_code == 504 and "still queued" in r.json()["detail"]
    assert client.get("/monailabel/datastore/", headers=h["viewer"]).json()["total"] == total + 1


def test_bad_input_is_4xx_in_monailabel_shape_and_changes_nothing(
    env: Env,
) -> None:
    client, h, tmp = env
    case_id = _upload(client, h["annotator"], tmp, "vol-bad")
    before: dict[str, Any] = client.get("/monailabel/datastore/", headers=h["viewer"]).json()
    r = client.put("/monailabel/datastore/", headers=h["annotator"], files={"file": ("x.nii.gz", b"junk")})
    assert r.status_code == 422 and "not a readable NIfTI" in r.json()["detail"]
    r = client.put("/monailabel/datastore/", headers=h["viewer"], files={"file": ("x.nii.gz", b"junk")})
    assert r.status_code == 403 and "annotator" in r.json()["detail"]
    r = client.post("/monailabel/infer/dualseg", params={"image": case_id}, headers=h["annotator"],
                    data={"params": "{not json"})
    assert r.status_code == 422 and "'params' is not valid JSON" in r.json()["detail"]
    r = client.post("/monailabel/infer/deepedit", params={"image": case_id}, headers=h["annotator"])
    assert r.status_code == 404 and "dualseg_uncertainty" in r.json()["detail"]
    r = client.get("/monailabel/datastore/", params={"output": "everything"}, headers=h["viewer"])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "output"]
    r = client.post("/monailabel/activelearning/first", headers=h["viewer"], json={})
    assert r.status_code == 404 and "uncertainty" in r.json()["detail"]
    r = client.get("/monailabel/datastore/label", params={"label": case_id, "tag": "final"},
                   headers=h["viewer"])
    assert r.status_code == 404 and "no final label" in r.json()["detail"]
    label = write_nifti(tmp / "lab.nii.gz", np.zeros((40, 36, 24), np.uint8), oblique_affine())
    r = client.put("/monailabel/datastore/label", params={"image": case_id, "tag": "original"},
                   headers=h["annotator"], files={"label": (label.name, label.read_bytes())})
    assert r.status_code == 422 and "final" in r.json()["detail"]
    r = client.put("/monailabel/datastore/label", params={"image": case_id}, headers=h["annotator"],
                   files={"label": ("lab.txt", b"0 1 0")})
    assert r.status_code == 422 and "NRRD" in r.json()["detail"]
    r = client.get("/monailabel/datastore/image", params={"image": "nope"}, headers=h["viewer"])
    assert r.status_code == 404 and r.json() == {"detail": "image nope does not exist"}
    assert client.get("/monailabel/datastore/", headers=h["viewer"]).json() == before


def test_train_start_status_stop(env: Env) -> None:
    client, h, _ = env
    r = client.get("/monailabel/train/", params={"check_if_running": "true"}, headers=h["viewer"])
    assert r.status_code == 404 and r.json() == {"detail": "no training run is running"}
    assert client.post("/monailabel/train/dualseg", headers=h["annotator"], json={}).status_code == 403
    r = client.post("/monailabel/train/other", headers=h["admin"], json={})
    assert r.status_code == 404 and "dualseg" in r.json()["detail"]
    r = client.post("/monailabel/train/dualseg", headers=h["admin"], json={"dualseg": {"iterations": 0}})
    assert r.status_code == 422 and "iterations" in r.json()["detail"]
    r = client.post("/monailabel/train/dualseg", headers=h["admin"], json={"dualseg": {"iterations": 5}})
    assert r.status_code == 200 and r.json()["status"] == "RUNNING" and r.json()["state"] == "queued"
    run_id = r.json()["id"]
    run = client.get(f"/api/v1/training-runs/{run_id}", headers=h["viewer"]).json()
    assert run["trigger"] == "monailabel" and run["total_iterations"] in (None, 5)
    r = client.post("/monailabel/train/dualseg", headers=h["admin"], json={})
    assert r.status_code == 409 and run_id in r.json()["detail"]
    r = client.get("/monailabel/train/", params={"check_if_running": "true"}, headers=h["viewer"])
    assert r.status_code == 200 and r.json()["id"] == run_id
    stopped = client.delete("/monailabel/train/", headers=h["admin"]).json()
    assert stopped["id"] == run_id and stopped["status"] == "STOPPED"
    r = client.get("/monailabel/train/", params={"check_if_running": "true"}, headers=h["viewer"])
    assert r.status_code == 404
    assert client.get("/monailabel/train/", headers=h["viewer"]).json()["status"] == "STOPPED"
    assert client.delete("/monailabel/train/", headers=h["admin"]).json() == {}


def test_nrrd_keeps_the_grid(tmp_path: Path) -> None:
    affine = oblique_affine()
    labels = (np.arange(5 * 4 * 3).reshape(5, 4, 3) % 3).astype(np.uint8)
    path = write_nrrd(tmp_path / "l.nrrd", labels, affine)
    data, back = read_nrrd(path)
    assert data.shape == (5, 4, 3) and np.array_equal(data, labels) and np.allclose(back, affine)
    import nrrd

    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior" and header["type"] == "uint8"
    # LPS: x and y flip sign against the RAS affine
    assert np.allclose(header["space origin"], affine[:3, 3] * np.array([-1, -1, 1]))
    (tmp_path / "bad.nrrd").write_bytes(b"not an nrrd file")
    from backend.imaging.errors import ImagingError

    with pytest.raises(ImagingError, match="not a readable NRRD"):
        read_nrrd(tmp_path / "bad.nrrd")
    # a header must never make the server read another file, nor allocate an absurd volume
    (tmp_path / "detached.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\n"
                                             b"encoding: raw\ndata file: /etc/hostname\n\n")
    with pytest.raises(ImagingError, match="detached"):
        read_nrrd(tmp_path / "detached.nrrd")
    (tmp_path / "huge.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 9000 9000 9000\n"
                                         b"encoding: raw\n\n")
    with pytest.raises(ImagingError, match="at most 1000 voxels"):
        read_nrrd(tmp_path / "huge.nrrd", max_voxels=1000)
