"""PACS tasks (thin; the logic is in ``backend.pacs``):

- ``dualseg.pacs.pull(pull_id)``   WADO-RS fetch of a series → case → queued segmentation job
- ``dualseg.pacs.push(push_id)``   SEG + entropy map (or a correction SEG) → STOW-RS / C-STORE
- ``dualseg.pacs.sweep()``         beat: re-send stuck pulls/pushes; queue pushes of new corrections
- ``dualseg.pacs.poll()``          beat (pacs_poll_interval_s > 0): import corrected SEGs from the PACS

``after_segment`` is called by the segment task once a job succeeded.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from backend.broker import PACS_POLL_TASK, PACS_SWEEP_TASK, PULL_TASK, PUSH_TASK
from backend.config import Settings
from backend.pacs import imports, pulls, pushes
from backend.pacs.client import dicomweb_configured
from backend.services.jobs import Enqueue
from backend.storage import ArtifactStore

log = logging.getLogger("dualseg.worker.pacs")


def after_segment(settings: Settings, case_id: str, job_id: str, enqueue: Enqueue) -> str | None:
    """Queue the push of the job's SEG + PM when the settings and the case's origin ask for it."""
    store = ArtifactStore(settings.resolved_storage_dir)
    return pushes.after_segment(settings, store, case_id, job_id, enqueue)


def sweep_once(settings: Settings, store: ArtifactStore, enqueue: Enqueue) -> dict[str, int]:
    return {"pulls": pulls.sweep(settings, store, enqueue), "pushes": pushes.sweep(settings, store, enqueue),
            "corrections": pushes.queue_corrections(settings, store, enqueue)}


def beat_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat schedule entries of the PACS integration (merged into the worker app's schedule)."""
    entries: dict[str, dict[str, Any]] = {
        "pacs-sweep": {"task": PACS_SWEEP_TASK, "schedule": float(settings.sweep_interval_s)},
    }
    if settings.pacs_poll_interval_s > 0 and dicomweb_configured(settings):
        entries["pacs-poll-corrections"] = {"task": PACS_POLL_TASK,
                                            "schedule": float(settings.pacs_poll_interval_s)}
    return entries


def register_pacs_tasks(app: Celery, settings: Settings, enqueue: Enqueue) -> None:
    store = ArtifactStore(settings.resolved_storage_dir)
    limit = settings.job_time_limit_s

    @app.task(name=PULL_TASK, acks_late=True, ignore_result=True, soft_time_limit=limit,
              time_limit=limit + 60)
    def pull(pull_id: str) -> str:
        return pulls.carry_out(settings, store, pull_id, enqueue)

    @app.task(name=PUSH_TASK, acks_late=True, ignore_result=True, soft_time_limit=limit,
              time_limit=limit + 60)
    def push(push_id: str) -> str:
        return pushes.carry_out(settings, store, push_id, enqueue)

    @app.task(name=PACS_SWEEP_TASK, ignore_result=True)
    def sweep() -> dict[str, int]:
        return sweep_once(settings, store, enqueue)

    @app.task(name=PACS_POLL_TASK, ignore_result=True, soft_time_limit=limit, time_limit=limit + 60)
    def poll() -> dict[str, Any]:
        return imports.poll(settings, store).as_dict()
