"""Jobs: state, queue position, progress, timings; cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from backend.api.deps import SessionDep, require_role
from backend.api.presenters import job_public
from backend.schemas.cases import JobPublic
from backend.services import audit, jobs

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_role("viewer"))])


@router.get("/{job_id}", response_model=JobPublic, summary="State, queue position and progress of a job")
def get_job(job_id: str, session: SessionDep) -> JobPublic:
    return job_public(session, jobs.get_job(session, job_id))


@router.delete("/{job_id}", response_model=JobPublic, dependencies=[Depends(require_role("annotator"))],
               summary="Cancel a queued or running job")
def cancel_job(job_id: str, request: Request, session: SessionDep) -> JobPublic:
    job = jobs.cancel(session, job_id)
    session.flush()
    audit.record_request(session, request, "job.cancel", "job", job.id, case_id=job.case_id)
    return job_public(session, job)
