"""Results back to the PACS: the DICOM SEG and the entropy Parametric Map of a job, or a correction
re-exported as a SEG marked SEMIAUTOMATIC (edited from a model result) or MANUAL.

Target: series pulled by DICOMweb go back by STOW-RS into the same study; series received by the SCP go
to the configured C-STORE peer (``scp_forward_*``). Every instance we send is noted in the ledger first,
so the correction poll never mistakes our own outputs for a clinician's correction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from backend.broker import PUSH_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.errors import Conflict, DomainError, NotFound
from backend.imaging.errors import ImagingError
from backend.pacs import ledger
from backend.pacs.client import PacsClient, PacsNotConfigured, PacsUnavailable, dicomweb_configured
from backend.pacs.dimse import c_store, forward_peer
from backend.pacs.ingest import pacs_origin
from backend.pacs.ledger import FINISHED, Enqueue
from backend.services import registry
from backend.services.artifacts import artifact_key
from backend.storage import ArtifactStore
from backend.tables import Case, Correction, Job, JobState

log = logging.getLogger("dualseg.pacs.push")

Target = Literal["dicomweb", "forward"]
TRANSIENT = (PacsUnavailable, OperationalError, ConnectionError, TimeoutError)


@dataclass(kw_only=True)
class PushRecord(ledger.TransferRecord):
    kind: str  # job | correction
    ref_id: str
    case_id: str
    target: str
    include_pm: bool = True
    sop_instance_uids: list[str] = field(default_factory=list)


RECORDS = ledger.Transfers("push", "pushes", PushRecord, PUSH_TASK)


def push_id(kind: str, ref_id: str) -> str:
    return f"{kind}-{ref_id}"


def load(store: ArtifactStore, pid: str) -> PushRecord | None:
    return RECORDS.load(store, pid)


def save(store: ArtifactStore, rec: PushRecord) -> None:
    RECORDS.save(store, rec)


def target_for_case(settings: Settings, case: Case) -> Target | None:
    """Where results of this case go automatically: back where it came from, if that is configured."""
    origin = pacs_origin(case).get("origin")
    if origin == "dicomweb" and dicomweb_configured(settings):
        return "dicomweb"
    if origin == "scp" and forward_peer(settings) is not None:
        return "forward"
    return None


def choose_target(settings: Settings, case: Case, wanted: str = "auto") -> Target:
    """``auto``: back where the case came from, else the DICOMweb PACS, else the C-STORE peer."""
    if case.source_format != "dicom" or not case.study_uid:
        raise Conflict(f"case {case.id} was not uploaded as DICOM: its SEG references a series the PACS "
                       "does not have, so it is not pushed")
    if wanted == "auto":
        wanted = target_for_case(settings, case) or (
            "dicomweb" if dicomweb_configured(settings) else "forward")
    if wanted == "dicomweb" and not dicomweb_configured(settings):
        raise PacsNotConfigured("no DICOMweb PACS is configured (DUALSEG_PACS_DICOMWEB_URL)")
    if wanted == "forward" and forward_peer(settings) is None:
        raise PacsNotConfigured("no C-STORE peer is configured (DUALSEG_SCP_FORWARD_AE, _HOST, _PORT)")
    return "dicomweb" if wanted == "dicomweb" else "forward"


def request(store: ArtifactStore, settings: Settings, kind: str, ref_id: str, case_id: str, target: Target,
            include_pm: bool = True, force: bool = False) -> PushRecord | None:
    """Record a queued push (the caller sends PUSH_TASK with ``rec.id``). None when it already ran
    successfully or is under way and ``force`` is false."""
    pid = push_id(kind, ref_id)
    old = load(store, pid)
    if old is not None and not force and old.state != "failed":
        return None
    rec = PushRecord(id=pid, kind=kind, ref_id=ref_id, case_id=case_id, target=target, include_pm=include_pm,
                     max_attempts=settings.job_max_attempts, enqueued_at=ledger.now_iso())
    save(store, rec)
    ledger.mark_active(store, "push", pid)
    return rec


# building the datasets ----------------------------------------------------------------------------
def _job_files(store: ArtifactStore, case_id: str, job_id: str, kinds: tuple[str, ...]) -> list[Dataset]:
    out: list[Dataset] = []
    for kind in kinds:
        k = artifact_key(case_id, job_id, kind)
        if not store.exists(k):
            raise NotFound(f"job {job_id} has no {kind} output (see the job's dicom_outputs_error)")
        out.append(pydicom.dcmread(store.path(k)))
    return out


def correction_seg(settings: Settings, store: ArtifactStore, case: Case, corr: Correction,
                   classes: list[dict[str, Any]], model_version: str) -> Dataset:
    """The correction as a BINARY SEG: SEMIAUTOMATIC when it edits a model result, else MANUAL."""
    import numpy as np

    from backend.imaging.nifti import read_nifti
    from backend.imaging.seg import AlgorithmType, build_seg
    from backend.services.dicom_outputs import source_for_case

    labels = np.asarray(read_nifti(store.path(corr.key), max_voxels=settings.max_voxels).array)
    source = source_for_case(settings, store, case)
    algorithm: AlgorithmType = "SEMIAUTOMATIC" if corr.job_id else "MANUAL"
    seg = build_seg(np.rint(labels).astype(np.uint8), source, classes, model_version=model_version,
                    algorithm_type=algorithm, series_number=902,
                    series_description="dualseg corrected segmentation", uid_seed=f"correction-{corr.id}",
                    content_label="CORRECTED",
                    content_description=f"Corrected segmentation ({algorithm.lower()}, dualseg review)")
    return seg


def build_datasets(settings: Settings, store: ArtifactStore, rec: PushRecord) -> tuple[str, list[Dataset]]:
    """(study UID, datasets) of a push."""
    with session_scope(settings.resolved_database_url) as s:
        case = s.get(Case, rec.case_id)
        if case is None:
            raise NotFound(f"case {rec.case_id} does not exist")
        s.expunge(case)
        if rec.kind == "job":
            job = s.get(Job, rec.ref_id)
            if job is None or job.state != JobState.succeeded:
                raise Conflict(f"job {rec.ref_id} has no result to push")
            kinds = ("seg_dicom", "pm_dicom") if rec.include_pm else ("seg_dicom",)
            return str(case.study_uid), _job_files(store, case.id, job.id, kinds)
        corr = s.get(Correction, rec.ref_id)
        if corr is None:
            raise NotFound(f"correction {rec.ref_id} does not exist")
        s.expunge(corr)
        version = corr.model_version or case.model_version
        mv = registry.get_version(s, version) if version else registry.active_version(s)
        if mv is None:
            raise Conflict("no model describes the classes of this correction (no model version)")
        classes, version_name = list(mv.card.get("classes") or []), mv.version
    datasets = [correction_seg(settings, store, case, corr, classes, version_name)]
    if rec.include_pm and corr.job_id:
        datasets += _job_files(store, case.id, corr.job_id, ("pm_dicom",))
    return str(case.study_uid), datasets


def send(settings: Settings, target: str, study_uid: str, datasets: list[Dataset],
         client_factory: Callable[[Settings], PacsClient] = PacsClient) -> list[str]:
    if target == "dicomweb":
        client = client_factory(settings)
        try:
            return client.store(datasets, study_uid)
        finally:
            client.close()
    return c_store(settings, datasets)


def carry_out(settings: Settings, store: ArtifactStore, pid: str, enqueue: Enqueue,
              client_factory: Callable[[Settings], PacsClient] = PacsClient) -> str:
    """The worker side of a push (idempotent: UIDs are deterministic, a PACS keeps one copy)."""
    rec = load(store, pid)
    if rec is None:
        log.warning("push %s not found; message dropped", pid)
        return "unknown"
    if rec.state in FINISHED:
        return "skipped"
    rec.state, rec.attempts, rec.error = "running", rec.attempts + 1, None
    save(store, rec)
    try:
        study_uid, datasets = build_datasets(settings, store, rec)
        for ds in datasets:  # before sending: the poll must never import our own objects
            ledger.mark_instance(store, str(ds.SOPInstanceUID), "output", case_id=rec.case_id, push_id=rec.id)
        sent = send(settings, rec.target, study_uid, datasets, client_factory)
    except TRANSIENT as exc:
        return RECORDS.retry_later(settings, store, rec, f"temporary failure: {exc}", enqueue)
    except (DomainError, ImagingError, OSError) as exc:
        message = exc.message if isinstance(exc, DomainError) else f"{type(exc).__name__}: {exc}"
        log.warning("push %s failed: %s", pid, message)
        _finish(store, rec, "failed", message)
        return "failed"
    except Exception as exc:  # noqa: BLE001 - recorded, never lost
        log.exception("push %s failed", pid)
        _finish(store, rec, "failed", f"internal error ({type(exc).__name__}: {exc}); see the worker log")
        return "failed"
    rec.sop_instance_uids = sent
    if rec.kind == "correction":
        ledger.mark_correction(store, rec.ref_id, pushed=True, push_id=rec.id)
    _finish(store, rec, "succeeded")
    log.info("push %s: %d instance(s) sent by %s", pid, len(sent), rec.target)
    return "succeeded"


def _finish(store: ArtifactStore, rec: PushRecord, state: str, error: str | None = None) -> None:
    RECORDS.finish(store, rec, state, error)


# automatic pushes ---------------------------------------------------------------------------------
def after_segment(settings: Settings, store: ArtifactStore, case_id: str, job_id: str,
                  enqueue: Enqueue) -> str | None:
    """Queue the push of a succeeded job's SEG + PM when ``pacs_push=after-segmentation`` and the case
    came from a PACS. Returns the push id, or None when nothing is pushed."""
    if settings.pacs_push != "after-segmentation":
        return None
    with session_scope(settings.resolved_database_url) as s:
        case = s.get(Case, case_id)
        target = target_for_case(settings, case) if case is not None else None
    if target is None:
        return None
    rec = request(store, settings, "job", job_id, case_id, target)
    if rec is None:
        return None
    enqueue(PUSH_TASK, rec.id, settings.queue_inference)
    return rec.id


def queue_corrections(settings: Settings, store: ArtifactStore, enqueue: Enqueue,
                      now: datetime | None = None) -> int:
    """Push corrections of PACS cases that were made in dualseg (REST/review page) and not pushed yet.
    With ``after-correction`` the corrected job's entropy map goes along (it was not pushed before)."""
    if settings.pacs_push == "never":
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.pacs_poll_lookback_days)
    todo: list[tuple[str, str, Target]] = []
    with session_scope(settings.resolved_database_url) as s:
        rows = s.execute(select(Correction, Case).join(Case, Case.id == Correction.case_id)
                         .where(Correction.created_at >= cutoff, Case.source_format == "dicom")).all()
        for corr, case in rows:
            target = target_for_case(settings, case)
            if target is None or ledger.correction(store, corr.id) is not None:
                continue
            todo.append((corr.id, case.id, target))
    queued = 0
    for corr_id, case_id, target in todo:
        include_pm = settings.pacs_push == "after-correction"
        rec = request(store, settings, "correction", corr_id, case_id, target, include_pm=include_pm)
        ledger.mark_correction(store, corr_id, origin="dualseg", push_id=push_id("correction", corr_id))
        if rec is not None:
            enqueue(PUSH_TASK, rec.id, settings.queue_inference)
            queued += 1
    return queued


def sweep(settings: Settings, store: ArtifactStore, enqueue: Enqueue, now: datetime | None = None) -> int:
    """Re-send pushes queued/running longer than ``pacs_pull_grace_s``."""
    return RECORDS.sweep(settings, store, enqueue, now)
