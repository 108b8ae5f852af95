"""The worker side of liveness (backend/services/workers.py): one heartbeat thread per process that runs
tasks, connected to Celery's worker signals by ``install``.

- ``worker_init`` (the main process, before it consumes anything): re-queue what gone workers held, then
  register this process (solo and threads pools run tasks here).
- ``worker_process_init`` (each prefork pool child): die with the parent (PR_SET_PDEATHSIG) and register the
  child itself, so that the OOM killer taking one child frees its job at once.
- ``beat_embedded_init`` (the child of ``worker --beat``): die with the parent.
- ``worker_shutdown`` / ``worker_process_shutdown``: stop beating and delete the row.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery import Celery, signals

from backend.broker import send
from backend.config import Settings
from backend.db import get_engine, session_scope
from backend.services import workers
from backend.supervisor import die_with_parent

log = logging.getLogger("dualseg.worker.liveness")


class Liveness:
    """This process's ``workers`` row and the thread that keeps it (and its leases) fresh."""

    def __init__(self, settings: Settings, node: str | None) -> None:
        self.settings, self.node = settings, node
        self.pid = os.getpid()
        self.id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._register()
        except Exception as exc:  # noqa: BLE001 - database down at start-up: the thread registers later
            log.warning("could not register this worker yet (%s: %s)", type(exc).__name__, exc)
        self._thread = threading.Thread(target=self._run, name="dualseg-heartbeat", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        with session_scope(self.settings.resolved_database_url) as s:
            self.id = workers.register(s, self.node).id
        log.info("registered as worker %s (pid %d on %s); heartbeat every %g s, lease %d s", self.id,
                 self.pid, workers.hostname(), self.settings.heartbeat_s, self.settings.job_lease_s)

    def beat_once(self) -> None:
        if self.id is None:
            self._register()
            return
        with session_scope(self.settings.resolved_database_url) as s:
            if not workers.heartbeat(s, self.id, self.settings):
                log.warning("worker %s was judged gone (no heartbeat for %d s); registering again",
                            self.id, self.settings.job_lease_s)
                workers.register(s, self.node, worker_id=self.id)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                self.beat_once()
            except Exception as exc:  # noqa: BLE001 - the database may be briefly down; beat again later
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.id is not None:
            try:
                with session_scope(self.settings.resolved_database_url) as s:
                    workers.unregister(s, self.id)
            except Exception as exc:  # noqa: BLE001 - then the row goes stale and is swept
                log.warning("could not unregister worker %s: %s", self.id, exc)


_current: Liveness | None = None


def current_worker_id() -> str | None:
    """The ``workers.id`` of this process, None outside a registered worker (eager tests, scripts)."""
    if _current is not None and _current.pid == os.getpid():
        return _current.id
    return None


def recover_now(settings: Settings, app: Celery) -> int:
    """Re-queue what gone workers held and send their messages; returns how many."""
    with session_scope(settings.resolved_database_url) as s:
        resend = workers.recover(s, settings)
    for task, item_id, queue in resend:
        send(app, task, item_id, queue)
    return len(resend)


def install(app: Celery, settings: Settings) -> None:
    """Connect the liveness hooks (only the `dualseg worker` command calls this)."""

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        global _current
        try:
            n = recover_now(settings, app)
            if n:
                log.warning("start-up: re-queued %d job(s)/run(s) held by stopped workers", n)
        except Exception as exc:  # noqa: BLE001 - the sweeper does it once the database answers
            log.warning("start-up recovery failed (%s: %s); the sweeper retries", type(exc).__name__, exc)
        _current = Liveness(settings, getattr(sender, "hostname", None))
        _current.start()

    def on_process_init(sender: Any = None, **_: Any) -> None:
        global _current
        if _current is not None and _current.pid == os.getpid():
            return  # solo pool: the main process, already registered
        die_with_parent(signal.SIGKILL)
        get_engine(settings.resolved_database_url).dispose(close=False)  # connections of the parent
        _current = Liveness(settings, str(sender) if sender else None)
        _current.start()

    def on_shutdown(**_: Any) -> None:
        if _current is not None and _current.pid == os.getpid():
            _current.stop()

    def on_beat_embedded(**_: Any) -> None:
        die_with_parent(signal.SIGKILL)

    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_shutdown, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    signals.beat_embedded_init.connect(on_beat_embedded, weak=False)
