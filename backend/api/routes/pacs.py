"""PACS: segment a series of the PACS (DICOMweb pull), import a corrected SEG, push results, status.

Thin: parse → ``backend.pacs`` → public schema. Network calls to the PACS happen in sync routes (thread
pool), except the pull, which is the worker's: ``POST /pacs/segment`` records a pull and answers 202.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse

from backend.api.deps import (
    AnnotatorDep,
    CeleryDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    require_role,
)
from backend.api.presenters import case_urls, correction_public
from backend.broker import PULL_TASK, PUSH_TASK, SEGMENT_TASK, send_job
from backend.errors import BadInput, NotFound
from backend.pacs import ledger, pulls, pushes
from backend.pacs.client import PacsClient, PacsNotConfigured, dicomweb_configured, dicomweb_roots
from backend.pacs.dimse import forward_peer
from backend.pacs.imports import import_instance
from backend.pacs.ingest import newest_case_for_series
from backend.schemas.pacs import (
    ImportSegRequest,
    ImportSegResult,
    PacsSegmentAccepted,
    PacsSegmentRequest,
    PacsStatus,
    PullPublic,
    PushPublic,
    PushRequest,
)
from backend.services import cases as case_service
from backend.services import intake
from backend.tables import Correction, Job, JobState

router = APIRouter(prefix="/pacs", tags=["pacs"], dependencies=[Depends(require_role("viewer"))])
ANNOTATOR = [Depends(require_role("annotator"))]
API = "/api/v1"


def _pull_public(rec: pulls.PullRecord) -> PullPublic:
    urls = {"pull": f"{API}/pacs/pulls/{rec.id}"}
    if rec.case_id:
        urls.update(case_urls(rec.case_id))
    if rec.job_id:
        urls["job"] = f"{API}/jobs/{rec.job_id}"
    return PullPublic(pull_id=rec.id, state=rec.state, study_uid=rec.study_uid, series_uid=rec.series_uid,
                      model_version=rec.model_version, case_id=rec.case_id, job_id=rec.job_id,
                      attempts=rec.attempts, error=rec.error, created_at=rec.created_at,
                      updated_at=rec.updated_at, urls=urls)


def _push_public(rec: pushes.PushRecord) -> PushPublic:
    return PushPublic(push_id=rec.id, kind=rec.kind, ref_id=rec.ref_id, case_id=rec.case_id,
                      target=rec.target, state=rec.state, attempts=rec.attempts, error=rec.error,
                      sop_instance_uids=rec.sop_instance_uids, created_at=rec.created_at,
                      updated_at=rec.updated_at)


@router.post(
    "/segment", status_code=status.HTTP_202_ACCEPTED, response_model=PacsSegmentAccepted,
    dependencies=ANNOTATOR,
    summary="Segment a series of the PACS: the worker fetches it by WADO-RS, creates the case, segments "
            "it and (pacs_push) stores the SEG and the entropy map into the same study by STOW-RS",
    responses={409: {"description": "no DICOMweb PACS configured"}, 422: {"description": "no active model"}},
)
def segment_series(body: PacsSegmentRequest, session: SessionDep, settings: SettingsDep, store: StoreDep,
                   celery: CeleryDep, principal: AnnotatorDep) -> JSONResponse:
    if not dicomweb_configured(settings):
        raise PacsNotConfigured("no DICOMweb PACS is configured: set DUALSEG_PACS_DICOMWEB_URL "
                                "(docs/pacs.md)")
    version = intake.require_model(session, body.model_version)
    if body.reuse_case:
        case = newest_case_for_series(session, body.series_uid, body.study_uid)
        if case is not None:
            job = intake.queue_segmentation(session, settings, case, version)
            session.commit()
            send_job(celery, SEGMENT_TASK, job.id, job.queue)
            out = PacsSegmentAccepted(pull_id=None, state="succeeded", case_id=case.id, job_id=job.id,
                                      urls={**case_urls(case.id), "job": f"{API}/jobs/{job.id}"})
            return JSONResponse(out.model_dump(), status_code=202)
    active = pulls.active_for_series(store, body.series_uid)
    if active is not None and active.study_uid == body.study_uid:
        out = PacsSegmentAccepted(pull_id=active.id, state=active.state, case_id=active.case_id,
                                  job_id=active.job_id, deduplicated=True, urls=_pull_public(active).urls)
        return JSONResponse(out.model_dump(), status_code=202,
                            headers={"Location": f"{API}/pacs/pulls/{active.id}"})
    rec = pulls.create(store, settings, body.study_uid, body.series_uid, model_version=version,
                       requested_by=principal.name[:48], source="api")
    send_job(celery, PULL_TASK, rec.id, settings.queue_inference)
    out = PacsSegmentAccepted(pull_id=rec.id, state=rec.state, case_id=None, job_id=None,
                              urls=_pull_public(rec).urls)
    return JSONResponse(out.model_dump(), status_code=202, headers={"Location": f"{API}/pacs/pulls/{rec.id}"})


@router.get("/pulls/{pull_id}", response_model=PullPublic,
            summary="State of a PACS pull; case_id and job_id appear once the series is fetched and valid")
def get_pull(pull_id: str, store: StoreDep) -> PullPublic:
    return _pull_public(pulls.RECORDS.get(store, pull_id))


@router.post(
    "/import-seg", response_model=ImportSegResult, status_code=201, dependencies=ANNOTATOR,
    summary="Import a DICOM SEG stored in the PACS (e.g. corrected in OHIF or 3D Slicer) as a correction "
            "of the case whose series it references (200 when it was imported before)",
)
def import_seg(body: ImportSegRequest, session: SessionDep, settings: SettingsDep,
               store: StoreDep, principal: AnnotatorDep) -> JSONResponse:
    client = PacsClient(settings)
    try:
        ref = client.find_instance(body.sop_instance_uid, body.study_uid, body.series_uid)
        result = import_instance(session, settings, store, client, ref, author=principal.name)
    finally:
        client.close()
    corr = session.get(Correction, result.correction_id)
    if corr is None:  # pragma: no cover - just committed
        raise NotFound(f"correction {result.correction_id} vanished")
    out = ImportSegResult(
        created=result.created, sop_instance_uid=ref.sop_uid, study_uid=ref.study_uid,
        series_uid=ref.series_uid,
        correction=correction_public(corr, case_service.get_case(session, corr.case_id).split))
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if result.created else 200)


@router.post(
    "/cases/{case_id}/push", response_model=PushPublic, status_code=202, dependencies=ANNOTATOR,
    summary="Send a result (SEG + entropy Parametric Map) or a correction (SEG, SEMIAUTOMATIC/MANUAL) to "
            "the PACS now (STOW-RS, or C-STORE to the configured peer)",
)
def push_case(case_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, celery: CeleryDep,
              body: PushRequest | None = None) -> JSONResponse:
    body = body or PushRequest.model_validate({})
    case = case_service.get_case(session, case_id)
    target = pushes.choose_target(settings, case, body.target)
    if body.what == "result":
        if body.job_id:
            job = session.get(Job, body.job_id)
            if job is None or job.case_id != case.id:
                raise NotFound(f"job {body.job_id} does not belong to case {case.id}")
        else:
            from backend.services.artifacts import result_job

            job = result_job(session, case)
        if job.state != JobState.succeeded:
            raise BadInput(f"job {job.id} is {job.state.value}; only succeeded jobs have results")
        rec = pushes.request(store, settings, "job", job.id, case.id, target, force=True)
    else:
        from backend.services.corrections import list_corrections

        rows = list_corrections(session, case.id)
        corr = next((c for c in rows if c.id == body.correction_id), None) if body.correction_id else \
            (rows[0] if rows else None)
        if corr is None:
            raise NotFound(f"case {case.id} has no correction {body.correction_id or ''}".rstrip())
        rec = pushes.request(store, settings, "correction", corr.id, case.id, target, force=True,
                             include_pm=settings.pacs_push == "after-correction")
        if ledger.correction(store, corr.id) is None:
            ledger.mark_correction(store, corr.id, origin="dualseg",
                                   push_id=pushes.push_id("correction", corr.id))
    assert rec is not None  # force=True always records
    send_job(celery, PUSH_TASK, rec.id, settings.queue_inference)
    return JSONResponse(_push_public(rec).model_dump(), status_code=202,
                        headers={"Location": f"{API}/pacs/pushes/{rec.id}"})


@router.get("/pushes/{push_id}", response_model=PushPublic, summary="State of a push to the PACS")
def get_push(push_id: str, store: StoreDep) -> PushPublic:
    return _push_public(pushes.RECORDS.get(store, push_id))


@router.get("/status", response_model=PacsStatus, dependencies=ANNOTATOR,
            summary="PACS configuration (no secrets) and whether the DICOMweb PACS answers a QIDO-RS query")
def pacs_status(settings: SettingsDep) -> PacsStatus:
    roots = dicomweb_roots(settings)
    dicomweb: dict[str, object] = {"configured": roots is not None, "auth": settings.pacs_auth}
    if roots is not None:
        dicomweb.update({"qido": roots.qido, "wado": roots.wado, "stow": roots.stow})
        try:
            client = PacsClient(settings)
            try:
                client.ping()
            finally:
                client.close()
            dicomweb["reachable"] = True
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            dicomweb["reachable"] = False
            dicomweb["error"] = getattr(exc, "message", type(exc).__name__)
    peer = forward_peer(settings)
    scp = {"ae_title": settings.scp_ae_title, "port": settings.scp_port, "stable_s": settings.scp_stable_s,
           "forward": {"ae_title": peer.ae_title, "host": peer.host, "port": peer.port} if peer else None}
    return PacsStatus(dicomweb=dicomweb, push=settings.pacs_push,
                      poll_interval_s=settings.pacs_poll_interval_s, scp=scp)
