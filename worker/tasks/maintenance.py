"""Periodic maintenance: re-send jobs that a lost message or a dead worker left behind."""

from __future__ import annotations

import logging
import time

from backend.broker import RETRAIN_TASK, SEGMENT_TASK, queue_for
from backend.config import Settings
from backend.db import session_scope
from backend.services import jobs

log = logging.getLogger("dualseg.worker.sweep")


def sweep_once(settings: Settings, enqueue: jobs.Enqueue) -> int:
    """Return how many jobs and training runs were re-sent. Commits before sending, like every enqueue.

    First what gone workers held (at once, whatever the lease says), then rows whose lease ran out
    (a worker that stopped beating without being judged gone, rows from before worker registration),
    then queued jobs whose message may be lost."""
    from backend.services.training import sweep_runs
    from backend.services.workers import recover

    with session_scope(settings.resolved_database_url) as session:
        resend = recover(session, settings)
        session.flush()
        resend += [(SEGMENT_TASK, j.id, j.queue) for j in jobs.sweep(session, settings.job_queued_grace_s)
                   if (SEGMENT_TASK, j.id, j.queue) not in resend]
        retrain_queue = queue_for(settings, RETRAIN_TASK)
        resend += [(RETRAIN_TASK, run_id, retrain_queue) for run_id in sweep_runs(session)]
    for task, item_id, queue in resend:
        enqueue(task, item_id, queue)
    if resend:
        log.warning("sweeper re-sent %d job(s)", len(resend))
    removed = remove_orphans(settings)
    if removed:
        log.warning("sweeper removed %d orphaned upload/case folder(s)", removed)
    return len(resend)


def remove_orphans(settings: Settings, now: float | None = None) -> int:
    """Remove what an API process killed mid-request left on disk: upload folders under .incoming and
    case folders that never got their database row. Only folders older than ``orphan_max_age_s`` are
    touched (a live request finishes in seconds); case folders are looked at for one day after that
    age, so a sweep costs a directory listing and, rarely, one query."""
    import shutil

    from sqlalchemy import select

    from backend.tables import Case

    max_age = settings.orphan_max_age_s
    now = now or time.time()
    root = settings.resolved_storage_dir
    removed = 0
    incoming = root / ".incoming"
    for folder in incoming.iterdir() if incoming.is_dir() else []:
        try:
            newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*"))])
        except OSError:
            continue
        if now - newest > max_age:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)
            removed += 1
    cases = root / "cases"
    candidates = {}
    for folder in cases.iterdir() if cases.is_dir() else []:
        try:
            age = now - folder.stat().st_mtime
        except OSError:
            continue
        if folder.is_dir() and max_age < age < max_age + 86400:
            candidates[folder.name] = folder
    if candidates:
        with session_scope(settings.resolved_database_url) as session:
            known = set(session.scalars(select(Case.id).where(Case.id.in_(list(candidates)))))
        for case_id, folder in candidates.items():
            if case_id not in known:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed
