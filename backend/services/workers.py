"""Worker liveness (torch-free): every worker process that runs tasks has a ``workers`` row whose
``last_seen_at`` its heartbeat thread refreshes every ``DUALSEG_HEARTBEAT_S``; the same beat renews the
leases of the jobs and training runs the worker holds, so a lease runs out only when the worker stops.

A worker is *gone* when its row is missing, its ``last_seen_at`` is older than ``DUALSEG_JOB_LEASE_S``, or —
judged from the same host — its pid no longer runs (or now belongs to a younger process). ``recover``
re-queues what gone workers held at once; the worker start-up, ``dualseg serve`` and the sweeper call it.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.broker import RETRAIN_TASK, SEGMENT_TASK, queue_for
from backend.config import Settings
from backend.services.jobs import requeue_or_fail
from backend.tables import Job, JobState, RunState, TrainingRun, Worker, utcnow

log = logging.getLogger("dualseg.workers")

# a pid reused by a process that started this long after the row was written is not our worker
PID_START_SLACK_S = 2.0


def hostname() -> str:
    return socket.gethostname()


@lru_cache(maxsize=1)
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def pid_runs(pid: int, registered_at: datetime | None = None) -> bool:
    """True when ``pid`` is a live (non-zombie) process that already ran at ``registered_at``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(pid, 0) is all we know
    if fields[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if registered_at is None or boot is None:
        return True
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started <= registered_at.timestamp() + PID_START_SLACK_S


def register(session: Session, node: str | None, pid: int | None = None,
             worker_id: str | None = None) -> Worker:
    now = utcnow()
    row = Worker(hostname=hostname(), pid=pid or os.getpid(), node=node, started_at=now, last_seen_at=now)
    if worker_id is not None:
        row.id = worker_id
    session.add(row)
    session.flush()
    return row


def unregister(session: Session, worker_id: str) -> None:
    row = session.get(Worker, worker_id)
    if row is not None:
        session.delete(row)


def heartbeat(session: Session, worker_id: str, settings: Settings, now: datetime | None = None) -> bool:
    """Refresh the worker's row and renew the leases of what it holds. False when the row was gone (a
    sweeper judged this worker dead and re-queued its work): the caller registers again.

    A job past its hard time limit (counted from its claim) is not renewed any more: where the pool cannot
    enforce the limit (solo), a hung job is then re-queued by the sweeper one lease later. (Training runs
    keep their first start time across resumes, so they are renewed while their worker beats.)"""
    now = now or utcnow()
    result = session.execute(update(Worker).where(Worker.id == worker_id).values(last_seen_at=now))
    seen = getattr(result, "rowcount", 0)
    job_cutoff = now - timedelta(seconds=settings.job_time_limit_s + 60)
    session.execute(update(Job).where(Job.worker_id == worker_id, Job.state == JobState.running,
                                      Job.started_at >= job_cutoff)
                    .values(lease_expires_at=now + timedelta(seconds=settings.job_lease_s)))
    session.execute(update(TrainingRun)
                    .where(TrainingRun.worker_id == worker_id, TrainingRun.state == RunState.running)
                    .values(lease_expires_at=now + timedelta(seconds=settings.training_lease_s)))
    return bool(seen)


def is_gone(row: Worker, lease_s: int, now: datetime, here: str) -> bool:
    seen = row.last_seen_at
    if seen is None or seen < now - timedelta(seconds=lease_s):
        return True
    return row.hostname == here and not pid_runs(row.pid, row.started_at)


def holder_gone(session: Session, worker_id: str, lease_s: int) -> bool:
    """Is the worker that holds a row gone? (A redelivered message may then take the job over at once.)"""
    row = session.get(Worker, worker_id)
    return row is None or is_gone(row, lease_s, utcnow(), hostname())


def describe(row: Worker | None) -> str:
    return "an unregistered worker" if row is None else f"worker pid {row.pid} on {row.hostname}"


def recover(session: Session, settings: Settings, now: datetime | None = None) -> list[tuple[str, str, str]]:
    """Re-queue the running jobs and training runs of gone workers (a job's attempts grow by one when it is
    claimed again; one that used its attempts up is failed) and delete the gone workers' rows. Returns the
    (task, id, queue) messages to send after the caller commits."""
    now = now or utcnow()
    here = hostname()
    rows = {w.id: w for w in session.scalars(select(Worker))}
    gone = {wid: w for wid, w in rows.items() if is_gone(w, settings.job_lease_s, now, here)}
    live = set(rows) - set(gone)
    resend: list[tuple[str, str, str]] = []
    for job in session.scalars(select(Job).where(Job.state == JobState.running, Job.worker_id.is_not(None))):
        if job.worker_id in live:
            continue
        who = describe(gone.get(job.worker_id or ""))
        log.warning("job %s: %s stopped while running it; re-queued", job.id, who)
        if requeue_or_fail(session, job, f"{who} stopped while running it (killed, e.g. out of memory, "
                                         "or restarted); re-queued"):
            job.enqueued_at = now
            resend.append((SEGMENT_TASK, job.id, job.queue))
    for run in session.scalars(select(TrainingRun).where(TrainingRun.state == RunState.running,
                                                         TrainingRun.worker_id.is_not(None))):
        if run.worker_id in live:
            continue
        log.warning("training run %s: %s stopped; re-queued (it resumes from its checkpoint)", run.id,
                    describe(gone.get(run.worker_id or "")))
        run.state, run.lease_expires_at, run.worker_id = RunState.queued, None, None
        resend.append((RETRAIN_TASK, run.id, queue_for(settings, RETRAIN_TASK)))
    for row in gone.values():
        session.delete(row)
    return resend
