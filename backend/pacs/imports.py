"""Corrections made in the PACS (a DICOM SEG saved by OHIF, 3D Slicer, ...) come back as corrections.

``import_instance`` fetches one SEG by WADO-RS, finds the case whose series it references and calls
``services.corrections.create_correction`` (grid and label validation, storage, change statistics).
``poll`` is the periodic QIDO-RS search (beat) for SEGs in the studies of recent DICOM cases that are
neither our own outputs nor already imported. Both are idempotent (the ledger remembers instances).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.db import session_scope
from backend.errors import BadInput, Conflict, DomainError, NotFound
from backend.imaging.errors import ImagingError
from backend.pacs import ledger
from backend.pacs.client import InstanceRef, PacsClient, PacsUnavailable
from backend.pacs.names import OUR_MANUFACTURER, SEG_SOP_CLASS
from backend.services.uploads import discard
from backend.storage import ArtifactStore
from backend.tables import Case, Correction

log = logging.getLogger("dualseg.pacs.import")


@dataclass(frozen=True)
class ImportResult:
    correction_id: str
    case_id: str
    created: bool
    ref: InstanceRef


def referenced_series(ds: Dataset) -> set[str]:
    return {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])
            if "SeriesInstanceUID" in item}


def is_our_automatic_output(ds: Dataset) -> bool:
    """A SEG written by dualseg whose segments are all AUTOMATIC: a model result, not a correction."""
    if str(ds.get("Manufacturer", "")) != OUR_MANUFACTURER:
        return False
    types = {str(seg.get("SegmentAlgorithmType", "")) for seg in ds.get("SegmentSequence", [])}
    return types <= {"AUTOMATIC"}


def case_for_seg(session: Session, ds: Dataset) -> Case:
    """The newest case of a series the SEG references (same study preferred)."""
    series = referenced_series(ds)
    if not series:
        raise BadInput("the SEG has no ReferencedSeriesSequence: it does not say which series it segments")
    rows = session.scalars(select(Case).where(Case.series_uid.in_(sorted(series)))
                           .order_by(Case.created_at.desc())).all()
    study = str(ds.get("StudyInstanceUID", ""))
    same_study = [c for c in rows if c.study_uid == study]
    chosen = (same_study or list(rows))[:1]
    if not chosen:
        raise NotFound(f"no dualseg case holds the series this SEG references ({', '.join(sorted(series))})")
    return chosen[0]


def _existing(session: Session, store: ArtifactStore, ref: InstanceRef) -> ImportResult | None:
    seen = ledger.instance(store, ref.sop_uid)
    if not seen:
        return None
    if seen.get("role") == "output":
        raise Conflict(f"SEG {ref.sop_uid} is one of dualseg's own outputs, not a correction")
    if seen.get("role") == "imported" and session.get(Correction, str(seen.get("correction_id"))) is not None:
        return ImportResult(str(seen["correction_id"]), str(seen["case_id"]), created=False, ref=ref)
    return None


def import_instance(session: Session, settings: Settings, store: ArtifactStore, client: PacsClient,
                    ref: InstanceRef, author: str | None, skip_own: bool = False) -> ImportResult:
    """Import one SEG of the PACS as a correction; commits the session. Idempotent per SOP instance."""
    from backend.services.corrections import create_correction

    done = _existing(session, store, ref)
    if done is not None:
        return done
    ds = client.retrieve_instance(ref)
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise BadInput(f"instance {ref.sop_uid} is not a DICOM Segmentation "
                       f"(SOP class {ds.get('SOPClassUID')})")
    if skip_own and is_our_automatic_output(ds):
        raise Conflict(f"SEG {ref.sop_uid} is an automatic dualseg result, not a correction")
    case = case_for_seg(session, ds)
    folder = store.tmp_dir()
    try:
        path = Path(folder) / "correction.seg.dcm"
        ds.save_as(path, enforce_file_format=True)
        corr = create_correction(session, settings, store, case, path, "dicom-seg",
                                 author=(author or "pacs")[:64])
        # before the commit: the correction push scan must see that this one came from the PACS
        ledger.mark_correction(store, corr.id, origin="pacs", sop_instance_uid=ref.sop_uid)
        session.commit()
    finally:
        discard(folder)
    ledger.mark_instance(store, ref.sop_uid, "imported", case_id=case.id, correction_id=corr.id,
                         study_uid=ref.study_uid, series_uid=ref.series_uid)
    log.info("imported SEG %s as correction %s of case %s", ref.sop_uid, corr.id, case.id)
    return ImportResult(corr.id, case.id, created=True, ref=ref)


@dataclass
class PollResult:
    studies: int = 0
    imported: list[str] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"studies": self.studies, "imported": self.imported, "rejected": self.rejected,
                "errors": self.errors}


def _first(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def recent_studies(settings: Settings, now: datetime | None = None) -> list[str]:
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.pacs_poll_lookback_days)
    with session_scope(settings.resolved_database_url) as s:
        query = select(Case.study_uid).where(Case.source_format == "dicom", Case.study_uid.is_not(None),
                                             Case.created_at >= cutoff)
        rows = s.scalars(query.distinct()).all()
    return sorted(str(r) for r in rows if r)


def poll(settings: Settings, store: ArtifactStore,
         client_factory: Callable[[Settings], PacsClient] = PacsClient,
         now: datetime | None = None) -> PollResult:
    """One QIDO-RS pass over the studies of recent DICOM cases; imports every new SEG."""
    result = PollResult()
    studies = recent_studies(settings, now)
    if not studies:
        return result
    client = client_factory(settings)
    try:
        for study in studies:
            result.studies += 1
            try:
                series = client.search_series(study, modality="SEG")
            except NotFound:
                continue
            for item in series:
                series_uid = _first(item, "0020000E")
                if not series_uid:
                    continue
                for ref in client.search_instances(study, series_uid):
                    if ledger.instance(store, ref.sop_uid) is not None:
                        continue
                    _poll_one(settings, store, client, ref, result)
    except PacsUnavailable as exc:
        result.errors.append(exc.message)
        log.warning("correction poll stopped: %s", exc.message)
    finally:
        client.close()
    if result.imported:
        log.info("correction poll imported %d SEG(s)", len(result.imported))
    return result


def _poll_one(settings: Settings, store: ArtifactStore, client: PacsClient, ref: InstanceRef,
              result: PollResult) -> None:
    with session_scope(settings.resolved_database_url) as session:
        try:
            done = import_instance(session, settings, store, client, ref, author="pacs-poll", skip_own=True)
            result.imported.append(done.correction_id)
        except PacsUnavailable:
            raise
        except (DomainError, ImagingError) as exc:
            session.rollback()
            reason = exc.message if isinstance(exc, DomainError) else str(exc)
            ledger.mark_instance(store, ref.sop_uid, "rejected", reason=reason[:500],
                                 study_uid=ref.study_uid, series_uid=ref.series_uid)
            result.rejected += 1
            log.info("SEG %s not imported: %s", ref.sop_uid, reason)
