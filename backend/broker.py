"""Tasks by name: their names, their queues, the Celery configuration and sending, for every process.

The one module that knows how a task travels. The API, the worker, beat, the C-STORE listener and the CLI
all send through it, with IDs only, after the database row is committed; the worker registers its task
functions under the names declared here. It lives beside the Celery configuration (not in a new
``backend/tasks.py``) because the routes ``make_celery`` installs are built from the same name -> queue
table that :func:`queue_for` reads, so names, routes and sending cannot drift apart. It imports neither
torch nor ``worker`` nor ``backend.api`` (the API process stays light, the worker stays out of the HTTP
layer).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

from backend.config import Settings

log = logging.getLogger("dualseg.broker")

SEGMENT_TASK = "dualseg.segment"
SWEEP_TASK = "dualseg.sweep"
RETRAIN_TASK = "dualseg.retrain"
SCHEDULED_RETRAIN_TASK = "dualseg.retrain_scheduled"
# PACS integration (backend/pacs, worker/tasks/pacs.py)
PULL_TASK = "dualseg.pacs.pull"
PUSH_TASK = "dualseg.pacs.push"
PACS_SWEEP_TASK = "dualseg.pacs.sweep"
PACS_POLL_TASK = "dualseg.pacs.poll"

_INFERENCE_TASKS = (SEGMENT_TASK, SWEEP_TASK, PULL_TASK, PUSH_TASK, PACS_SWEEP_TASK, PACS_POLL_TASK)
_TRAINING_TASKS = (RETRAIN_TASK, SCHEDULED_RETRAIN_TASK)


def task_queues(settings: Settings) -> dict[str, str]:
    """Every task name -> the queue it is sent to (segmentation and PACS transfers on the inference queue,
    retraining on the training queue)."""
    queues = {task: settings.queue_inference for task in _INFERENCE_TASKS}
    queues.update({task: settings.queue_training for task in _TRAINING_TASKS})
    return queues


def queue_for(settings: Settings, task: str) -> str:
    """The queue of ``task`` (KeyError for a name that is not declared here)."""
    return task_queues(settings)[task]


def transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if url.startswith("filesystem"):
        folder = str(settings.broker_dir / "in")
        return {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": str(settings.broker_dir / "processed"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    if url.startswith("redis"):
        # A task not acknowledged within this time is redelivered (acks_late + worker died).
        return {"visibility_timeout": settings.job_time_limit_s + 600, "socket_connect_timeout": 5}
    return {}


def make_celery(settings: Settings, name: str = "dualseg") -> Celery:
    """A Celery app configured for this deployment, with no tasks registered."""
    settings.ensure_dirs()
    app = Celery(name, broker=settings.resolved_broker_url, backend=None, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_inference,
        task_queues=[Queue(q, Exchange(q), routing_key=q)
                     for q in (settings.queue_inference, settings.queue_training)],
        task_routes={task: {"queue": queue} for task, queue in task_queues(settings).items()},
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
    return app


def ping_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Raise if the broker cannot be reached within ``timeout`` seconds."""
    url = settings.resolved_broker_url
    if url.startswith("filesystem"):
        folder = settings.broker_dir / "in"
        if not folder.is_dir():
            raise ConnectionError(f"broker folder {folder} is missing")
        probe = folder / ".readyz-probe"
        probe.write_bytes(b"")
        probe.unlink()
        return
    with Connection(url, connect_timeout=timeout, transport_options=transport_options(settings)) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)


def send(app: Celery, task: str, item_id: str, queue: str) -> None:
    """Send ``task`` for one row id on ``queue``; a broker failure raises (the worker's and the CLI's
    re-sends, where the caller decides)."""
    app.send_task(task, args=[item_id], queue=queue)


def send_job(celery: Celery, task: str, job_id: str, queue: str) -> bool:
    """Send after commit. A broker outage is not fatal: the row stays queued and the sweeper re-sends."""
    try:
        celery.send_task(
            task,
            args=[job_id],
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
        return True
    except Exception as exc:  # noqa: BLE001 - any broker failure
        log.warning(
            "could not send job %s to the broker (%s); the sweeper will re-send it",
            job_id,
            type(exc).__name__,
        )
        return False
