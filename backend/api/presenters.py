"""ORM rows -> public schemas."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.schemas.cases import ArtifactPublic, CasePublic, JobPublic, UncertaintySummary
from backend.schemas.models import CorrectionPublic
from backend.services.jobs import queue_position
from backend.tables import Artifact, Case, Correction, Job, JobState

API = "/api/v1"


def case_urls(case_id: str) -> dict[str, str]:
    base = f"{API}/cases/{case_id}"
    return {
        "case": base,
        "image": f"{base}/image",
        "mask": f"{base}/mask?format=nifti",
        "mask_dicom_seg": f"{base}/mask?format=dicom-seg",
        "uncertainty": f"{base}/uncertainty?format=nifti",
        "uncertainty_dicom_pm": f"{base}/uncertainty?format=dicom-pm",
        "uncertainty_png": f"{base}/uncertainty?format=png",
        "regions": f"{base}/regions",
    }


def job_public(session: Session, job: Job) -> JobPublic:
    return JobPublic(
        job_id=job.id, case_id=job.case_id, state=job.state.value,
        queue_position=queue_position(session, job), progress=job.progress, stage=job.stage,
        model_version=job.model_version, attempts=job.attempts, max_attempts=job.max_attempts,
        error=job.error, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, timings=job.timings or {},
        uncertainty=_job_uncertainty(session, job),
    )


def uncertainty_summary(case: Case) -> UncertaintySummary:
    return UncertaintySummary(score=case.uncertainty_score, mean_entropy=case.mean_entropy,
                              region_count=case.region_count, out_of_distribution=case.out_of_distribution,
                              ood_score=case.ood_score, ood_reason=case.ood_reason)


def _job_uncertainty(session: Session, job: Job) -> UncertaintySummary | None:
    if job.state != JobState.succeeded:
        return None
    case = session.get(Case, job.case_id)
    return uncertainty_summary(case) if case is not None and case.latest_job_id == job.id else None


def case_public(session: Session, case: Case, job: Job | None = None,
                with_artifacts: bool = False) -> CasePublic:
    if job is None and case.latest_job_id:
        job = session.get(Job, case.latest_job_id)
    artifacts: list[ArtifactPublic] = []
    if with_artifacts and job is not None:
        rows = session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.kind))
        artifacts = [ArtifactPublic(kind=a.kind, media_type=a.media_type, size_bytes=a.size_bytes,
                                    sha256=a.sha256) for a in rows]
    return CasePublic(
        case_id=case.id, created_at=case.created_at, source_format=case.source_format,
        original_name=case.original_name, shape=list(case.shape), spacing=list(case.spacing),
        modality=case.modality, study_uid=case.study_uid, series_uid=case.series_uid,
        frame_of_reference_uid=case.frame_of_reference_uid, series_description=case.series_description,
        pseudonym=(case.meta or {}).get("pseudonym"),
        sha256=case.sha256, size_bytes=case.size_bytes, num_files=case.num_files,
        model_version=case.model_version, split=case.split,
        uncertainty=uncertainty_summary(case),
        latest_job=job_public(session, job) if job is not None else None,
        artifacts=artifacts, urls=case_urls(case.id),
    )


def correction_public(c: Correction, split: str | None) -> CorrectionPublic:
    return CorrectionPublic(correction_id=c.id, case_id=c.case_id, job_id=c.job_id,
                            model_version=c.model_version, author=c.author, created_at=c.created_at,
                            source_format=c.source_format, sha256=c.sha256, stats=c.stats or {},
                            split=split)
