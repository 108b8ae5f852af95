"""Cases: upload (→ queued segmentation), worklist, detail, delete, re-run with another model."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse

from backend.api.deps import CeleryDep, OffsetQuery, SessionDep, SettingsDep, StoreDep, require_role
from backend.api.presenters import case_public, case_urls, job_public
from backend.broker import SEGMENT_TASK, send_job
from backend.errors import TooLarge
from backend.schemas.cases import (
    CaseCreated,
    CaseIdentityPublic,
    CaseList,
    CasePublic,
    JobPublic,
    SegmentRequest,
)
from backend.services import audit, identity, intake
from backend.services import cases as case_service

router = APIRouter(prefix="/cases", tags=["cases"], dependencies=[Depends(require_role("viewer"))])
ANNOTATOR = [Depends(require_role("annotator"))]
ADMIN = [Depends(require_role("admin"))]


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=CaseCreated, dependencies=ANNOTATOR,
    summary="Upload a volume (NIfTI, DICOM files, or a zip of a series/study) and queue its segmentation",
    responses={413: {"description": "upload too large"},
               422: {"description": "invalid or unsupported input, or a volume below the minimum shape"}},
)
def create_case(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    celery: CeleryDep,
    files: Annotated[list[UploadFile], File(description="one .nii/.nii.gz, the DICOM files of a series, "
                                                        "or a .zip of a series or study")],
    series_uid: Annotated[str | None, Form(description="which series of a multi-series upload")] = None,
    segment: Annotated[bool, Form(description="false: only store the case")] = True,
    model_version: Annotated[str | None, Form(description="default: the active model")] = None,
) -> JSONResponse:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + 1024 * 1024:
        raise TooLarge(f"the request is {length} bytes; the limit is {settings.max_upload_bytes}")
    new = intake.intake(session, settings, store, [(f.filename, f.file) for f in files],
                        series_uid=series_uid, segment=segment, model_version=model_version,
                        no_model_hint=", or upload with segment=false")
    job, staged = new.job, new.staged
    audit.record_request(session, request, "case.upload", "case", new.case.id,
                         job_id=job.id if job else None, source_format=staged.kind,
                         num_files=new.case.num_files, size_bytes=staged.total_bytes,
                         deidentified=settings.deidentify_on_ingest)
    session.commit()
    if job is not None:
        send_job(celery, SEGMENT_TASK, job.id, job.queue)
    body = CaseCreated(case_id=new.case.id, job_id=job.id if job else None,
                       urls={**case_urls(new.case.id), **({"job": f"/api/v1/jobs/{job.id}"} if job else {})})
    return JSONResponse(body.model_dump(), status_code=202,
                        headers={"Location": f"/api/v1/cases/{new.case.id}"})


@router.get("", response_model=CaseList, summary="The worklist: cases with their latest job")
def list_cases(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
    sort: Annotated[Literal["created", "uncertainty"],
                    Query(description="uncertainty = most uncertain first")] = "created",
    state: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
) -> CaseList:
    rows, total = case_service.list_cases(session, limit=limit, offset=offset, sort=sort, state=state,
                                          modality=modality, study_uid=study_uid)
    return CaseList(items=[case_public(session, c, j) for c, j in rows], total=total, limit=limit,
                    offset=offset)


@router.get("/{case_id}", response_model=CasePublic, summary="One case with its latest job and artifacts")
def get_case(case_id: str, session: SessionDep) -> CasePublic:
    return case_public(session, case_service.get_case(session, case_id), with_artifacts=True)


@router.delete("/{case_id}", status_code=204, dependencies=ADMIN,
               summary="Delete a case, its jobs and every file")
def delete_case(case_id: str, request: Request, session: SessionDep, store: StoreDep) -> None:
    case_service.delete_case(session, store, case_id)
    audit.record_request(session, request, "case.delete", "case", case_id)


@router.get("/{case_id}/identity", response_model=CaseIdentityPublic, dependencies=ADMIN,
            summary="The original patient identifiers of a de-identified case (admin; every read is audited)",
            responses={404: {"description": "no such case, or the case was not de-identified"},
                       409: {"description": "the mapping was encrypted under another secret key"}})
def get_identity(case_id: str, request: Request, session: SessionDep,
                 settings: SettingsDep) -> CaseIdentityPublic:
    row, identifiers = identity.read_identity(session, settings, case_id)
    audit.record_request(session, request, "case.identity_read", "case", case_id)
    return CaseIdentityPublic(case_id=case_id, pseudonym=row.pseudonym, identifiers=identifiers,
                              created_at=row.created_at)


@router.post("/{case_id}/segmentations", status_code=202, response_model=JobPublic, dependencies=ANNOTATOR,
             summary="Segment the case again (e.g. with another model version)")
def resegment(case_id: str, request: Request, session: SessionDep, settings: SettingsDep, celery: CeleryDep,
              body: SegmentRequest | None = None) -> JSONResponse:
    case = case_service.get_case(session, case_id)
    version = intake.require_model(session, body.model_version if body else None)
    job = intake.queue_segmentation(session, settings, case, version)
    audit.record_request(session, request, "case.segment", "case", case.id, job_id=job.id,
                         model_version=version)
    session.commit()
    send_job(celery, SEGMENT_TASK, job.id, job.queue)
    return JSONResponse(job_public(session, job).model_dump(mode="json"), status_code=202)
