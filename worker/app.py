"""Celery worker app: queues, routing, beat schedule and task registration.

There is no module-level app: ``create_worker_app(settings)`` builds one per process (the `dualseg
worker` and `dualseg beat` commands call it). Inference runs on queue ``inference`` (one worker process
per GPU, prefetch 1, acks late); retraining on queue ``training``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from celery import Celery
from celery.schedules import crontab

from backend.broker import RETRAIN_TASK, SCHEDULED_RETRAIN_TASK, SWEEP_TASK, make_celery, send
from backend.config import Settings, get_settings

log = logging.getLogger("dualseg.worker")


def _cron(expr: str) -> crontab:
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"DUALSEG_RETRAIN_CRON must have 5 fields, got {expr!r}")
    minute, hour, dom, month, dow = parts
    return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)


def create_worker_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = make_celery(settings, name="dualseg-worker")
    schedule: dict[str, Any] = {
        "sweep-stuck-jobs": {"task": SWEEP_TASK, "schedule": float(settings.sweep_interval_s)},
        "scheduled-retraining": {"task": SCHEDULED_RETRAIN_TASK, "schedule": _cron(settings.retrain_cron)},
    }
    app.conf.beat_schedule = schedule

    enqueue = partial(send, app)

    from worker.tasks.maintenance import sweep_once

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep() -> int:
        return sweep_once(settings, enqueue)

    from worker.tasks.segment import register_segment_task

    register_segment_task(app, settings, enqueue)

    from worker.tasks.pacs import beat_entries, register_pacs_tasks

    register_pacs_tasks(app, settings, enqueue)
    schedule.update(beat_entries(settings))

    from backend.storage import ArtifactStore
    from worker.tasks.retrain import run_retrain, scheduled_run

    store = ArtifactStore(settings.resolved_storage_dir)

    @app.task(name=RETRAIN_TASK, acks_late=True, ignore_result=True,
              soft_time_limit=settings.training_time_limit_s, time_limit=settings.training_time_limit_s + 300)
    def retrain(run_id: str) -> str:
        return run_retrain(settings, store, run_id)

    @app.task(name=SCHEDULED_RETRAIN_TASK, ignore_result=True)
    def retrain_scheduled() -> str | None:
        return scheduled_run(settings, enqueue)
    return app
