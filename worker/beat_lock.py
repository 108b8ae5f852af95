"""Exactly one beat per deployment: the scheduler runs only while this process holds the deployment's
scheduler lock.

- PostgreSQL: a session-level advisory lock on a connection kept open for the life of the process (the
  server frees it the moment that process dies, however it dies). A watchdog thread checks the
  connection; if it breaks (database restart) and the lock cannot be taken back, the process stops itself
  (SIGTERM) rather than schedule next to another beat.
- SQLite (embedded, one host): ``flock`` on ``<data_dir>/beat.lock``, freed by the kernel at process death.

A second beat logs one clear line and stands by, retrying, so it takes over when the holder stops.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from typing import IO, Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from backend.config import Settings

log = logging.getLogger("dualseg.beat")

ADVISORY_KEY = 0x6475616C73656742  # "dualsegB"
WATCH_S = 2.0


class BeatLock:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.postgres = self.url.startswith("postgresql")
        self.path = settings.data_path / "beat.lock"
        self._conn: Any = None
        self._file: IO[str] | None = None

    @property
    def where(self) -> str:
        return (f"PostgreSQL advisory lock {ADVISORY_KEY} on the deployment database" if self.postgres
                else f"file lock {self.path}")

    def try_acquire(self) -> bool:
        return self._try_postgres() if self.postgres else self._try_file()

    def _try_file(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the process
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return True

    def _try_postgres(self) -> bool:
        engine = create_engine(self.url, poolclass=NullPool, connect_args={"connect_timeout": 5})
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar():
            self._conn = conn
            return True
        conn.close()
        return False

    def holder(self) -> str:
        """Who holds the lock, as far as we can tell (for the log line)."""
        if self.postgres:
            try:
                engine = create_engine(self.url, poolclass=NullPool)
                with engine.connect() as conn:
                    pid = conn.execute(text(
                        "SELECT coalesce(host(a.client_addr), 'a local socket') || ' (server pid ' "
                        "|| l.pid || ')' FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND "
                        "l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = :k"),
                        {"k": ADVISORY_KEY}).scalar()
                return f"a beat connected from {pid}" if pid else "another beat"
            except Exception:  # noqa: BLE001
                return "another beat"
        try:
            pid = self.path.read_text().strip()
            return f"beat pid {pid}" if pid else "another beat"
        except OSError:
            return "another beat"

    def acquire_or_wait(self, retry_s: float = 5.0, block: bool = True) -> bool:
        """Take the lock; if another beat holds it, log that this one does not schedule, and (``block``)
        retry every ``retry_s`` seconds until it is free."""
        if self.try_acquire():
            log.info("beat: holding the scheduler lock (%s)", self.where)
            return True
        log.warning("beat: %s holds the scheduler lock (%s): this process does NOT schedule%s",
                    self.holder(), self.where,
                    f"; it takes over within {retry_s:g} s when that one stops" if block else "")
        while block:
            time.sleep(retry_s)
            if self.try_acquire():
                log.warning("beat: took over the scheduler lock (%s); scheduling", self.where)
                return True
        return False

    def watch(self) -> None:
        """PostgreSQL: a daemon thread that keeps checking the lock's connection (see the module doc)."""
        if self.postgres:
            threading.Thread(target=self._watch, name="dualseg-beat-lock", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_S)
            try:
                self._conn.execute(text("SELECT 1"))
                continue
            except Exception as exc:  # noqa: BLE001
                log.warning("beat: the scheduler lock's connection broke (%s); taking it back", exc)
            for _ in range(30):
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
                try:
                    if self._try_postgres():
                        log.info("beat: took the scheduler lock back")
                        break
                    log.error("beat: another beat took the scheduler lock; stopping this one")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                except Exception:  # noqa: BLE001 - the database is still down
                    time.sleep(WATCH_S)
            else:
                log.error("beat: could not take the scheduler lock back; stopping this one")
                os.kill(os.getpid(), signal.SIGTERM)
                return
