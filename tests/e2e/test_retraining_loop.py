"""The product loop through HTTP with real processes: upload → segment → correct → retrain → promote →
the next segmentation uses the new version; rollback; one run at a time; the beat schedule."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import LiveStack, blob_volume, make_tiny_package, oblique_affine, write_nifti


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("retrain")
    s = LiveStack(tmp / "var", extra_env={
        "DUALSEG_RETRAIN_PRESET": "tiny", "DUALSEG_RETRAIN_ITERATIONS": "3",
        "DUALSEG_RETRAIN_VAL_PERCENT": "50",
        # a generous gate: this test is about the loop; the gate itself is tested both ways in tests/worker
        "DUALSEG_RETRAIN_GATE_DICE_TOL": "1.0", "DUALSEG_RETRAIN_GATE_HD95_TOL_MM": "1000",
    })
    s.cli("models", "import", str(make_tiny_package(tmp / "pkg", version="tiny-loop-1")), "--activate")
    s.start("api", "worker")
    yield s
    s.stop()


def _wait(client: httpx.Client, url: str, done: tuple[str, ...], timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(url).json()
        if body["state"] in done:
            return body
        time.sleep(0.5)
    raise TimeoutError(f"{url} still {body.get('state')}")


def test_upload_correct_retrain_promote_reuse_rollback(stack: LiveStack, tmp_path: Path) -> None:
    client = stack.client("admin", timeout=120)
    annotator = stack.client("annotator", timeout=120)
    ready = client.get("/api/v1/training-runs/readiness").json()
    assert ready["ready"] is False and ready["corrections_needed"] == 2 and ready["next_side"] == "train"
    case_ids, labels = [], []
    for seed in range(3):
        image, label = blob_volume((40, 36, 24), seed=seed)
        src = write_nifti(tmp_path / f"c{seed}.nii.gz", image, oblique_affine())
        r = annotator.post("/api/v1/cases", files={"files": (src.name, src.read_bytes())})
        assert r.status_code == 202, r.text
        case_ids.append(r.json()["case_id"])
        job = _wait(client, f"/api/v1/jobs/{r.json()['job_id']}", ("succeeded", "failed"))
        assert job["state"] == "succeeded" and job["model_version"] == "tiny-loop-1"
        labels.append(write_nifti(tmp_path / f"l{seed}.nii.gz", label, oblique_affine()))
    first_case = case_ids[0]

    def correct(i: int) -> dict[str, Any]:
        r = annotator.put(f"/api/v1/cases/{case_ids[i]}/correction",
                          files={"file": (labels[i].name, labels[i].read_bytes())})
        assert r.status_code == 201, r.text
        return r.json()

    assert correct(0)["split"] == "train"
    ready = client.get("/api/v1/training-runs/readiness").json()
    got = (ready["ready"], ready["corrections_needed"], ready["train"], ready["validation"])
    assert got == (False, 1, 1, 0)
    assert "correct 1 more case" in ready["reason"] and ready["next_side"] == "validation"
    assert correct(1)["split"] == "validation"  # the second corrected case always validates
    ready = client.get("/api/v1/training-runs/readiness").json()
    assert ready["ready"] is True and ready["reason"] is None and ready["unlabeled"] == 1

    assert annotator.post("/api/v1/training-runs", json={}).status_code == 403
    r = client.post("/api/v1/training-runs", json={"iterations": 3})
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    again = client.post("/api/v1/training-runs", json={})
    assert again.status_code == 409 and run_id in again.text
    run = _wait(client, f"/api/v1/training-runs/{run_id}", ("succeeded", "failed", "skipped", "cancelled"))
    assert run["state"] == "succeeded", (run, stack.log_tail("worker"))
    assert run["iteration"] == 3 and run["total_iterations"] == 3 and "total" in run["losses"]
    assert run["decision"]["promoted"] is True and run["decision"]["reasons"]
    assert run["metrics"]["candidate"]["cases"] == run["data_summary"]["validation"] == 1
    assert run["data_summary"]["validation_cases"] == [case_ids[1]]
    assert list(run["metrics"]["candidate"]["per_case"]) == [case_ids[1]]
    assert (run["data_summary"]["labeled"], run["data_summary"]["unlabeled"]) == (1, 1)
    new_version = run["candidate_version"]
    model = client.get(f"/api/v1/models/{new_version}").json()
    assert model["state"] == "active" and model["parent_version"] == "tiny-loop-1"
    assert model["card"]["training"]["run_id"] == run_id

    # the worker picks up the new version on its next job, without a restart
    r = annotator.post(f"/api/v1/cases/{first_case}/segmentations", json={})
    job = _wait(client, f"/api/v1/jobs/{r.json()['job_id']}", ("succeeded", "failed"))
    assert job["state"] == "succeeded" and job["model_version"] == new_version
    assert client.get(f"/api/v1/cases/{first_case}").json()["model_version"] == new_version

    r = client.post("/api/v1/models/rollback")
    assert r.status_code == 200 and r.json()["version"] == "tiny-loop-1"
    states = {m["version"]: m["state"] for m in client.get("/api/v1/models").json()}
    assert states == {"tiny-loop-1": "active", new_version: "retired"}
    r = annotator.post(f"/api/v1/cases/{first_case}/segmentations", json={})
    job = _wait(client, f"/api/v1/jobs/{r.json()['job_id']}", ("succeeded", "failed"))
    assert job["model_version"] == "tiny-loop-1"
    assert [x["id"] for x in client.get("/api/v1/training-runs").json()] == [run_id]

    # later corrections never move a stored side; at 50 % the third corrected case goes to validation
    # (2 of 3, rounded half up; the sequence itself is tested in tests/worker/test_retrain.py)
    assert correct(0)["split"] == "train" and correct(1)["split"] == "validation"
    third = correct(2)["split"]
    sides = [client.get(f"/api/v1/cases/{c}").json()["split"] for c in case_ids]
    assert sides == ["train", "validation", third] and third == "validation"


def test_beat_schedule_has_retraining_and_sweeper() -> None:
    from backend.config import Settings
    from worker.app import create_worker_app

    app = create_worker_app(Settings(retrain_cron="30 3 * * 1"))
    sched = app.conf.beat_schedule
    assert sched["scheduled-retraining"]["task"] == "dualseg.retrain_scheduled"
    cron = sched["scheduled-retraining"]["schedule"]
    assert cron.minute == {30} and cron.hour == {3} and cron.day_of_week == {1}
    assert sched["sweep-stuck-jobs"]["task"] == "dualseg.sweep"
    with pytest.raises(ValueError, match="5 fields"):
        create_worker_app(Settings(retrain_cron="nightly"))
