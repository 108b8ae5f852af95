"""Job lifecycle: the DB row is the truth (queued → running → succeeded | failed | cancelled).

Used by the API (create, read, cancel) and by the worker (claim, progress, finish, sweep). Tasks are
sent by name with the job ID only, after the row is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.errors import Conflict, NotFound
from backend.tables import Case, Job, JobState, utcnow

log = logging.getLogger("dualseg.jobs")

# (task name, job id, queue) -> None ; the API passes its Celery client, the worker its own app.
Enqueue = Callable[[str, str, str], None]


class JobCancelled(Exception):
    """Raised inside a running job when a user asked to cancel it."""


class LeaseLost(Exception):
    """Raised inside a running job whose row no longer names this worker: it was judged gone (its heartbeat
    stopped for longer than the lease) and the job was re-queued; the new holder's run is the one that
    counts, so this one stops without touching the row."""


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def queue_position(session: Session, job: Job) -> int | None:
    """1 = next to run; None when the job is not queued. Derived from the DB, not the broker."""
    if job.state != JobState.queued:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.state == JobState.queued, Job.queue == job.queue, Job.created_at < job.created_at)
    )
    return int(ahead or 0) + 1


def create_job(
    session: Session, case: Case, queue: str, max_attempts: int, model_version: str | None = None,
    options: dict[str, Any] | None = None,
) -> Job:
    job = Job(
        case_id=case.id, queue=queue, max_attempts=max_attempts, model_version=model_version,
        options=options or {}, state=JobState.queued,
    )
    session.add(job)
    session.flush()
    case.latest_job_id = job.id
    return job


def mark_enqueued(session: Session, job_id: str) -> None:
    job = session.get(Job, job_id)
    if job is not None:
        job.enqueued_at = utcnow()


def cancel(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id)
    if job.state.finished:
        raise Conflict(f"job {job_id} is already {job.state.value}")
    job.cancel_requested = True
    if job.state == JobState.queued:
        job.state = JobState.cancelled
        job.finished_at = utcnow()
        job.error = "cancelled before it started"
    return job


def claim(session: Session, job_id: str, worker: str, lease_s: int,
          worker_id: str | None = None) -> Job | None:
    """Mark the job running for this worker; None when there is nothing to do (finished, cancelled,
    unknown, or held by another live worker). Idempotent under redelivery."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        log.warning("job %s not found; message dropped", job_id)
        return None
    now = utcnow()
    if job.state.finished:
        return None
    if job.cancel_requested:
        job.state, job.finished_at, job.error = JobState.cancelled, now, "cancelled"
        return None
    lease = job.lease_expires_at
    if job.state == JobState.running and lease is not None and lease > now:
        from backend.services.workers import holder_gone

        if job.worker_id is None or not holder_gone(session, job.worker_id, lease_s):
            log.info("job %s is held by %s until %s; skipping duplicate delivery", job_id, job.worker, lease)
            return None
        log.warning("job %s: its worker is gone; taking the redelivered job over", job_id)
    if job.attempts >= job.max_attempts:
        job.state, job.finished_at = JobState.failed, now
        job.error = job.error or f"gave up after {job.attempts} attempts"
        return None
    job.state = JobState.running
    job.attempts += 1
    job.started_at = now
    job.worker = worker
    job.worker_id = worker_id
    job.progress = 0.0
    job.error = None
    job.lease_expires_at = now + timedelta(seconds=lease_s)
    return job


def heartbeat(session: Session, job_id: str, progress: float, stage: str | None, lease_s: int,
              worker_id: str | None = None) -> None:
    """Record progress (0–100) and renew the lease; raise JobCancelled if a cancel was requested, LeaseLost
    if the job was re-queued away from this worker."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobCancelled(f"job {job_id} vanished")
    if worker_id is not None and (job.worker_id != worker_id or job.state != JobState.running):
        raise LeaseLost(f"job {job_id} is no longer held by this worker ({job.state.value})")
    if job.cancel_requested:
        raise JobCancelled(f"job {job_id} was cancelled")
    job.progress = round(max(job.progress, min(100.0, progress)), 2)
    if stage:
        job.stage = stage
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_s)


def finish(session: Session, job_id: str, state: JobState, *, error: str | None = None,
           timings: dict[str, float] | None = None) -> None:
    job = session.get(Job, job_id)
    if job is None:
        return
    job.state = state
    job.finished_at = utcnow()
    job.lease_expires_at = None
    job.error = error
    if state == JobState.succeeded:
        job.progress = 100.0
        job.stage = "done"
    if timings:
        job.timings = {**(job.timings or {}), **timings}


def requeue_or_fail(session: Session, job: Job, reason: str) -> bool:
    """After a transient failure: back to queued (True) or failed when attempts are used up."""
    if job.attempts >= job.max_attempts:
        job.state, job.finished_at = JobState.failed, utcnow()
        job.error = f"{reason} (gave up after {job.attempts} attempts)"
        job.lease_expires_at, job.worker_id = None, None
        return False
    job.state = JobState.queued
    job.lease_expires_at, job.worker_id = None, None
    job.error = reason
    return True


def sweep(session: Session, queued_grace_s: int, now: datetime | None = None) -> list[Job]:
    """Jobs to re-send: running past their lease (worker died) and queued too long (message lost).
    Returns the jobs that must be enqueued again (state queued); the caller commits, then enqueues."""
    now = now or utcnow()
    resend: list[Job] = []
    running = session.scalars(select(Job).where(Job.state == JobState.running)).all()
    for job in running:
        lease = job.lease_expires_at
        if lease is None or lease < now:
            if requeue_or_fail(session, job, "the worker stopped reporting (crash or restart)"):
                resend.append(job)
    cutoff = now - timedelta(seconds=queued_grace_s)
    queued = session.scalars(select(Job).where(Job.state == JobState.queued)).all()
    for job in queued:
        sent = job.enqueued_at or job.created_at
        if sent is not None and sent < cutoff and job not in resend:
            resend.append(job)
    for job in resend:
        job.enqueued_at = now
    return resend
