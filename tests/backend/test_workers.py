"""Worker liveness and restart recovery in-process (SQLite): which workers count as gone, what `recover`
re-queues, the heartbeat renewing leases, a job taken away from a worker, and the scheduler lock."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.broker import RETRAIN_TASK, SEGMENT_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.migrations import run_migrations
from backend.services import jobs, training, workers
from backend.tables import Case, Job, JobState, RunState, TrainingRun, Worker, utcnow


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "var", job_lease_s=60, heartbeat_s=5)
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    return s


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running_job(s: Settings, worker_id: str, lease_s: int = 60) -> str:
    with session_scope(s.resolved_database_url) as session:
        case = Case(source_format="nifti", sha256="0" * 64, image_key="k", shape=[8, 8, 8],
                    spacing=[1, 1, 1], affine=[])
        session.add(case)
        session.flush()
        job = jobs.create_job(session, case, "inference", max_attempts=3)
        session.flush()
        claimed = jobs.claim(session, job.id, "node@host", lease_s, worker_id)
        assert claimed is not None and claimed.attempts == 1
        return job.id


def test_heartbeat_must_fit_three_times_in_each_lease(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="HEARTBEAT_S"):
        Settings(data_dir=tmp_path, job_lease_s=30, heartbeat_s=11)
    with pytest.raises(ValidationError, match="TRAINING_LEASE_S"):
        Settings(data_dir=tmp_path, job_lease_s=600, training_lease_s=30, heartbeat_s=20)
    s = Settings(data_dir=tmp_path)
    assert (s.job_lease_s, s.training_lease_s, s.heartbeat_s) == (120, 120, 20.0)


def test_pid_runs_sees_dead_zombie_free_and_reused_pids() -> None:
    assert workers.pid_runs(os.getpid(), utcnow())
    assert not workers.pid_runs(_dead_pid(), utcnow())
    # our own pid, "registered" before this process started: the pid was reused by a younger process
    assert not workers.pid_runs(os.getpid(), utcnow() - timedelta(days=3650))


def test_recover_requeues_only_what_gone_workers_hold(settings: Settings) -> None:
    s = settings
    url = s.resolved_database_url
    with session_scope(url) as session:
        alive = workers.register(session, "alive@here").id
        dead = workers.register(session, "dead@here", pid=_dead_pid()).id
        silent = workers.register(session, "silent@elsewhere").id
        row = session.get(Worker, silent)
        assert row is not None
        row.hostname = "another-host"  # its pid cannot be checked from here; only last_seen counts
        row.last_seen_at = utcnow() - timedelta(seconds=s.job_lease_s + 1)
    kept, lost_dead, lost_silent = (_running_job(s, w) for w in (alive, dead, silent))
    lost_unknown = _running_job(s, "no-such-worker")
    with session_scope(url) as session:
        run = training.create_run(session, "api", None, {}, None)
        session.flush()
        assert training.claim_run(session, run.id, s.training_lease_s, dead) is not None
        run_id = run.id
    with session_scope(url) as session:
        resend = workers.recover(session, s)
    assert sorted(resend) == sorted([(SEGMENT_TASK, lost_dead, "inference"),
                                     (SEGMENT_TASK, lost_silent, "inference"),
                                     (SEGMENT_TASK, lost_unknown, "inference"),
                                     (RETRAIN_TASK, run_id, "training")])
    with session_scope(url) as session:
        assert {w.id for w in session.query(Worker)} == {alive}
        assert session.get(Job, kept).state == JobState.running  # type: ignore[union-attr]
        for job_id in (lost_dead, lost_silent, lost_unknown):
            job = session.get(Job, job_id)
            assert job is not None and job.state == JobState.queued and job.worker_id is None
            assert job.attempts == 1 and "stopped while running it" in (job.error or "")
        dead_job = session.get(Job, lost_dead)
        assert dead_job is not None and "pid" in (dead_job.error or "")
        tr = session.get(TrainingRun, run_id)
        assert tr is not None and tr.state == RunState.queued and tr.worker_id is None
        again = jobs.claim(session, lost_dead, "node@host", s.job_lease_s, alive)
        assert again is not None and again.attempts == 2
    with session_scope(url) as session:
        assert workers.recover(session, s) == []


def test_heartbeat_renews_held_leases_and_reports_a_lost_row(settings: Settings) -> None:
    s = settings
    url = s.resolved_database_url
    with session_scope(url) as session:
        me = workers.register(session, "me@here").id
    job_id = _running_job(s, me, lease_s=1)
    later = utcnow() + timedelta(seconds=30)
    with session_scope(url) as session:
        assert workers.heartbeat(session, me, s, now=later)
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        row = session.get(Worker, me)
        assert job is not None and row is not None
        assert job.lease_expires_at == later + timedelta(seconds=s.job_lease_s)
        assert row.last_seen_at == later
        # the sweeper would keep this job: its lease is fresh
        assert jobs.sweep(session, s.job_queued_grace_s, now=later + timedelta(seconds=5)) == []
    past_limit = utcnow() + timedelta(seconds=s.job_time_limit_s + 61)
    with session_scope(url) as session:  # a job past its hard time limit (a hung solo worker) is let go
        assert workers.heartbeat(session, me, s, now=past_limit)
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.lease_expires_at == later + timedelta(seconds=s.job_lease_s)
        assert [j.id for j in jobs.sweep(session, s.job_queued_grace_s, now=past_limit)] == [job_id]
        workers.unregister(session, me)
    with session_scope(url) as session:
        assert not workers.heartbeat(session, me, s)


def test_a_requeued_job_is_taken_away_from_its_old_worker(settings: Settings) -> None:
    s = settings
    with session_scope(s.resolved_database_url) as session:
        me = workers.register(session, "me@here").id
    job_id = _running_job(s, me)
    with session_scope(s.resolved_database_url) as session:
        jobs.heartbeat(session, job_id, 50.0, "inference", s.job_lease_s, me)  # still ours
        job = session.get(Job, job_id)
        assert job is not None
        jobs.requeue_or_fail(session, job, "judged gone")
    with session_scope(s.resolved_database_url) as session, pytest.raises(jobs.LeaseLost):
        jobs.heartbeat(session, job_id, 60.0, "inference", s.job_lease_s, me)


def test_file_scheduler_lock_admits_one_holder(tmp_path: Path) -> None:
    from worker.beat_lock import BeatLock

    s = Settings(data_dir=tmp_path / "var")
    first, second = BeatLock(s), BeatLock(s)
    assert first.try_acquire()
    assert not second.acquire_or_wait(block=False)
    assert second.holder() == f"beat pid {os.getpid()}"
    assert first._file is not None
    first._file.close()  # what the kernel does when the holder dies
    assert second.try_acquire()


@pytest.mark.postgres
def test_postgres_scheduler_lock_admits_one_holder(tmp_path: Path, postgres_url: str) -> None:
    from worker.beat_lock import BeatLock

    s = Settings(data_dir=tmp_path / "var", database_url=postgres_url)
    first, second = BeatLock(s), BeatLock(s)
    assert first.try_acquire() and first.postgres
    assert not second.try_acquire()
    assert "server pid" in second.holder()
    first._conn.close()
    assert second.try_acquire()
    second._conn.close()


def test_a_redelivered_job_is_taken_over_only_from_a_gone_worker(settings: Settings) -> None:
    s = settings
    with session_scope(s.resolved_database_url) as session:
        alive = workers.register(session, "alive@here").id
        dead = workers.register(session, "dead@here", pid=_dead_pid()).id
    held, orphaned = _running_job(s, alive), _running_job(s, dead)
    with session_scope(s.resolved_database_url) as session:
        assert jobs.claim(session, held, "other@host", s.job_lease_s, "other") is None  # a duplicate
        taken = jobs.claim(session, orphaned, "other@host", s.job_lease_s, alive)
        assert taken is not None and taken.attempts == 2 and taken.worker_id == alive
