"""Periodic maintenance: re-send jobs that a lost message or a dead worker left behind."""

from __future__ import annotations

import logging

from backend.broker import RETRAIN_TASK, SEGMENT_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.services import jobs

log = logging.getLogger("dualseg.worker.sweep")


def sweep_once(settings: Settings, enqueue: jobs.Enqueue) -> int:
    """Return how many jobs and training runs were re-sent. Commits before sending, like every enqueue."""
    from backend.services.training import sweep_runs

    with session_scope(settings.resolved_database_url) as session:
        resend = [(SEGMENT_TASK, j.id, j.queue) for j in jobs.sweep(session, settings.job_queued_grace_s)]
        resend += [(RETRAIN_TASK, run_id, settings.queue_training) for run_id in sweep_runs(session)]
    for task, item_id, queue in resend:
        enqueue(task, item_id, queue)
    if resend:
        log.warning("sweeper re-sent %d job(s)", len(resend))
    return len(resend)
