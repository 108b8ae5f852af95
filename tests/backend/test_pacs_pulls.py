"""PACS pulls, pushes and imports without a PACS: a fake DICOMweb client, embedded SQLite, real ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from backend.broker import PULL_TASK, PUSH_TASK, SEGMENT_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.errors import Conflict, NotFound
from backend.migrations import run_migrations
from backend.pacs import imports, ledger, pulls, pushes
from backend.pacs.client import PacsNotConfigured, PacsUnavailable
from backend.storage import ArtifactStore
from backend.tables import Case, Job, ModelState, ModelVersion
from tests.helpers import LA_CLASSES, TINY_GEOMETRY, blob_volume, oblique_affine, write_dicom_series

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.100", "1.2.826.0.1.3680043.8.498.101"


class Sent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, task: str, ref: str, queue: str) -> None:
        self.calls.append((task, ref, queue))


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, ArtifactStore]:
    s = Settings.model_validate({"data_dir": tmp_path / "var", "pacs_dicomweb_url": "http://pacs.invalid/dw",
                                 "secret_key": "test-secret-0123456789"})
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    with session_scope(s.resolved_database_url) as session:
        session.add(ModelVersion(version="m1", state=ModelState.active, path=str(tmp_path), content_hash="0",
                                 card={**TINY_GEOMETRY, "classes": LA_CLASSES,
                                       "architecture": {"num_classes": 2}}))
    monkeypatch.setattr("time.sleep", lambda _s: None)  # retry back-off
    return s, ArtifactStore(s.resolved_storage_dir)


class FakeClient:
    """download_series writes a phantom series, or raises what it is told to."""

    def __init__(self, source: Path | None = None, error: Exception | None = None) -> None:
        self.source, self.error = source, error
        self.stored: list[Any] = []

    def __call__(self, _settings: Settings) -> Any:
        return self

    def download_series(self, study: str, series: str, dest: Path, max_files: int,
                        max_bytes: int) -> list[Path]:
        if self.error is not None:
            raise self.error
        assert self.source is not None
        dest.mkdir(parents=True)
        out = []
        for n, p in enumerate(sorted(self.source.iterdir())):
            (dest / f"{n:06d}.dcm").write_bytes(p.read_bytes())
            out.append(dest / f"{n:06d}.dcm")
        return out

    def store(self, datasets: list[Dataset], study_uid: str) -> list[str]:
        if self.error is not None:
            raise self.error
        self.stored.append((study_uid, datasets))
        return [str(ds.SOPInstanceUID) for ds in datasets]

    def close(self) -> None:
        pass


def _series(tmp_path: Path) -> Path:
    image, _ = blob_volume((20, 18, 6), seed=1)
    write_dicom_series(tmp_path / "src", image, oblique_affine(), modality="CT", series_uid=SERIES,
                       study_uid=STUDY)
    return tmp_path / "src"


def test_pull_creates_case_and_job_once(ctx: tuple[Settings, ArtifactStore], tmp_path: Path) -> None:
    s, store = ctx
    rec = pulls.create(store, s, STUDY, SERIES, model_version="m1", requested_by="tester")
    assert pulls.active_for_series(store, SERIES).id == rec.id  # type: ignore[union-attr]
    assert ledger.active_ids(store, "pull") == [rec.id]
    sent = Sent()
    fake = FakeClient(_series(tmp_path))
    assert pulls.carry_out(s, store, rec.id, sent, fake) == "succeeded"
    done = pulls.load(store, rec.id)
    assert done is not None and done.state == "succeeded" and done.attempts == 1
    assert done.case_id and done.job_id
    assert sent.calls == [(SEGMENT_TASK, done.job_id, "inference")]
    assert pulls.active_for_series(store, SERIES) is None and ledger.active_ids(store, "pull") == []
    with session_scope(s.resolved_database_url) as session:
        case = session.get(Case, done.case_id)
        assert case is not None and case.series_uid == SERIES and case.num_files == 6
        assert case.meta["pacs"] == {"origin": "dicomweb", "pull_id": rec.id, "study_uid": STUDY,
                                     "series_uid": SERIES, "source": "api"}
        assert case.created_by == "pacs:tester"
        job = session.get(Job, done.job_id)
        assert job is not None and job.state.value == "queued" and job.model_version == "m1"
    # redelivery: nothing new
    assert pulls.carry_out(s, store, rec.id, sent, fake) == "skipped"
    # a crash after the commit but before the record was updated: finished without a second case
    done.state, done.case_id, done.job_id = "running", None, None
    pulls.save(store, done)
    assert pulls.carry_out(s, store, rec.id, sent, fake) == "succeeded"
    with session_scope(s.resolved_database_url) as session:
        assert session.query(Case).count() == 1
    assert pulls.load(store, rec.id).case_id == case.id  # type: ignore[union-attr]
    assert not list((s.resolved_storage_dir / ".incoming").iterdir())


def test_pull_failures(ctx: tuple[Settings, ArtifactStore]) -> None:
    s, store = ctx
    sent = Sent()
    missing = pulls.create(store, s, STUDY, SERIES, model_version="m1", requested_by=None)
    gone = FakeClient(error=NotFound("no such series"))
    assert pulls.carry_out(s, store, missing.id, sent, gone) == "failed"
    assert pulls.load(store, missing.id).error == "no such series"  # type: ignore[union-attr]
    down = pulls.create(store, s, STUDY, SERIES, model_version="m1", requested_by=None)
    fake = FakeClient(error=PacsUnavailable("PACS down"))
    assert pulls.carry_out(s, store, down.id, sent, fake) == "retrying"
    assert sent.calls == [(PULL_TASK, down.id, "inference")]
    assert pulls.load(store, down.id).state == "queued"  # type: ignore[union-attr]
    pulls.carry_out(s, store, down.id, sent, fake)
    assert pulls.carry_out(s, store, down.id, sent, fake) == "failed"  # 3 attempts
    final = pulls.load(store, down.id)
    assert final is not None and "gave up after 3 attempts" in (final.error or "")
    assert pulls.carry_out(s, store, "0" * 32, sent, fake) == "unknown"


def test_pull_of_derived_objects_is_refused(ctx: tuple[Settings, ArtifactStore], tmp_path: Path) -> None:
    s, store = ctx
    src = tmp_path / "seg"
    src.mkdir()
    ds = pydicom.dcmread(next(_series(tmp_path).iterdir()))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.66.4")
    ds.save_as(src / "x.dcm", enforce_file_format=True)
    rec = pulls.create(store, s, STUDY, SERIES, model_version="m1", requested_by=None)
    assert pulls.carry_out(s, store, rec.id, Sent(), FakeClient(src)) == "failed"
    assert "derived objects" in (pulls.load(store, rec.id).error or "")  # type: ignore[union-attr]


def test_sweep_resends_stale_pulls(ctx: tuple[Settings, ArtifactStore]) -> None:
    s, store = ctx
    fresh = pulls.create(store, s, STUDY, SERIES, model_version="m1", requested_by=None)
    stale = pulls.create(store, s, STUDY, "1.2.3.4", model_version="m1", requested_by=None)
    stale.enqueued_at = (datetime.now(UTC) - timedelta(seconds=s.pacs_pull_grace_s + 5)).isoformat()
    pulls.save(store, stale)
    worn = pulls.create(store, s, STUDY, "1.2.3.5", model_version="m1", requested_by=None)
    worn.attempts, worn.enqueued_at = 3, stale.enqueued_at
    pulls.save(store, worn)
    sent = Sent()
    assert pulls.sweep(s, store, sent) == 1
    assert sent.calls == [(PULL_TASK, stale.id, "inference")]
    assert pulls.load(store, worn.id).state == "failed"  # type: ignore[union-attr]
    assert ledger.read(store, ledger.key("series", "1.2.3.5")) is None  # a failed pull frees its series
    assert set(ledger.active_ids(store, "pull")) == {fresh.id, stale.id}


def test_sweep_resends_stale_pushes(ctx: tuple[Settings, ArtifactStore]) -> None:
    s, store = ctx
    long_ago = (datetime.now(UTC) - timedelta(seconds=s.pacs_pull_grace_s + 5)).isoformat()
    fresh, stale, worn, done = (pushes.request(store, s, "job", ref, "c1", "dicomweb")
                                for ref in ("j1", "j2", "j3", "j4"))
    assert fresh is not None and stale is not None and worn is not None and done is not None
    stale.enqueued_at = long_ago
    pushes.save(store, stale)
    worn.attempts, worn.enqueued_at = 3, long_ago
    pushes.save(store, worn)
    done.state = "succeeded"  # finished, but its active marker was left behind
    pushes.save(store, done)
    sent = Sent()
    assert pushes.sweep(s, store, sent) == 1
    assert sent.calls == [(PUSH_TASK, stale.id, "inference")]
    worn_after = pushes.load(store, worn.id)
    assert worn_after is not None and worn_after.state == "failed"
    assert worn_after.error == "gave up after 3 attempts"
    assert set(ledger.active_ids(store, "push")) == {fresh.id, stale.id}


def _case(s: Settings, origin: dict[str, Any] | None, source_format: str = "dicom") -> str:
    with session_scope(s.resolved_database_url) as session:
        case = Case(source_format=source_format, sha256="0", image_key="x", shape=[2, 2, 2],
                    spacing=[1, 1, 1], affine=np.eye(4).tolist(),
                    study_uid=STUDY if source_format == "dicom" else None,
                    series_uid=SERIES if source_format == "dicom" else None,
                    meta={"pacs": origin} if origin else {})
        session.add(case)
        session.flush()
        return case.id


def test_push_targets_and_after_segment(ctx: tuple[Settings, ArtifactStore]) -> None:
    s, store = ctx
    from_pacs, uploaded, nifti = _case(s, {"origin": "dicomweb"}), _case(s, None), _case(s, None, "nifti")
    from_scp = _case(s, {"origin": "scp"})
    with session_scope(s.resolved_database_url) as session:
        def get(cid: str) -> Case:
            case = session.get(Case, cid)
            assert case is not None
            return case

        assert pushes.target_for_case(s, get(from_pacs)) == "dicomweb"
        assert pushes.target_for_case(s, get(uploaded)) is None
        assert pushes.target_for_case(s, get(from_scp)) is None  # no forward peer configured
        assert pushes.choose_target(s, get(uploaded)) == "dicomweb"
        with pytest.raises(Conflict):
            pushes.choose_target(s, get(nifti))
        with pytest.raises(PacsNotConfigured):
            pushes.choose_target(s, get(uploaded), "forward")
    sent = Sent()
    assert pushes.after_segment(s, store, uploaded, "j0", sent) is None
    assert pushes.after_segment(s, store, from_pacs, "j1", sent) == "job-j1"
    assert sent.calls == [(PUSH_TASK, "job-j1", "inference")]
    assert pushes.after_segment(s, store, from_pacs, "j1", sent) is None  # already queued
    never = s.model_copy(update={"pacs_push": "after-correction"})
    assert pushes.after_segment(never, store, from_pacs, "j2", sent) is None


def test_push_sends_the_job_outputs_and_marks_them(ctx: tuple[Settings, ArtifactStore],
                                                   tmp_path: Path) -> None:
    s, store = ctx
    cid = _case(s, {"origin": "dicomweb"})
    with session_scope(s.resolved_database_url) as session:
        case = session.get(Case, cid)
        job = Job(case_id=cid, queue="inference", state="succeeded")
        session.add(job)
        session.flush()
        jid = job.id
        assert case is not None
    files = sorted(_series(tmp_path).iterdir())
    for kind, src in (("seg_dicom", files[0]), ("pm_dicom", files[1])):
        from backend.services.artifacts import artifact_key

        store.put_file(artifact_key(cid, jid, kind), src)
    rec = pushes.request(store, s, "job", jid, cid, "dicomweb")
    assert rec is not None
    fake = FakeClient()
    assert pushes.carry_out(s, store, rec.id, Sent(), fake) == "succeeded"
    study, datasets = fake.stored[0]
    assert study == STUDY and len(datasets) == 2
    done = pushes.load(store, rec.id)
    assert done is not None and done.sop_instance_uids == [str(d.SOPInstanceUID) for d in datasets]
    for ds in datasets:
        assert ledger.instance(store, str(ds.SOPInstanceUID))["role"] == "output"  # type: ignore[index]
    assert pushes.carry_out(s, store, rec.id, Sent(), fake) == "skipped"
    again = pushes.request(store, s, "job", jid, cid, "dicomweb", force=True)
    assert again is not None
    sent = Sent()
    assert pushes.carry_out(s, store, again.id, sent, FakeClient(error=PacsUnavailable("down"))) == "retrying"
    assert sent.calls == [(PUSH_TASK, again.id, "inference")]


def test_seg_helpers() -> None:
    ds = Dataset()
    ds.Manufacturer = "dualseg"
    item = Dataset()
    item.SegmentAlgorithmType = "AUTOMATIC"
    ds.SegmentSequence = [item]
    ref = Dataset()
    ref.SeriesInstanceUID = SERIES
    ds.ReferencedSeriesSequence = [ref]
    assert imports.is_our_automatic_output(ds) and imports.referenced_series(ds) == {SERIES}
    item.SegmentAlgorithmType = "SEMIAUTOMATIC"
    assert not imports.is_our_automatic_output(ds)
    ds.Manufacturer = "OHIF"
    item.SegmentAlgorithmType = "AUTOMATIC"
    assert not imports.is_our_automatic_output(ds)


def test_case_for_seg(ctx: tuple[Settings, ArtifactStore]) -> None:
    s, _ = ctx
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    with session_scope(s.resolved_database_url) as session:
        from backend.errors import BadInput

        with pytest.raises(BadInput):
            imports.case_for_seg(session, ds)
        ref = Dataset()
        ref.SeriesInstanceUID = SERIES
        ds.ReferencedSeriesSequence = [ref]
        with pytest.raises(NotFound):
            imports.case_for_seg(session, ds)
    cid = _case(s, None)
    with session_scope(s.resolved_database_url) as session:
        assert imports.case_for_seg(session, ds).id == cid


def test_pull_of_a_degenerate_series_fails_with_the_minimum(ctx: tuple[Settings, ArtifactStore],
                                                            tmp_path: Path) -> None:
    s, store = ctx
    image, _ = blob_volume((20, 18, 2), seed=1)  # two slices
    write_dicom_series(tmp_path / "thin", image, oblique_affine(), modality="CT", series_uid=SERIES,
                       study_uid=STUDY)
    rec = pulls.create(store, s, STUDY, SERIES, model_version="m1", requested_by="tester")
    sent = Sent()
    assert pulls.carry_out(s, store, rec.id, sent, FakeClient(tmp_path / "thin")) == "failed"
    done = pulls.load(store, rec.id)
    assert done is not None and done.state == "failed" and done.case_id is None
    assert "20x18x2 voxels" in (done.error or "") and "at least 4 voxels and 8 mm" in (done.error or "")
    assert sent.calls == []
    with session_scope(s.resolved_database_url) as session:
        assert session.query(Case).count() == 0 and session.query(Job).count() == 0
    assert not list((s.resolved_storage_dir / ".incoming").iterdir())
    cases = s.resolved_storage_dir / "cases"
    assert not cases.exists() or not any(cases.iterdir())
