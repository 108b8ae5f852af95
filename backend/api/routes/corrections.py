"""Corrections of a case (history kept) and their statistics per model version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile

from backend.api.deps import (
    AnnotatorDep,
    CeleryDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    require_role,
)
from backend.api.presenters import correction_public
from backend.broker import RETRAIN_TASK, queue_for, send_job
from backend.errors import BadInput, Conflict
from backend.schemas.models import CorrectionPublic
from backend.services import audit, corrections, training
from backend.services import cases as case_service
from backend.services.uploads import copy_stream, discard, safe_name

router = APIRouter(tags=["corrections"], dependencies=[Depends(require_role("viewer"))])


@router.put("/cases/{case_id}/correction", response_model=CorrectionPublic, status_code=201,
            summary="Upload a corrected label map (NIfTI on the image grid, "
                    "or a DICOM SEG of the case's series)")
def put_correction(case_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep,
                   principal: AnnotatorDep, celery: CeleryDep,
                   file: Annotated[UploadFile, File(description=".nii/.nii.gz label map or DICOM SEG (.dcm)")]
                   ) -> CorrectionPublic:
    import hashlib

    case = case_service.get_case(session, case_id)
    folder = store.tmp_dir()
    try:
        name = safe_name(file.filename, 0)
        path = folder / name
        copy_stream(file.file, path, settings.max_upload_bytes, hashlib.sha256())
        with open(path, "rb") as f:
            head = f.read(132)
        fmt: corrections.Format
        if name.lower().endswith((".nii", ".nii.gz")) or head[:2] == b"\x1f\x8b":
            fmt = "nifti"
            if not name.lower().endswith((".nii", ".nii.gz")):
                path = path.rename(path.with_name(name + ".nii.gz"))
        elif head[128:132] == b"DICM":
            fmt = "dicom-seg"
        else:
            raise BadInput("the correction must be a NIfTI label map (.nii/.nii.gz) or a DICOM SEG file")
        row = corrections.create_correction(session, settings, store, case, path, fmt, author=principal.name)
        audit.record(session, "correction.create", "case", case.id, actor=principal.name,
                     correction_id=row.id, source_format=fmt)
        session.commit()
    finally:
        discard(folder)
    maybe_start_retraining(session, settings, celery)
    return correction_public(row, case.split)


def maybe_start_retraining(session: SessionDep, settings: SettingsDep, celery: CeleryDep) -> None:
    """The optional trigger: a run after N new corrections (DUALSEG_RETRAIN_AFTER_CORRECTIONS)."""
    n = settings.retrain_after_corrections
    if n <= 0 or training.corrections_since_last_run(session) < n:
        return
    try:
        run = training.create_run(session, "corrections", None, {}, None)
    except Conflict:
        return
    session.commit()
    send_job(celery, RETRAIN_TASK, run.id, queue_for(settings, RETRAIN_TASK))


@router.get("/cases/{case_id}/corrections", response_model=list[CorrectionPublic],
            summary="Every correction of a case, newest first")
def list_case_corrections(case_id: str, session: SessionDep) -> list[CorrectionPublic]:
    case = case_service.get_case(session, case_id)
    return [correction_public(c, case.split) for c in corrections.list_corrections(session, case_id)]
