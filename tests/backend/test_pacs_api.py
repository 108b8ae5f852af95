"""/api/v1/pacs in-process (no PACS, no worker): validation, deduplication, reuse of a case, push requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import session_scope
from backend.main import create_app
from backend.migrations import run_migrations
from backend.pacs import pulls
from backend.security import create_token
from backend.storage import ArtifactStore
from backend.tables import Case, Job, ModelState, ModelVersion, Role
from tests.helpers import LA_CLASSES, TINY_GEOMETRY

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.8"


def _app(tmp_path: Path, **kw: object) -> tuple[TestClient, Settings]:
    s = Settings.model_validate({"data_dir": tmp_path / "var", "secret_key": "test-secret-0123456789", **kw})
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    with session_scope(s.resolved_database_url) as session:
        token, _ = create_token(session, s.secret_key, "t-annotator", Role.annotator, None)
    client = TestClient(create_app(s), headers={"Authorization": f"Bearer {token}"})
    return client, s


def _model(s: Settings) -> None:
    with session_scope(s.resolved_database_url) as session:
        session.add(ModelVersion(version="m1", state=ModelState.active, path="/nonexistent", content_hash="0",
                                 card={**TINY_GEOMETRY, "classes": LA_CLASSES}))


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Settings]:
    client, s = _app(tmp_path, pacs_dicomweb_url="http://127.0.0.1:9/dicom-web")
    _model(s)
    return client, s


def test_segment_needs_a_pacs_and_a_model(tmp_path: Path) -> None:
    client, s = _app(tmp_path)
    body = {"study_uid": STUDY, "series_uid": SERIES}
    r = client.post("/api/v1/pacs/segment", json=body)
    assert r.status_code == 409 and r.json()["error"]["code"] == "pacs_not_configured"
    client2, s2 = _app(tmp_path / "b", pacs_dicomweb_url="http://127.0.0.1:9/dicom-web")
    r = client2.post("/api/v1/pacs/segment", json=body)
    assert r.status_code == 422 and "no model is active" in r.json()["error"]["message"]


@pytest.mark.parametrize("body", [
    {"study_uid": "1.2.x", "series_uid": SERIES},
    {"study_uid": STUDY, "series_uid": "../../etc"},
    {"study_uid": STUDY},
    {"study_uid": STUDY, "series_uid": SERIES, "unknown": 1},
    {"study_uid": STUDY, "series_uid": "1." + "2" * 70},
])
def test_segment_rejects_bad_uids(api: tuple[TestClient, Settings], body: dict[str, object]) -> None:
    client, _ = api
    assert client.post("/api/v1/pacs/segment", json=body).status_code == 422


def test_segment_records_one_pull_per_series(api: tuple[TestClient, Settings]) -> None:
    client, s = api
    body = {"study_uid": STUDY, "series_uid": SERIES}
    first = client.post("/api/v1/pacs/segment", json=body)
    assert first.status_code == 202, first.text
    pull_id = first.json()["pull_id"]
    assert first.json()["deduplicated"] is False
    assert first.headers["location"] == f"/api/v1/pacs/pulls/{pull_id}"
    second = client.post("/api/v1/pacs/segment", json=body)
    assert second.status_code == 202 and second.json()["pull_id"] == pull_id and second.json()["deduplicated"]
    got = client.get(f"/api/v1/pacs/pulls/{pull_id}").json()
    assert got["state"] == "queued" and got["study_uid"] == STUDY and got["model_version"] == "m1"
    assert client.get("/api/v1/pacs/pulls/nope..x").status_code == 404
    # the pull task message went to the broker (filesystem broker in data_dir)
    messages = list((s.broker_dir / "in").iterdir())
    assert any("dualseg.pacs.pull" in m.read_text() for m in messages)
    # once the pull is finished a new request makes a new pull
    rec = pulls.load(ArtifactStore(s.resolved_storage_dir), pull_id)
    assert rec is not None
    pulls._finish(ArtifactStore(s.resolved_storage_dir), rec, "failed", "test")
    third = client.post("/api/v1/pacs/segment", json=body)
    assert third.json()["pull_id"] != pull_id


def test_reuse_case_and_push_requests(api: tuple[TestClient, Settings]) -> None:
    client, s = api
    with session_scope(s.resolved_database_url) as session:
        case = Case(source_format="dicom", sha256="0", image_key="x", shape=[64, 64, 40], spacing=[1, 1, 1],
                    affine=np.eye(4).tolist(), study_uid=STUDY, series_uid=SERIES, meta={})
        session.add(case)
        session.flush()
        case_id = case.id
    r = client.post("/api/v1/pacs/segment",
                    json={"study_uid": STUDY, "series_uid": SERIES, "reuse_case": True})
    assert r.status_code == 202 and r.json()["case_id"] == case_id and r.json()["pull_id"] is None
    job_id = r.json()["job_id"]
    with session_scope(s.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.case_id == case_id and job.model_version == "m1"
    # the job has not run: nothing to push yet
    r = client.post(f"/api/v1/pacs/cases/{case_id}/push", json={"what": "result"})
    assert r.status_code == 409
    r = client.post(f"/api/v1/pacs/cases/{case_id}/push", json={"what": "correction"})
    assert r.status_code == 404
    r = client.post(f"/api/v1/pacs/cases/{case_id}/push", json={"target": "forward"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "pacs_not_configured"
    with session_scope(s.resolved_database_url) as session:
        session.get(Job, job_id).state = "succeeded"  # type: ignore[union-attr]
    r = client.post(f"/api/v1/pacs/cases/{case_id}/push", json={"what": "result", "job_id": job_id})
    assert r.status_code == 202, r.text
    assert r.json()["push_id"] == f"job-{job_id}" and r.json()["target"] == "dicomweb"
    assert client.get(f"/api/v1/pacs/pushes/job-{job_id}").json()["state"] == "queued"
    status = client.get("/api/v1/pacs/status").json()
    assert status["dicomweb"]["configured"] and status["dicomweb"]["reachable"] is False
    assert "error" in status["dicomweb"] and "password" not in str(status)
