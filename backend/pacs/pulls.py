"""A PACS pull: "segment series S of study T". The API records it and answers 202 at once; the worker
fetches the series by WADO-RS, creates the case through the upload code path (``ingest``) and queues the
segmentation job. Until then there is no case: a case appears only when its files are complete and valid.

The record lives in the artifact store (``ledger``); states ``queued → running → succeeded | failed``.
The PACS sweeper (beat) re-sends pulls that stayed queued/running past ``pacs_pull_grace_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import OperationalError

from backend.broker import PULL_TASK, SEGMENT_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.errors import DomainError
from backend.imaging.errors import ImagingError
from backend.pacs import ledger
from backend.pacs.client import PacsClient, PacsUnavailable, check_uid
from backend.pacs.ingest import Ingested, case_for_pull, ingest_files
from backend.pacs.ledger import FINISHED, Enqueue
from backend.services.uploads import discard
from backend.storage import ArtifactStore
from backend.tables import new_id

log = logging.getLogger("dualseg.pacs.pull")

TRANSIENT = (PacsUnavailable, OperationalError, ConnectionError, TimeoutError)


@dataclass(kw_only=True)
class PullRecord(ledger.TransferRecord):
    study_uid: str
    series_uid: str
    model_version: str | None = None
    requested_by: str | None = None
    source: str = "api"
    case_id: str | None = None
    job_id: str | None = None


def _forget_series(store: ArtifactStore, rec: PullRecord) -> None:
    """A finished pull no longer holds its series: a new request for it starts a new pull."""
    index = ledger.read(store, ledger.key("series", rec.series_uid))
    if index and index.get("pull_id") == rec.id:
        ledger.delete(store, ledger.key("series", rec.series_uid))


RECORDS = ledger.Transfers("pull", "pulls", PullRecord, PULL_TASK, on_finish=_forget_series)


def load(store: ArtifactStore, pull_id: str) -> PullRecord | None:
    return RECORDS.load(store, pull_id)


def save(store: ArtifactStore, rec: PullRecord) -> None:
    RECORDS.save(store, rec)


def active_for_series(store: ArtifactStore, series_uid: str) -> PullRecord | None:
    index = ledger.read(store, ledger.key("series", series_uid))
    if not index:
        return None
    rec = load(store, str(index.get("pull_id", "")))
    return rec if rec is not None and rec.state not in FINISHED else None


def create(store: ArtifactStore, settings: Settings, study_uid: str, series_uid: str, *,
           model_version: str | None, requested_by: str | None, source: str = "api") -> PullRecord:
    """Record a queued pull (the caller sends PULL_TASK afterwards)."""
    rec = PullRecord(id=new_id(), study_uid=check_uid(study_uid, "study UID"),
                     series_uid=check_uid(series_uid, "series UID"), model_version=model_version,
                     requested_by=(requested_by or None), source=source,
                     max_attempts=settings.job_max_attempts, enqueued_at=ledger.now_iso())
    save(store, rec)
    ledger.mark_active(store, "pull", rec.id)
    ledger.write(store, ledger.key("series", series_uid), {"pull_id": rec.id, "at": rec.created_at})
    return rec


def _finish(store: ArtifactStore, rec: PullRecord, state: str, error: str | None = None) -> None:
    RECORDS.finish(store, rec, state, error)


def carry_out(settings: Settings, store: ArtifactStore, pull_id: str, enqueue: Enqueue,
              client_factory: Callable[[Settings], PacsClient] = PacsClient) -> str:
    """The worker side of a pull. Idempotent under redelivery; returns what happened."""
    rec = load(store, pull_id)
    if rec is None:
        log.warning("pull %s not found; message dropped", pull_id)
        return "unknown"
    if rec.state in FINISHED:
        return "skipped"
    with session_scope(settings.resolved_database_url) as s:
        done = case_for_pull(s, rec.series_uid, rec.id)
        done_ids = (done.id, done.latest_job_id) if done is not None else None
    if done_ids is not None:  # the case was committed but the record not updated (crash): finish it
        rec.case_id, rec.job_id = done_ids
        _finish(store, rec, "succeeded")
        return "succeeded"
    rec.state, rec.attempts, rec.error = "running", rec.attempts + 1, None
    save(store, rec)
    folder = store.tmp_dir()
    try:
        client = client_factory(settings)
        try:
            files = client.download_series(rec.study_uid, rec.series_uid, folder / "wado",
                                           settings.max_upload_files, settings.max_upload_bytes)
        finally:
            client.close()
        origin = {"origin": "dicomweb", "pull_id": rec.id, "study_uid": rec.study_uid,
                  "series_uid": rec.series_uid, "source": rec.source}
        ingested: Ingested = ingest_files(settings, store, files, series_uid=rec.series_uid,
                                          created_by=f"pacs:{rec.requested_by or rec.source}",
                                          origin=origin, model_version=rec.model_version)
    except TRANSIENT as exc:
        return RECORDS.retry_later(settings, store, rec, f"temporary failure: {exc}", enqueue)
    except (DomainError, ImagingError) as exc:
        message = exc.message if isinstance(exc, DomainError) else str(exc)
        log.warning("pull %s failed: %s", rec.id, message)
        _finish(store, rec, "failed", message)
        return "failed"
    except Exception as exc:  # noqa: BLE001 - a last failure is recorded, never lost
        log.exception("pull %s failed", rec.id)
        _finish(store, rec, "failed", f"internal error ({type(exc).__name__}: {exc}); see the worker log")
        return "failed"
    finally:
        discard(folder)
    rec.case_id, rec.job_id = ingested.case_id, ingested.job_id
    _finish(store, rec, "succeeded")
    if ingested.job_id:
        enqueue(SEGMENT_TASK, ingested.job_id, ingested.queue)
    return "succeeded"


def sweep(settings: Settings, store: ArtifactStore, enqueue: Enqueue, now: datetime | None = None) -> int:
    """Re-send pulls queued or running longer than ``pacs_pull_grace_s`` (lost message, dead worker)."""
    resent = RECORDS.sweep(settings, store, enqueue, now)
    if resent:
        log.warning("PACS sweeper re-sent %d pull(s)", resent)
    return resent
