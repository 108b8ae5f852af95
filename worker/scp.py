"""`dualseg scp`: a DICOM C-STORE SCP (pynetdicom) that turns received series into segmentation jobs.

Instances are spooled per series on disk (``scp_spool_dir``/series/<SeriesInstanceUID>/). A series whose
newest instance is older than ``scp_stable_s``, and that no open association is still sending, is
*stable* (like Orthanc's OnStableSeries): it goes through the upload code path (``backend.pacs.ingest``:
stage → validate → case → job, committed) and the job is sent to the inference queue. The spool is the
state, so a restart loses nothing: series received before the restart are ingested once stable. Series
that cannot become a case (not an image series, inconsistent slices, ...) are moved to ``failed/`` with
the reason. Results go back by C-STORE to ``scp_forward_*`` when configured (``backend.pacs.pushes``).
C-ECHO is answered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from backend.broker import SEGMENT_TASK
from backend.config import Settings
from backend.errors import DomainError
from backend.imaging.errors import ImagingError
from backend.pacs.client import UID_RE
from backend.pacs.ingest import Ingested, ingest_files
from backend.storage import ArtifactStore

log = logging.getLogger("dualseg.scp")

Send = Callable[[str, str, str], object]
TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
ORIGIN = "origin.json"

# DIMSE status codes (PS3.4 Annex B / PS3.7 Annex C)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: a series still being sent on an open association is ingested anyway after this many stable periods
OPEN_ASSOCIATION_CAP = 30


def spool_root(settings: Settings) -> Path:
    return (settings.scp_spool_dir or settings.data_path / "scp").resolve()


def allowed_calling_aes(settings: Settings) -> list[str]:
    return [a.strip() for a in settings.scp_allowed_calling_aes.split(",") if a.strip()]


class Spool:
    """Received instances on disk, one folder per series."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.series_root = root / "series"
        self.failed_root = root / "failed"
        self.series_root.mkdir(parents=True, exist_ok=True)
        self.failed_root.mkdir(parents=True, exist_ok=True)

    def add(self, encoded: bytes, series_uid: str, sop_uid: str, origin: dict[str, Any]) -> Path:
        if not all(UID_RE.match(u) and len(u) <= 64 for u in (series_uid, sop_uid)):
            raise ValueError("invalid SeriesInstanceUID or SOPInstanceUID")
        folder = self.series_root / series_uid
        folder.mkdir(exist_ok=True)
        info = folder / ORIGIN
        if not info.exists():
            _atomic_write(info, json.dumps(origin).encode())
        target = folder / f"{sop_uid}.dcm"
        _atomic_write(target, encoded)
        return target

    def stable(self, stable_s: float, now: float | None = None) -> list[Path]:
        """Series folders whose newest instance arrived at least ``stable_s`` seconds ago."""
        now = time.time() if now is None else now
        out = []
        for folder in sorted(p for p in self.series_root.iterdir() if p.is_dir()):
            files = list(folder.glob("*.dcm"))
            if not files:
                if now - folder.stat().st_mtime > max(stable_s, 60.0):
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            newest = max(f.stat().st_mtime for f in files)
            if now - newest >= stable_s:
                out.append(folder)
        return out

    @staticmethod
    def origin(folder: Path) -> dict[str, Any]:
        try:
            data = json.loads((folder / ORIGIN).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def done(self, folder: Path, files: list[Path]) -> None:
        for f in files:
            f.unlink(missing_ok=True)
        if not any(folder.glob("*.dcm")):  # nothing arrived meanwhile
            shutil.rmtree(folder, ignore_errors=True)

    def fail(self, folder: Path, reason: str) -> Path:
        dest = self.failed_root / f"{folder.name}-{int(time.time())}"
        shutil.move(str(folder), dest)
        (dest / "reason.txt").write_text(reason + "\n")
        return dest


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass
class StoreScp:
    """The listener: pynetdicom handlers + the stable-series ingestor."""

    settings: Settings
    store: ArtifactStore
    send: Send
    spool: Spool = field(init=False)
    received: int = 0
    _retry_at: dict[str, float] = field(default_factory=dict)
    #: series still receiving: association id -> series UIDs it stored (a series is not stable while an
    #: association that sent it is open, however slow the sender is; capped by OPEN_ASSOCIATION_CAP)
    _open: dict[int, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.spool = Spool(spool_root(self.settings))

    # DIMSE handlers (called on pynetdicom's association threads) ---------------------------------
    def handle_store(self, event: Any) -> int:
        try:
            ds = event.dataset
            series_uid, sop_uid = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            study_uid = str(ds.get("StudyInstanceUID", ""))
        except Exception as exc:  # noqa: BLE001 - a dataset we cannot parse
            log.warning("C-STORE: unreadable dataset (%s)", type(exc).__name__)
            return CANNOT_UNDERSTAND
        calling = str(event.assoc.requestor.ae_title).strip()
        origin = {"origin": "scp", "calling_ae": calling, "called_ae": self.settings.scp_ae_title,
                  "study_uid": study_uid, "series_uid": series_uid}
        try:
            self.spool.add(event.encoded_dataset(include_meta=True), series_uid, sop_uid, origin)
        except ValueError:
            return CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("C-STORE: cannot spool the instance (%s)", exc)
            return OUT_OF_RESOURCES
        with self._lock:
            self._open.setdefault(id(event.assoc), set()).add(series_uid)
        self.received += 1
        return SUCCESS

    def handle_closed(self, event: Any) -> None:
        """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE: the association's series may become stable."""
        with self._lock:
            self._open.pop(id(event.assoc), None)

    def receiving(self) -> set[str]:
        with self._lock:
            return set().union(*self._open.values()) if self._open else set()

    def handle_echo(self, event: Any) -> int:
        log.info("C-ECHO from %s", str(event.assoc.requestor.ae_title).strip())
        return SUCCESS

    # stable series → cases ---------------------------------------------------------------------
    def ingest_stable(self, now: float | None = None) -> list[Ingested]:
        made: list[Ingested] = []
        clock = time.time() if now is None else now
        busy = self.receiving()
        capped = self.spool.stable(self.settings.scp_stable_s * OPEN_ASSOCIATION_CAP, now)
        for folder in self.spool.stable(self.settings.scp_stable_s, now):
            if self._retry_at.get(folder.name, 0.0) > clock:
                continue
            if folder.name in busy and folder not in capped:
                continue
            files = sorted(folder.glob("*.dcm"))
            origin = self.spool.origin(folder) or {"origin": "scp", "series_uid": folder.name}
            try:
                ingested = ingest_files(self.settings, self.store, files, series_uid=folder.name,
                                        created_by=f"scp:{origin.get('calling_ae') or '?'}", origin=origin)
            except TRANSIENT as exc:
                delay = 30.0
                self._retry_at[folder.name] = clock + delay
                log.warning("series %s: temporary failure (%s); retry in %.0f s", folder.name,
                            type(exc).__name__, delay)
                continue
            except (DomainError, ImagingError) as exc:
                reason = exc.message if isinstance(exc, DomainError) else str(exc)
                dest = self.spool.fail(folder, reason)
                log.warning("series %s is not a case: %s (kept in %s)", folder.name, reason, dest)
                continue
            self._retry_at.pop(folder.name, None)
            self.spool.done(folder, files)
            if ingested.job_id:
                self.send(SEGMENT_TASK, ingested.job_id, ingested.queue)
            made.append(ingested)
        return made

    # server ------------------------------------------------------------------------------------
    def make_ae(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.settings.scp_ae_title)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        allowed = allowed_calling_aes(self.settings)
        if allowed:
            ae.require_calling_aet = allowed
        ae.maximum_pdu_size = 0  # no limit
        return ae

    def serve(self, stop: threading.Event, tick_s: float = 0.5,
              ready: Callable[[], None] | None = None) -> None:
        from pynetdicom import evt

        ae = self.make_ae()
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_RELEASED, self.handle_closed), (evt.EVT_ABORTED, self.handle_closed),
                    (evt.EVT_CONN_CLOSE, self.handle_closed)]
        server = ae.start_server((self.settings.scp_host, self.settings.scp_port), block=False,
                                 evt_handlers=handlers)
        log.info("DICOM SCP %s listening on %s:%d (stable after %.1f s)", self.settings.scp_ae_title,
                 self.settings.scp_host, self.settings.scp_port, self.settings.scp_stable_s)
        if ready is not None:
            ready()
        try:
            while not stop.is_set():
                try:
                    self.ingest_stable()
                except Exception:  # the listener keeps running
                    log.exception("stable-series check failed")
                stop.wait(tick_s)
        finally:
            server.shutdown()


def run_scp(settings: Settings) -> None:
    """Blocking entry point of `dualseg scp` (SIGTERM/SIGINT stop it cleanly)."""
    import signal

    from backend.broker import make_celery, send_job

    settings.ensure_dirs()
    celery = make_celery(settings, name="dualseg-scp")
    scp = StoreScp(settings, ArtifactStore(settings.resolved_storage_dir),
                   send=lambda task, job_id, queue: send_job(celery, task, job_id, queue))
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the SCP", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    scp.serve(stop, ready=lambda: print(f"dualseg scp: {settings.scp_ae_title} on "
                                        f"{settings.scp_host}:{settings.scp_port}", flush=True))
