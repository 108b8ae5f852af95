"""Celery configuration shared by the API (which only *sends* tasks, by name) and the worker.

The API process never imports ``worker`` or torch: it builds a bare Celery app here and calls
``send_task`` with IDs only, after the database row is committed.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

from backend.config import Settings

SEGMENT_TASK = "dualseg.segment"
SWEEP_TASK = "dualseg.sweep"
RETRAIN_TASK = "dualseg.retrain"
SCHEDULED_RETRAIN_TASK = "dualseg.retrain_scheduled"


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
        task_routes={
            SEGMENT_TASK: {"queue": settings.queue_inference},
            SWEEP_TASK: {"queue": settings.queue_inference},
            RETRAIN_TASK: {"queue": settings.queue_training},
            SCHEDULED_RETRAIN_TASK: {"queue": settings.queue_training},
        },
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
