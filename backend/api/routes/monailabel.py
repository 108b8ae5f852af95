"""The MONAI Label REST protocol under /monailabel (3D Slicer's MONAI Label module, MONAILabelClient).

Thin: parse → ``backend.services.monailabel`` → MONAI Label's answer shapes. Same bearer tokens and roles
as /api/v1; errors are MONAI Label's ``{"detail": …}`` (backend.main). Login: the OAuth2 password form's
``password`` carries a dualseg token (``dsg_…``), which is checked and handed back as the access token.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from backend.api.deps import (
    AnnotatorDep,
    CeleryDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    ViewerDep,
    require_role,
    resolve_principal,
)
from backend.api.routes.corrections import maybe_start_retraining
from backend.broker import RETRAIN_TASK, SEGMENT_TASK, queue_for, send_job
from backend.errors import BadInput, NotFound, Unauthorized
from backend.imaging.errors import ImagingError
from backend.imaging.nifti import write_nifti
from backend.imaging.nrrd import read_nrrd, write_nrrd
from backend.services import audit, corrections, jobs
from backend.services import monailabel as ml
from backend.services.uploads import copy_stream, discard, safe_name
from backend.tables import Case

PREFIX = "/monailabel"
router = APIRouter(prefix=PREFIX, tags=["monailabel"])
VIEWER = [Depends(require_role("viewer"))]
ANNOTATOR = [Depends(require_role("annotator"))]
ADMIN = [Depends(require_role("admin"))]
ParamsForm = Annotated[str, Form(description="JSON object of MONAI Label params")]


@router.get("/auth/", summary="MONAI Label: is authentication on")
def auth_info(settings: SettingsDep) -> dict[str, Any]:
    return {"enabled": settings.auth_enabled, "client_id": "dualseg", "realm": None}


@router.post("/auth/token", summary="MONAI Label login: the password field carries a dualseg token")
def auth_token(request: Request, session: SessionDep, settings: SettingsDep,
               username: Annotated[str, Form(max_length=256)] = "",
               password: Annotated[str, Form(max_length=4096)] = "") -> dict[str, Any]:
    if not settings.auth_enabled:
        return {"access_token": None, "token_type": None}
    if not password:
        raise Unauthorized("put a dualseg token (dualseg tokens create) into the password field")
    resolve_principal(session, settings, password, getattr(request.app.state, "oidc", None))
    return {"access_token": password, "token_type": "Bearer"}


@router.get("/auth/token/valid", dependencies=VIEWER, summary="MONAI Label: is this token valid")
def auth_valid(principal: ViewerDep) -> dict[str, Any]:
    return {"username": principal.name, "roles": [principal.role.value]}


@router.get("/info/", dependencies=VIEWER, summary="MONAI Label: app info (models, strategies, datastore)")
def info(session: SessionDep) -> dict[str, Any]:
    return ml.info(session)


@router.put("/datastore/", dependencies=ANNOTATOR, summary="MONAI Label: upload an image (becomes a case)")
def upload_image(request: Request, session: SessionDep, settings: SettingsDep, store: StoreDep,
                 celery: CeleryDep, principal: AnnotatorDep, file: Annotated[UploadFile, File()],
                 image: Annotated[str | None, Query(max_length=200)] = None,
                 params: ParamsForm = "{}") -> dict[str, Any]:
    ml.parse_params(params)
    new = ml.upload(session, settings, store, image, file.filename, file.file, principal.name)
    audit.record_request(session, request, "case.upload", "case", new.case.id, via="monailabel",
                         job_id=new.job.id if new.job else None, source_format=new.staged.kind)
    session.commit()
    if new.job is not None:
        send_job(celery, SEGMENT_TASK, new.job.id, new.job.queue)
    return {"image": new.case.id}


@router.get("/datastore/", dependencies=VIEWER, summary="MONAI Label: datastore stats or every image")
def datastore(session: SessionDep,
              output: Literal["stats", "all"] = "stats") -> dict[str, Any]:
    return ml.datastore_all(session) if output == "all" else ml.datastore_stats(session)


def _file(request: Request, session: SessionDep, store: StoreDep, case: Case, key: str, name: str,
          kind: str) -> FileResponse:
    audit.record_request(session, request, "case.download", "case", case.id, kind=kind)
    return FileResponse(store.path(key), media_type="application/gzip", filename=name)


@router.get("/datastore/image", dependencies=VIEWER, response_class=FileResponse,
            summary="MONAI Label: download an image (the case's NIfTI)")
def download_image(request: Request, session: SessionDep, store: StoreDep,
                   image: Annotated[str, Query(max_length=200)]) -> FileResponse:
    case = ml.find_case(session, image)
    return _file(request, session, store, case, case.image_key, f"{case.id}.nii.gz", "monailabel_image")


@router.get("/datastore/label", dependencies=VIEWER, response_class=FileResponse,
            summary="MONAI Label: download a label (final = newest correction, original = model mask)")
def download_label(request: Request, session: SessionDep, store: StoreDep,
                   label: Annotated[str, Query(max_length=200)],
                   tag: Annotated[str, Query(max_length=32)] = "final") -> FileResponse:
    case = ml.find_case(session, label)
    key = ml.label_key(session, case, tag or "final")
    return _file(request, session, store, case, key, f"{case.id}_{tag or 'final'}.nii.gz",
                 f"monailabel_label_{tag or 'final'}")


@router.put("/datastore/label", dependencies=ANNOTATOR,
            summary="MONAI Label: save a label (NIfTI or NRRD on the image grid) as a correction")
def save_label(session: SessionDep, settings: SettingsDep, store: StoreDep, celery: CeleryDep,
               principal: AnnotatorDep, label: Annotated[UploadFile, File()],
               image: Annotated[str, Query(max_length=200)],
               tag: Annotated[str, Query(max_length=32)] = "final",
               params: ParamsForm = "{}") -> dict[str, Any]:
    ml.parse_params(params)
    if tag not in ("", "final"):
        raise BadInput("only tag 'final' can be saved: it becomes the case's correction")
    case = ml.find_case(session, image)
    folder = store.tmp_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        name = safe_name(label.filename, 0)
        path = folder / name
        copy_stream(label.file, path, settings.max_upload_bytes, hashlib.sha256())
        if name.lower().endswith(".nrrd"):
            try:
                data, affine = read_nrrd(path, max_voxels=settings.max_voxels)
            except ImagingError as exc:
                raise BadInput(str(exc)) from exc
            path = folder / "label.nii.gz"
            write_nifti(path, data, affine, dtype=data.dtype)
        elif not name.lower().endswith((".nii", ".nii.gz")):
            raise BadInput("the label must be a NIfTI (.nii/.nii.gz) or NRRD (.nrrd) label map")
        row = corrections.create_correction(session, settings, store, case, path, "nifti",
                                            author=principal.name)
        audit.record(session, "correction.create", "case", case.id, actor=principal.name,
                     correction_id=row.id, source_format="monailabel")
        session.commit()
    finally:
        discard(folder)
    maybe_start_retraining(session, settings, celery)
    return {"image": case.id, "label": row.id, "split": case.split, "stats": row.stats}


def _multipart(params: dict[str, Any], filename: str, data: bytes) -> Response:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
            f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


@router.post("/infer/{model}", dependencies=ANNOTATOR, response_model=None,
             summary="MONAI Label: the case's result as NRRD uint8 (waits for the segmentation job)",
             responses={504: {"description": "the job did not finish in DUALSEG_MONAILABEL_INFER_WAIT_S"}})
def infer(model: str, request: Request, session: SessionDep, settings: SettingsDep, store: StoreDep,
          celery: CeleryDep, principal: AnnotatorDep,
          image: Annotated[str, Query(max_length=200)] = "",
          output: Literal["image", "json", "all"] = "all", params: ParamsForm = "{}",
          file: Annotated[UploadFile | None, File()] = None) -> Response:
    ml.check_model(model)
    ml.parse_params(params)
    if file is not None:  # MONAI Label's "infer on a file": the file becomes a case first
        new = ml.upload(session, settings, store, image or None, file.filename, file.file, principal.name)
        audit.record_request(session, request, "case.upload", "case", new.case.id, via="monailabel")
        session.commit()
        case = new.case
    else:
        case = ml.find_case(session, image)
    job, created = ml.job_to_wait_for(session, settings, case)
    session.commit()
    if created:
        send_job(celery, SEGMENT_TASK, job.id, job.queue)
    ml.wait_for_job(settings, job.id, settings.monailabel_infer_wait_s)
    session.expire_all()
    case, job = ml.find_case(session, case.id), jobs.get_job(session, job.id)
    body = ml.infer_params(case, job, model, ml.classes(session))
    if output == "json":
        return JSONResponse(body)
    volume, affine = ml.result_volume(session, store, job, model)
    folder = store.tmp_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        data = write_nrrd(folder / "result.nrrd", volume, affine).read_bytes()
    finally:
        discard(folder)
    audit.record_request(session, request, "case.download", "case", case.id, kind=f"monailabel_{model}")
    filename = f"{case.id}_{model}.nrrd"
    if output == "image":
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return _multipart(body, filename, data)


@router.post("/activelearning/{strategy}", dependencies=VIEWER,
             summary="MONAI Label: next case to annotate (uncertainty | random); {} when none is left")
def next_sample(strategy: str, session: SessionDep,
                params: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    return ml.next_sample(session, strategy)


@router.get("/train/", dependencies=VIEWER, response_model=None,
            summary="MONAI Label: training status (check_if_running: 200 running, 404 not)")
def train_status(session: SessionDep, check_if_running: bool = False) -> dict[str, Any]:
    run = ml.active_run(session) if check_if_running else ml.latest_run(session)
    if run is None:
        raise NotFound("no training run is running" if check_if_running else "no training run yet")
    return ml.run_status(run)


@router.post("/train/{model}", dependencies=ADMIN, summary="MONAI Label: start a retraining run")
def train_start(model: str, session: SessionDep, settings: SettingsDep, celery: CeleryDep,
                params: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    run = ml.start_training(session, model, params or {})
    session.commit()
    send_job(celery, RETRAIN_TASK, run.id, queue_for(settings, RETRAIN_TASK))
    return ml.run_status(run)


@router.delete("/train/", dependencies=ADMIN, summary="MONAI Label: cancel the running retraining run")
def train_stop(session: SessionDep) -> dict[str, Any]:
    return ml.stop_training(session)

