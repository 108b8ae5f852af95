"""Files of one series on disk (pulled by WADO-RS or received by C-STORE) → case + queued job.

The same code path as an HTTP upload, ``services.intake``: staging (limits, hashing, private folder),
``cases.create_case`` (reads and validates the whole series before any row exists), then the job,
committed before the caller sends the task. A case therefore appears only when
its files are complete and valid; a failed ingest leaves nothing behind.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.db import session_scope
from backend.errors import BadInput
from backend.pacs.names import NON_IMAGE_SOP_CLASSES
from backend.services.intake import intake
from backend.storage import ArtifactStore
from backend.tables import Case

log = logging.getLogger("dualseg.pacs.ingest")


@dataclass(frozen=True)
class Ingested:
    case_id: str
    job_id: str | None
    queue: str


def check_image_series(files: list[Path]) -> None:
    """Refuse derived objects (SEG, Parametric Map, SR, ...) early: they are results, not images."""
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception as exc:  # noqa: BLE001 - unreadable files are reported by create_case
        log.debug("header probe failed: %s", type(exc).__name__)
        return
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in NON_IMAGE_SOP_CLASSES:
        raise BadInput(f"the series holds derived objects (SOP class {sop_class}), not images; "
                       "only image series are segmented")


def ingest_files(
    settings: Settings, store: ArtifactStore, files: list[Path], *, series_uid: str | None,
    created_by: str, origin: dict[str, Any], model_version: str | None = None, segment: bool = True,
) -> Ingested:
    """Stage, validate and register the series; queue its segmentation (committed, not yet sent)."""
    if not files:
        raise BadInput("no instance was received for this series")
    check_image_series(files)
    with ExitStack() as stack:
        items: list[tuple[str | None, BinaryIO]] = [(p.name, stack.enter_context(open(p, "rb")))
                                                    for p in files]
        with session_scope(settings.resolved_database_url) as session:
            new = intake(session, settings, store, items, series_uid=series_uid, segment=segment,
                         model_version=model_version, created_by=created_by[:64], meta={"pacs": origin})
            case_id, job_id = new.case.id, new.job.id if new.job else None
    log.info("PACS series ingested as case %s (job %s, origin %s)", case_id, job_id, origin.get("origin"))
    return Ingested(case_id=case_id, job_id=job_id, queue=settings.queue_inference)


def pacs_origin(case: Case) -> dict[str, Any]:
    """Where a case came from (``{}`` for REST uploads)."""
    origin = (case.meta or {}).get("pacs")
    return origin if isinstance(origin, dict) else {}


def case_for_pull(session: Session, series_uid: str, pull_id: str) -> Case | None:
    """The case a pull already created (crash between commit and bookkeeping), if any."""
    for case in session.scalars(select(Case).where(Case.series_uid == series_uid)).all():
        if pacs_origin(case).get("pull_id") == pull_id:
            return case
    return None


def newest_case_for_series(session: Session, series_uid: str, study_uid: str | None = None) -> Case | None:
    query = select(Case).where(Case.series_uid == series_uid)
    if study_uid:
        query = query.where(Case.study_uid == study_uid)
    return session.scalars(query.order_by(Case.created_at.desc())).first()
