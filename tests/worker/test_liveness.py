"""The heartbeat thread keeps a job's lease alive while one long step gives no progress, and the worker's
row goes away with a clean stop."""

from __future__ import annotations

import time
from pathlib import Path

from backend.config import Settings
from backend.db import session_scope
from backend.migrations import run_migrations
from backend.services import jobs
from backend.tables import Case, Job, Worker, utcnow
from worker.liveness import Liveness


def test_heartbeat_thread_renews_the_lease_during_a_silent_step(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var", job_lease_s=1, training_lease_s=1, heartbeat_s=0.2)
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    beat = Liveness(s, "test@here")
    beat.start()
    try:
        assert beat.id is not None
        with session_scope(s.resolved_database_url) as session:
            case = Case(source_format="nifti", sha256="0" * 64, image_key="k", shape=[8, 8, 8],
                        spacing=[1, 1, 1], affine=[])
            session.add(case)
            session.flush()
            job = jobs.create_job(session, case, "inference", max_attempts=3)
            session.flush()
            assert jobs.claim(session, job.id, "test@here", s.job_lease_s, beat.id) is not None
            job_id = job.id
        time.sleep(2.5)  # two and a half leases without any progress update from the task
        with session_scope(s.resolved_database_url) as session:
            row = session.get(Job, job_id)
            assert row is not None and row.state.value == "running"
            lease = row.lease_expires_at
            assert lease is not None and lease > utcnow()
            assert jobs.sweep(session, s.job_queued_grace_s) == []
            me = session.get(Worker, beat.id)
            assert me is not None and (utcnow() - (me.last_seen_at or utcnow())).total_seconds() < 1
    finally:
        beat.stop()
    with session_scope(s.resolved_database_url) as session:
        assert session.get(Worker, beat.id) is None
