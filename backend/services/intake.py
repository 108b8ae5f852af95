"""The one intake use-case: stage → validate → case → job (→ the caller commits and sends the task).

Used by the upload route (``POST /api/v1/cases``), the PACS ingest (DICOMweb pulls and the C-STORE
listener) and the MONAI Label datastore upload. Model resolution and the "no model is active" answer live
here only. Nothing is committed and nothing is sent: the caller commits, then sends the job by name, so a
task never names a row that is not in the database yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import BadInput
from backend.services import cases as case_service
from backend.services import jobs, registry
from backend.services.uploads import StagedUpload, discard, stage_files
from backend.storage import ArtifactStore
from backend.tables import Case, Job

NO_ACTIVE_MODEL = "no model is active: import and promote one first (dualseg models import)"


def resolve_model(session: Session, version: str | None) -> str | None:
    """The requested model version (must exist: 404 otherwise) or the active one (None when none is)."""
    if version:
        return registry.get_version(session, version).version
    active = registry.active_version(session)
    return active.version if active else None


def require_model(session: Session, version: str | None, hint: str = "") -> str:
    """Like ``resolve_model`` but a missing active model is bad input (422) with ``hint`` appended."""
    resolved = resolve_model(session, version)
    if resolved is None:
        raise BadInput(NO_ACTIVE_MODEL + hint)
    return resolved


def queue_segmentation(session: Session, settings: Settings, case: Case, version: str,
                       check_shape: bool = True) -> Job:
    """A queued segmentation job of ``case`` (marked enqueued; not committed, not sent). A case below the
    model's minimum shape (backend/imaging/min_shape.py) is refused with a 422 first, unless the caller
    has just checked it (``check_shape=False``)."""
    if check_shape:
        case_service.check_segmentable(case.shape, case.affine, case_service.model_card(session, version))
    job = jobs.create_job(session, case, settings.queue_inference, settings.job_max_attempts,
                          model_version=version)
    jobs.mark_enqueued(session, job.id)
    return job


@dataclass
class Intake:
    """What one intake produced: the new case, its queued job (None: stored only) and the staged upload's
    summary (its files are gone once ``intake`` returns)."""

    case: Case
    job: Job | None
    staged: StagedUpload


def intake(
    session: Session, settings: Settings, store: ArtifactStore, items: list[tuple[str | None, BinaryIO]], *,
    series_uid: str | None = None, segment: bool = True, model_version: str | None = None,
    created_by: str | None = None, meta: dict[str, Any] | None = None, no_model_hint: str = "",
) -> Intake:
    """Resolve the model first (no file is read when none is active), then stage the files in a private
    folder, validate them completely and create the case (``meta`` merged into ``case.meta``), then queue
    its segmentation. The staging folder is always removed; on error nothing is left behind."""
    version = require_model(session, model_version, no_model_hint) if segment else None
    folder = store.tmp_dir()
    try:
        staged = stage_files(items, folder, settings.max_upload_bytes, settings.max_upload_files)
        new = case_service.create_case(session, settings, store, staged, series_uid=series_uid,
                                       created_by=created_by, model_version=version)
        if meta:
            new.case.meta = {**(new.case.meta or {}), **meta}
        # create_case checked the minimum shape against this version already
        job = (queue_segmentation(session, settings, new.case, version, check_shape=False)
               if version is not None else None)
    finally:
        discard(folder)
    return Intake(case=new.case, job=job, staged=staged)
