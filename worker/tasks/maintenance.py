"""Periodic maintenance: re-send jobs that a lost message or a dead worker left behind."""

from __future__ import annotations

import logging

from backend.broker import SEGMENT_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.services import jobs

log = logging.getLogger("dualseg.worker.sweep")


def sweep_once(settings: Settings, enqueue: jobs.Enqueue) -> int:
    """Return how many jobs were re-sent. Commits before sending, like every enqueue."""
    with session_scope(settings.resolved_database_url) as session:
        resend = [(j.id, j.queue) for j in jobs.sweep(session, settings.job_queued_grace_s)]
    for job_id, queue in resend:
        enqueue(SEGMENT_TASK, job_id, queue)
    if resend:
        log.warning("sweeper re-sent %d job(s)", len(resend))
    return len(resend)
