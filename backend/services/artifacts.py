"""Artifacts of a job: kinds, keys, media types, and which job's results a download serves."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import Conflict, NotFound
from backend.storage import ArtifactStore, sha256_file
from backend.tables import Artifact, Case, Job, JobState


@dataclass(frozen=True)
class Kind:
    name: str
    filename: str
    media_type: str


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("mask_nifti", "mask.nii.gz", "application/gzip"),
    Kind("entropy_nifti", "entropy.nii.gz", "application/gzip"),
    Kind("disagreement_nifti", "disagreement.nii.gz", "application/gzip"),
    Kind("regions_json", "regions.json", "application/json"),
    Kind("seg_dicom", "seg.dcm", "application/dicom"),
    Kind("pm_dicom", "entropy-pm.dcm", "application/dicom"),
)}


def artifact_key(case_id: str, job_id: str, kind: str) -> str:
    return f"cases/{case_id}/jobs/{job_id}/{KINDS[kind].filename}"


def record(session: Session, store: ArtifactStore, case_id: str, job_id: str, kind: str) -> Artifact:
    """Insert or refresh the row of an artifact already written at its key (idempotent)."""
    key = artifact_key(case_id, job_id, kind)
    path = store.path(key)
    row = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind)).first()
    if row is None:
        row = Artifact(case_id=case_id, job_id=job_id, kind=kind, key=key, media_type=KINDS[kind].media_type,
                       size_bytes=0, sha256="")
        session.add(row)
    row.size_bytes = path.stat().st_size
    row.sha256 = sha256_file(path)
    return row


def result_job(session: Session, case: Case, job_id: str | None = None) -> Job:
    """The job whose results a download serves: the given one, else the newest succeeded job."""
    if job_id is not None:
        job = session.get(Job, job_id)
        if job is None or job.case_id != case.id:
            raise NotFound(f"job {job_id} does not belong to case {case.id}")
    else:
        job = session.scalars(
            select(Job).where(Job.case_id == case.id, Job.state == JobState.succeeded)
            .order_by(Job.finished_at.desc())
        ).first()
        if job is None:
            latest = session.get(Job, case.latest_job_id) if case.latest_job_id else None
            state = latest.state.value if latest else "not segmented"
            raise Conflict(f"case {case.id} has no result yet (latest job: {state})",
                           details={"job_id": latest.id if latest else None, "state": state})
    if job.state != JobState.succeeded:
        raise Conflict(f"job {job.id} is {job.state.value}; results exist only for succeeded jobs")
    return job


def get_artifact(session: Session, job: Job, kind: str) -> Artifact:
    row = session.scalars(select(Artifact).where(Artifact.job_id == job.id, Artifact.kind == kind)).first()
    if row is None:
        reason = (job.options or {}).get("dicom_outputs_error") if kind in ("seg_dicom", "pm_dicom") else None
        raise NotFound(f"job {job.id} has no {kind} artifact" + (f": {reason}" if reason else ""))
    return row
