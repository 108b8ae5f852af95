"""PACS integration against a real Orthanc (Debian `orthanc` + `orthanc-dicomweb`), with real `dualseg api`,
`dualseg worker --beat` and `dualseg scp` processes:

- DICOMweb: STOW a phantom series into Orthanc, `POST /api/v1/pacs/segment`, the worker pulls it by
  WADO-RS, segments it and STOWs the DICOM SEG and the entropy Parametric Map into the same study (read
  back by WADO-RS, dciodvfy: 0 errors);
- the Orthanc Lua hook (docker/orthanc/dualseg.lua): a stable CT series is segmented without any call from us;
- DIMSE: `echoscu` is answered, `storescu` of a series creates and segments a case, results are forwarded by
  C-STORE to Orthanc; a calling AE title that is not allowed is refused;
- corrections: a corrected SEG stored in Orthanc is imported (API and poll), a correction made in dualseg is
  pushed back as a SEMIAUTOMATIC SEG.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from tests.e2e.orthanc_fixture import Orthanc, dicomweb_plugin, orthanc_binary
from tests.helpers import (
    LA_CLASSES,
    ROOT,
    LiveStack,
    blob_volume,
    free_port,
    make_tiny_package,
    oblique_affine,
    write_dicom_series,
    write_nifti,
)

pytestmark = [
    pytest.mark.skipif(orthanc_binary() is None or dicomweb_plugin() is None,
                       reason="Orthanc + DICOMweb plugin not installed "
                              "(apt-get install orthanc orthanc-dicomweb)"),
    pytest.mark.slow,
]

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"
SCP_AET = "DUALSEGTEST"


class Env:
    def __init__(self, stack: LiveStack, orthanc: Orthanc, scp_port: int, tmp: Path) -> None:
        self.stack, self.orthanc, self.scp_port, self.tmp = stack, orthanc, scp_port, tmp
        self.client: httpx.Client = stack.client("annotator")
        self.shared: dict[str, Any] = {}

    def dicomweb(self) -> Any:
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(self.orthanc.dicomweb)

    def logs(self) -> str:
        parts = [f"--- {n}\n{self.stack.log_tail(n, 2500)}" for n in ("api", "worker-beat", "scp")]
        return "\n".join(parts) + f"\n--- orthanc\n{self.orthanc.log_tail(1500)}"


def wait_for(what: str, fn: Callable[[], Any], env: Env, timeout: float = 90.0, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}\n{env.logs()}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("pacs")
    scp_port = free_port()
    stack = LiveStack(tmp / "var")
    orthanc = Orthanc(tmp / "orthanc", aet="ORTHANCTEST", lua_scripts=[ROOT / "docker/orthanc/dualseg.lua"])
    stack.env.update({
        "DUALSEG_PACS_DICOMWEB_URL": orthanc.dicomweb,
        "DUALSEG_PACS_PUSH": "after-segmentation",
        "DUALSEG_PACS_POLL_INTERVAL_S": "0",  # the poll is run explicitly (`dualseg pacs poll`) below
        "DUALSEG_SCP_AE_TITLE": SCP_AET,
        "DUALSEG_SCP_PORT": str(scp_port),
        "DUALSEG_SCP_STABLE_S": "1",
        "DUALSEG_SCP_ALLOWED_CALLING_AES": "STORESCU,ECHOSCU",
        "DUALSEG_SCP_FORWARD_AE": orthanc.aet,
        "DUALSEG_SCP_FORWARD_HOST": "127.0.0.1",
        "DUALSEG_SCP_FORWARD_PORT": str(orthanc.dicom_port),
        "DUALSEG_SWEEP_INTERVAL_S": "2",
    })
    pkg = make_tiny_package(tmp / "pkg", version="tiny-pacs-1")
    out = stack.cli("models", "import", str(pkg), "--activate")
    assert "imported tiny-pacs-1" in out.stdout, out.stderr
    hook_token = stack.token("annotator")
    # Orthanc calls our API from its Lua hook, with an annotator token; only CT series are sent
    orthanc.configure(Dualseg={"Url": stack.base, "Token": hook_token, "Modalities": ["CT"]}, HttpTimeout=10)
    orthanc.start()
    stack.start("api", "worker-beat")
    stack.logs.mkdir(parents=True, exist_ok=True)
    log = open(stack.logs / "scp.log", "ab")  # noqa: SIM115 - closed with the process
    stack.procs["scp"] = subprocess.Popen([sys.executable, "-m", "backend.cli", "scp"], env=stack.env,
                                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    e = Env(stack, orthanc, scp_port, tmp)
    wait_for("the SCP", lambda: "dualseg scp:" in e.stack.log_tail("scp"), e, timeout=60)
    yield e
    e.client.close()
    stack.stop()
    orthanc.stop()


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    # one 32×32×16 window of the tiny model at its 1 mm spacing: fast jobs
    image, _ = blob_volume((32, 32, 16), seed=5)
    return (np.round(image * 2) / 2).astype(np.float32), oblique_affine(spacing=(1.0, 1.0, 1.0))


def stow_series(env: Env, folder: Path, image: np.ndarray, affine: np.ndarray, modality: str) -> list[Path]:
    files = write_dicom_series(folder, image, affine, modality=modality)
    env.dicomweb().store_instances([pydicom.dcmread(f) for f in files])
    return files


def series_in_study(env: Env, study_uid: str, modality: str) -> list[str]:
    items = env.dicomweb().search_for_series(study_instance_uid=study_uid,
                                             search_filters={"Modality": modality})
    return [str(i["0020000E"]["Value"][0]) for i in items]


def wait_case(env: Env, series_uid: str, study_uid: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        items = env.client.get("/api/v1/cases", params={"study_uid": study_uid}).json()["items"]
        return next((c for c in items if c["series_uid"] == series_uid), None)

    return wait_for(f"a case of series {series_uid}", find, env)


def wait_job_ok(env: Env, job_id: str) -> dict[str, Any]:
    job = env.stack.wait_job(env.client, job_id, timeout=120)
    assert job["state"] == "succeeded", (job["error"], env.logs())
    return job


def dciodvfy_errors(path: Path) -> list[str]:
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (dicom3tools) not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def retrieve_one(env: Env, study_uid: str, series_uid: str, dest: Path) -> pydicom.Dataset:
    datasets = env.dicomweb().retrieve_series(study_uid, series_uid)
    assert len(datasets) == 1
    datasets[0].save_as(dest, enforce_file_format=True)
    return pydicom.dcmread(dest)


def test_dicomweb_pull_segment_and_stow_seg_and_pm_into_the_study(env: Env, phantom: Any) -> None:
    image, affine = phantom
    files = stow_series(env, env.tmp / "mr", image, affine, "MR")  # MR: the Lua hook only sends CT
    first = pydicom.dcmread(files[0])
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)

    r = env.client.post("/api/v1/pacs/segment", json={"study_uid": study, "series_uid": series})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["pull_id"] and body["case_id"] is None and r.headers["location"].endswith(body["pull_id"])
    pull = wait_for("the pull", lambda: (p := env.client.get(body["urls"]["pull"]).json())["state"]
                    in ("succeeded", "failed") and p, env)
    assert pull["state"] == "succeeded", pull
    case = env.client.get(f"/api/v1/cases/{pull['case_id']}").json()
    assert case["source_format"] == "dicom" and case["series_uid"] == series and case["study_uid"] == study
    assert case["num_files"] == 16 and case["shape"] == [32, 32, 16]
    wait_job_ok(env, pull["job_id"])

    # results arrive in the same study: one SEG series and one Parametric Map (Modality OT) series
    seg_series = wait_for("the SEG in Orthanc", lambda: series_in_study(env, study, "SEG"), env)
    pm_series = wait_for("the PM in Orthanc", lambda: series_in_study(env, study, "OT"), env)
    seg = retrieve_one(env, study, seg_series[0], env.tmp / "seg.dcm")
    pm = retrieve_one(env, study, pm_series[0], env.tmp / "pm.dcm")
    assert seg.SOPClassUID == SEG_CLASS and pm.SOPClassUID == PM_CLASS
    for ds in (seg, pm):
        assert ds.StudyInstanceUID == study
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    ours = env.client.get(f"/api/v1/cases/{case['case_id']}/mask", params={"format": "dicom-seg"})
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(ours.content)).SOPInstanceUID == seg.SOPInstanceUID
    assert float(np.asarray(pm.pixel_array).max()) <= 1.0
    assert dciodvfy_errors(env.tmp / "seg.dcm") == []
    assert dciodvfy_errors(env.tmp / "pm.dcm") == []
    env.shared.update(case_id=case["case_id"], study=study, series=series, files=files,
                      seg_sop=str(seg.SOPInstanceUID))


def test_dicomweb_pull_of_an_unknown_series_fails_with_a_message(env: Env) -> None:
    r = env.client.post("/api/v1/pacs/segment", json={"study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5"})
    assert r.status_code == 202
    pull_url = r.json()["urls"]["pull"]
    pull = wait_for("the pull", lambda: (p := env.client.get(pull_url).json())["state"]
                    in ("succeeded", "failed") and p, env)
    assert pull["state"] == "failed" and pull["case_id"] is None
    assert "404" in pull["error"] or "no instance" in pull["error"]
    bad = env.client.post("/api/v1/pacs/segment", json={"study_uid": "1.2.x", "series_uid": "1.2.3"})
    assert bad.status_code == 422


def test_orthanc_lua_hook_segments_a_stable_ct_series(env: Env, phantom: Any) -> None:
    image, affine = phantom
    files = stow_series(env, env.tmp / "ct", image, affine, "CT")
    first = pydicom.dcmread(files[0])
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    case = wait_case(env, series, study)  # nobody called our API: Orthanc's OnStableSeries did
    wait_job_ok(env, case["latest_job"]["job_id"])
    wait_for("the SEG of the hook's case", lambda: series_in_study(env, study, "SEG"), env)
    assert len(series_in_study(env, study, "OT")) == 1
    # our own outputs (SEG, OT) are not sent back by the hook: still exactly one case in the study
    time.sleep(2.5)
    assert env.client.get("/api/v1/cases", params={"study_uid": study}).json()["total"] == 1


def test_scp_echo_store_segment_and_forward(env: Env, phantom: Any) -> None:
    if not (shutil.which("storescu") and shutil.which("echoscu")):
        pytest.skip("dcmtk not installed")
    port = str(env.scp_port)
    echo = subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", SCP_AET, "127.0.0.1", port],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    refused = subprocess.run(["echoscu", "-aet", "NOTALLOWED", "-aec", SCP_AET, "127.0.0.1", port],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0

    image, affine = phantom
    files = write_dicom_series(env.tmp / "scp", image[:, :, :12], affine, modality="CT")
    first = pydicom.dcmread(files[0])
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", SCP_AET, "127.0.0.1", port,
                           *map(str, files)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    case = wait_case(env, series, study)
    assert case["num_files"] == 12 and case["shape"] == [32, 32, 12], (case, env.logs())
    wait_job_ok(env, case["latest_job"]["job_id"])
    # results forwarded by C-STORE to the configured peer (Orthanc), into the same study
    seg_series = wait_for("the forwarded SEG", lambda: series_in_study(env, study, "SEG"), env)
    # the SEG and the parametric map are separate C-STOREs: the map may land a moment after the SEG
    pmap_series = wait_for("the forwarded parametric map", lambda: series_in_study(env, study, "OT"), env)
    assert len(pmap_series) == 1, env.logs()
    seg = retrieve_one(env, study, seg_series[0], env.tmp / "fwd-seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    # the received series is the case's source; nothing was left in the spool
    spool = Path(env.stack.env["DUALSEG_DATA_DIR"]) / "scp" / "series"
    assert list(spool.iterdir()) == [], env.logs()


def poll_in_process(env: Env) -> Any:
    """``backend.pacs.imports.poll`` with the stack's settings (what `dualseg pacs poll` runs)."""
    from backend.config import Settings
    from backend.pacs.imports import poll
    from backend.storage import ArtifactStore

    values = {k[len("DUALSEG_"):].lower(): v for k, v in env.stack.env.items()
              if k.startswith("DUALSEG_") and not k.startswith("DUALSEG_TEST_")}
    settings = Settings.model_validate(values)
    return poll(settings, ArtifactStore(settings.resolved_storage_dir))


def _corrected_seg(env: Env, manufacturer: str, flip: tuple[slice, slice, slice]) -> tuple[Any, int]:
    from backend.imaging.dicom_series import read_dicom_series
    from backend.imaging.seg import build_seg

    cid = env.shared["case_id"]
    r = env.client.get(f"/api/v1/cases/{cid}/mask")
    (env.tmp / "mask.nii.gz").write_bytes(r.content)
    import nibabel as nib

    img: Any = nib.load(str(env.tmp / "mask.nii.gz"))
    mask = np.asarray(img.dataobj).astype(np.uint8)
    corrected = mask.copy()
    corrected[flip] = 1 - corrected[flip]
    source = read_dicom_series([str(p) for p in env.shared["files"]]).dicom
    assert source is not None
    seg = build_seg(corrected, source, LA_CLASSES, model_version="viewer", algorithm_type="MANUAL",
                    manufacturer=manufacturer, series_description="corrected in a viewer")
    return seg, int((mask != corrected).sum())


def test_corrected_seg_in_orthanc_becomes_a_correction(env: Env) -> None:
    if "case_id" not in env.shared:
        pytest.skip("needs the DICOMweb case of the first test")
    cid, study = env.shared["case_id"], env.shared["study"]
    seg, changed = _corrected_seg(env, "tests-viewer", (slice(10, 14), slice(10, 14), slice(5, 8)))
    env.dicomweb().store_instances([seg])

    r = env.client.post("/api/v1/pacs/import-seg", json={"sop_instance_uid": str(seg.SOPInstanceUID)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] and body["study_uid"] == study and body["correction"]["case_id"] == cid
    assert body["correction"]["source_format"] == "dicom-seg"
    assert body["correction"]["stats"]["voxels_changed"] == changed == 48
    again = env.client.post("/api/v1/pacs/import-seg", json={"sop_instance_uid": str(seg.SOPInstanceUID)})
    assert again.status_code == 200 and not again.json()["created"]
    assert again.json()["correction"]["correction_id"] == body["correction"]["correction_id"]
    own = env.client.post("/api/v1/pacs/import-seg", json={"sop_instance_uid": env.shared["seg_sop"]})
    assert own.status_code == 409
    missing = env.client.post("/api/v1/pacs/import-seg", json={"sop_instance_uid": "1.2.3.999"})
    assert missing.status_code == 404

    # the poll finds a SEG nobody told us about, once; our own outputs are never imported
    seg2, changed2 = _corrected_seg(env, "tests-viewer", (slice(2, 4), slice(2, 4), slice(1, 3)))
    env.dicomweb().store_instances([seg2])
    out = env.stack.cli("pacs", "poll")  # the command; the beat task runs the same function
    import json

    polled = json.loads(out.stdout)
    assert len(polled["imported"]) == 1 and polled["errors"] == [], (out.stdout, out.stderr)
    assert (polled_again := poll_in_process(env)).imported == [], (polled_again, env.logs())
    history = env.client.get(f"/api/v1/cases/{cid}/corrections").json()
    assert len(history) == 2 and {h["stats"]["voxels_changed"] for h in history} == {changed, changed2}
    assert {h["author"] for h in history} == {"tests-annotator", "pacs-poll"}


def test_correction_made_in_dualseg_is_pushed_as_semiautomatic_seg(env: Env, phantom: Any) -> None:
    if "case_id" not in env.shared:
        pytest.skip("needs the DICOMweb case of the first test")
    cid, study = env.shared["case_id"], env.shared["study"]
    import nibabel as nib

    img: Any = nib.load(str(env.tmp / "mask.nii.gz"))
    mask = np.asarray(img.dataobj).astype(np.uint8)
    mask[20:24, 20:24, 10:12] = 1
    path = write_nifti(env.tmp / "rest-corr.nii.gz", mask, phantom[1])
    r = env.client.put(f"/api/v1/cases/{cid}/correction", files={"file": ("c.nii.gz", path.read_bytes())})
    assert r.status_code == 201, r.text
    corr_id = r.json()["correction_id"]
    # the beat sweep notices the new correction of a PACS case and pushes it (pacs_push=after-segmentation)
    push = wait_for("the correction push", lambda: (p := env.client.get(
        f"/api/v1/pacs/pushes/correction-{corr_id}")).status_code == 200 and p.json()["state"] in
        ("succeeded", "failed") and p.json(), env)
    assert push["state"] == "succeeded", (push, env.logs())
    sop = push["sop_instance_uids"][0]
    seg_series = series_in_study(env, study, "SEG")
    found = None
    for s in seg_series:
        for inst in env.dicomweb().search_for_instances(study_instance_uid=study, series_instance_uid=s):
            if inst["00080018"]["Value"][0] == sop:
                found = s
    assert found is not None, (seg_series, sop, env.logs())
    ds = retrieve_one(env, study, found, env.tmp / "corr-seg.dcm")
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert ds.SeriesDescription == "dualseg corrected segmentation"
    assert dciodvfy_errors(env.tmp / "corr-seg.dcm") == []
    # a pushed correction is ours: the poll does not import it back
    assert (polled_again := poll_in_process(env)).imported == [], (polled_again, env.logs())
    # manual push of the result again (idempotent UIDs: Orthanc keeps one copy)
    r = env.client.post(f"/api/v1/pacs/cases/{cid}/push", json={"what": "result"})
    assert r.status_code == 202, r.text
    push_url = f"/api/v1/pacs/pushes/{r.json()['push_id']}"
    again = wait_for("the manual push", lambda: (p := env.client.get(push_url).json())["state"]
                     in ("succeeded", "failed") and p, env)
    assert again["state"] == "succeeded" and len(again["sop_instance_uids"]) == 2, (again, env.logs())
    assert len(series_in_study(env, study, "OT")) == 1, env.logs()


def test_pacs_status_and_roles(env: Env) -> None:
    status = env.client.get("/api/v1/pacs/status").json()
    assert status["dicomweb"]["configured"] and status["dicomweb"]["reachable"], status
    assert status["scp"]["forward"]["ae_title"] == "ORTHANCTEST"
    viewer = env.stack.client("viewer")
    body = {"study_uid": "1.2.3", "series_uid": "1.2.3.4"}
    assert viewer.post("/api/v1/pacs/segment", json=body).status_code == 403
    assert httpx.post(env.stack.base + "/api/v1/pacs/segment", json=body).status_code == 401
    assert viewer.get("/api/v1/pacs/pulls/nope").status_code == 404
