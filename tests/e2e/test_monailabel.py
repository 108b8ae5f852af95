"""3D Slicer's protocol with MONAI Label's own Python client (monailabel 0.8.5, installed with --no-deps by
`make setup`) against real `dualseg api` + worker processes: login → info → upload_image → infer (both
models, NRRD checked against dualseg's own NIfTI results) → next_sample → save_label → datastore →
train_start / train_status."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from backend.imaging.nrrd import read_nrrd, write_nrrd
from tests.helpers import LiveStack, blob_volume, make_tiny_package, oblique_affine, write_nifti

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the client imports `cgi` (gone in 3.13)
    client_mod = pytest.importorskip("monailabel.client.client")

SHAPE = (40, 36, 24)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("monailabel")
    s = LiveStack(tmp / "var", extra_env={
        "DUALSEG_RETRAIN_PRESET": "tiny", "DUALSEG_RETRAIN_ITERATIONS": "3",
        "DUALSEG_RETRAIN_VAL_PERCENT": "50", "DUALSEG_MONAILABEL_INFER_WAIT_S": "240",
        "DUALSEG_RETRAIN_GATE_DICE_TOL": "1.0", "DUALSEG_RETRAIN_GATE_HD95_TOL_MM": "1000",
    })
    s.cli("models", "import", str(make_tiny_package(tmp / "pkg", version="tiny-ml-1")), "--activate")
    s.start("api", "worker")
    yield s
    s.stop()


def _nifti(client: httpx.Client, url: str, tmp: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    r = client.get(url)
    assert r.status_code == 200, r.text
    path = tmp / name
    path.write_bytes(r.content)
    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine)


def test_monailabel_client_round_trip(stack: LiveStack, tmp_path: Path) -> None:
    ml = client_mod.MONAILabelClient(f"{stack.base}/monailabel", tmpdir=str(tmp_path))
    api = stack.client("admin", timeout=300)

    # login as Slicer does: the password field carries a dualseg token
    assert ml.auth_enabled() is True
    with pytest.raises(client_mod.MONAILabelClientException) as refused:
        ml.info()
    assert refused.value.status_code == 401 and b'"detail"' in refused.value.response
    with pytest.raises(client_mod.MONAILabelClientException):
        ml.auth_token("radiologist", "dsg_not-a-token")
    token = ml.auth_token("radiologist", stack.token("annotator"))
    assert token == {"access_token": stack.token("annotator"), "token_type": "Bearer"}
    ml.update_auth(token)
    assert ml.auth_valid_token() is True

    info = ml.info()
    assert "config" not in info and info["name"] == "dualseg"
    assert set(info["models"]) == {"dualseg", "dualseg_uncertainty"}
    assert info["models"]["dualseg"] == {**info["models"]["dualseg"], "type": "segmentation",
                                         "labels": {"left atrium": 1}, "dimension": 3}
    assert info["labels"] == ["left atrium"] and set(info["strategies"]) == {"uncertainty", "random"}
    assert info["datastore"]["total"] == 0 and info["datastore"]["completed"] == 0

    affine = oblique_affine()
    case_ids, labels = [], []
    for seed in range(2):
        image, label = blob_volume(SHAPE, seed=seed)
        src = write_nifti(tmp_path / f"vol{seed}.nii.gz", image, affine)
        answer = ml.upload_image(str(src), image_id=f"slicer-volume-{seed}")
        case_ids.append(answer["image"])
        labels.append(label)
        assert api.get(f"/api/v1/cases/{answer['image']}").json()["shape"] == list(SHAPE)

    # infer by the name Slicer used at upload; waits for the job; NRRD uint8 on the input's grid
    out, params = ml.infer("dualseg", "slicer-volume-0", {})
    assert params["image"] == case_ids[0] and params["model_version"] == "tiny-ml-1"
    assert params["label_names"] == {"left atrium": 1}
    mask, mask_affine = read_nrrd(Path(out))
    assert Path(out).suffix == ".nrrd" and mask.dtype == np.uint8 and mask.shape == SHAPE
    assert np.allclose(mask_affine, affine, atol=1e-5)
    want, want_affine = _nifti(api, f"/api/v1/cases/{case_ids[0]}/mask?format=nifti", tmp_path, "m.nii.gz")
    assert np.array_equal(mask, want) and np.allclose(want_affine, affine, atol=1e-5)

    out, params = ml.infer("dualseg_uncertainty", case_ids[0], {})
    heat, heat_affine = read_nrrd(Path(out))
    entropy, _ = _nifti(api, f"/api/v1/cases/{case_ids[0]}/uncertainty?format=nifti", tmp_path, "e.nii.gz")
    assert heat.dtype == np.uint8 and heat.shape == SHAPE and np.allclose(heat_affine, affine, atol=1e-5)
    assert np.array_equal(heat, np.rint(np.clip(entropy, 0, 1) * 255).astype(np.uint8))
    assert heat.max() > 0 and params["label_names"] == {"uncertainty": 255}

    headers = {"Authorization": f"Bearer {stack.token('annotator')}"}
    r = httpx.post(f"{stack.base}/monailabel/infer/dualseg", params={"image": case_ids[1], "output": "json"},
                   headers=headers, timeout=300)
    assert r.status_code == 200 and r.json()["image"] == case_ids[1], r.text
    r = httpx.post(f"{stack.base}/monailabel/infer/dualseg", params={"image": case_ids[1], "output": "image"},
                   headers=headers, timeout=300)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    (tmp_path / "bare.nrrd").write_bytes(r.content)
    bare, _ = read_nrrd(tmp_path / "bare.nrrd")
    want1, _ = _nifti(api, f"/api/v1/cases/{case_ids[1]}/mask?format=nifti", tmp_path, "m1.nii.gz")
    assert np.array_equal(bare, want1)

    # bad input: MONAI Label's error shape, nothing changes
    r = httpx.post(f"{stack.base}/monailabel/infer/dualseg", params={"image": "no-such-image"},
                   headers=headers, timeout=30)
    assert r.status_code == 404 and "no-such-image" in r.json()["detail"]
    r = httpx.put(f"{stack.base}/monailabel/datastore/label", params={"image": case_ids[0]}, headers=headers,
                  files={"label": ("bad.nrrd", b"not an nrrd")}, timeout=30)
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    small = write_nrrd(tmp_path / "small.nrrd", np.ones((4, 4, 4), np.uint8), affine)
    r = httpx.put(f"{stack.base}/monailabel/datastore/label", params={"image": case_ids[0]}, headers=headers,
                  files={"label": (small.name, small.read_bytes())}, timeout=30)
    assert r.status_code == 422 and "grid" in r.json()["detail"]
    assert api.get(f"/api/v1/cases/{case_ids[0]}/corrections").json() == []
    viewer = {"Authorization": f"Bearer {stack.token('viewer')}"}
    r = httpx.post(f"{stack.base}/monailabel/train/dualseg", headers=viewer, json={}, timeout=30)
    assert r.status_code == 403 and "admin" in r.json()["detail"]

    # active learning follows the worklist: the most uncertain uncorrected case first
    worklist = api.get("/api/v1/cases", params={"sort": "uncertainty"}).json()["items"]
    sample = ml.next_sample("uncertainty", {})
    assert sample["id"] == worklist[0]["case_id"]
    assert ml.next_sample("random", {})["id"] in case_ids

    # save_label: an NRRD (Slicer's format) and a NIfTI, each a correction of its case
    first = sample["id"]
    second = next(c for c in case_ids if c != first)
    label_nrrd = write_nrrd(tmp_path / "label.nrrd", labels[case_ids.index(first)], affine)
    saved = ml.save_label(first, str(label_nrrd), tag="final")
    history = api.get(f"/api/v1/cases/{first}/corrections").json()
    assert saved["image"] == first and [c["correction_id"] for c in history] == [saved["label"]]
    assert history[0]["author"] == "tests-annotator" and history[0]["stats"]["labels_present"] == [0, 1]
    assert saved["split"] == "train"
    assert ml.next_sample("uncertainty", {})["id"] == second
    label_nii = write_nifti(tmp_path / "label.nii.gz", labels[case_ids.index(second)], affine)
    saved2 = ml.save_label(second, str(label_nii))
    assert saved2["split"] == "validation"
    assert ml.next_sample("uncertainty", {}) == {} and ml.next_sample("random", {}) == {}
    got = ml.download_label(first, "final")
    import nibabel as nib

    assert np.array_equal(np.asarray(nib.load(got).dataobj), labels[case_ids.index(first)])

    store = ml.datastore()
    assert set(store["objects"]) == set(case_ids)
    assert all(set(o["labels"]) == {"original", "final"} for o in store["objects"].values())
    assert ml.info()["datastore"]["completed"] == 2

    # training: an admin logs in the same way; a retraining run starts, runs and finishes
    admin = client_mod.MONAILabelClient(f"{stack.base}/monailabel", tmpdir=str(tmp_path))
    admin.update_auth(admin.auth_token("admin", stack.token("admin")))
    assert admin.train_status(check_if_running=True) is False
    started = admin.train_start("dualseg", {"dualseg": {"iterations": 3}})
    assert started["status"] == "RUNNING"
    run_id = started["id"]
    running = admin.train_status(check_if_running=True)
    run = _wait_run(api, run_id)
    assert running is True or run["finished_at"] is not None
    assert run["state"] == "succeeded" and run["trigger"] == "monailabel", (run, stack.log_tail("worker"))
    assert run["iteration"] == 3 and run["data_summary"]["labeled"] == 1
    assert admin.train_status(check_if_running=True) is False
    last = admin.train_status(check_if_running=False)
    assert last["id"] == run_id and last["status"] == "DONE"
    assert admin.train_stop() == {}


def _wait_run(api: httpx.Client, run_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/training-runs/{run_id}").json()
        if body["state"] in ("succeeded", "failed", "skipped", "cancelled"):
            return body
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} still {body.get('state')}")
