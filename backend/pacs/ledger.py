"""Small JSON records of the PACS integration, kept in the artifact store under ``pacs/``.

The API, the workers and the SCP share the artifact store (a shared volume in production), and every
write here is atomic (temporary file + rename), so these records are safe to read at any time:

- ``pacs/pulls/<id>.json``           a pull request and its state (see ``pulls``)
- ``pacs/pushes/<id>.json``          a push of results or of a correction (see ``pushes``)
- ``pacs/active/<kind>/<id>``        marker of an unfinished pull/push (what the sweeper looks at)
- ``pacs/series/<series uid>.json``  the unfinished pull of a series (deduplicates repeated requests)
- ``pacs/instances/<sop uid>.json``  an instance we know: ``output`` (we sent it), ``imported`` (became a
                                     correction) or ``rejected`` (not importable; the poll skips it)
- ``pacs/corrections/<id>.json``     where a correction came from / whether it was pushed

Pulls and pushes share their bookkeeping (``Transfers``): states ``queued → running → succeeded |
failed``, a bounded retry with back-off, and the sweep that re-sends the ones left behind.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, Self, TypeVar

from backend.config import Settings
from backend.errors import NotFound
from backend.storage import ArtifactStore

PREFIX = "pacs"
ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-_]{0,127}$")
Kind = Literal["pull", "push"]
InstanceRole = Literal["output", "imported", "rejected"]
Enqueue = Callable[[str, str, str], None]
FINISHED = ("succeeded", "failed")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _name(value: str) -> str:
    if not ID_RE.match(value) or ".." in value:
        raise ValueError(f"invalid record name {value!r}")
    return value


def key(folder: str, name: str, suffix: str = ".json") -> str:
    return f"{PREFIX}/{folder}/{_name(name)}{suffix}"


def read(store: ArtifactStore, k: str) -> dict[str, Any] | None:
    try:
        with store.open(k) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def write(store: ArtifactStore, k: str, data: dict[str, Any]) -> None:
    store.put_bytes(k, json.dumps(data, indent=1, sort_keys=True).encode())


def delete(store: ArtifactStore, k: str) -> None:
    store.path(k).unlink(missing_ok=True)


# active markers ---------------------------------------------------------------------------------
def mark_active(store: ArtifactStore, kind: Kind, record_id: str) -> None:
    store.put_bytes(f"{PREFIX}/active/{kind}/{_name(record_id)}", b"")


def clear_active(store: ArtifactStore, kind: Kind, record_id: str) -> None:
    delete(store, f"{PREFIX}/active/{kind}/{_name(record_id)}")


def active_ids(store: ArtifactStore, kind: Kind) -> list[str]:
    folder = store.path(f"{PREFIX}/active/{kind}")
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


# instances we know -------------------------------------------------------------------------------
def instance(store: ArtifactStore, sop_uid: str) -> dict[str, Any] | None:
    return read(store, key("instances", sop_uid))


def mark_instance(store: ArtifactStore, sop_uid: str, role: InstanceRole, **info: Any) -> None:
    write(store, key("instances", sop_uid),
          {"sop_instance_uid": sop_uid, "role": role, "at": now_iso(), **info})


# corrections -------------------------------------------------------------------------------------
def correction(store: ArtifactStore, correction_id: str) -> dict[str, Any] | None:
    return read(store, key("corrections", correction_id))


def mark_correction(store: ArtifactStore, correction_id: str, **info: Any) -> None:
    old = correction(store, correction_id) or {}
    write(store, key("corrections", correction_id),
          {**old, "correction_id": correction_id, "at": now_iso(), **info})


# pulls and pushes --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TransferRecord:
    """The fields every pull and push record has (``pulls.PullRecord``, ``pushes.PushRecord``)."""

    id: str
    state: str = "queued"
    attempts: int = 0
    max_attempts: int = 3
    error: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    enqueued_at: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


R = TypeVar("R", bound=TransferRecord)


class Transfers(Generic[R]):
    """The records of one kind (``pacs/<folder>/<id>.json``, active marker ``kind``) and the task that
    carries one out; ``on_finish`` tidies up after a record reaches a final state."""

    def __init__(self, kind: Kind, folder: str, record: type[R], task: str,
                 on_finish: Callable[[ArtifactStore, R], None] | None = None) -> None:
        self.kind, self.folder, self.record, self.task, self.on_finish = kind, folder, record, task, on_finish

    def load(self, store: ArtifactStore, record_id: str) -> R | None:
        data = read(store, key(self.folder, record_id))
        return self.record.from_dict(data) if data else None

    def get(self, store: ArtifactStore, record_id: str) -> R:
        """The record, else NotFound (also when ``record_id`` cannot name a record)."""
        try:
            rec = self.load(store, record_id)
        except ValueError:
            rec = None
        if rec is None:
            raise NotFound(f"{self.kind} {record_id} does not exist")
        return rec

    def save(self, store: ArtifactStore, rec: R) -> None:
        rec.updated_at = now_iso()
        write(store, key(self.folder, rec.id), asdict(rec))

    def finish(self, store: ArtifactStore, rec: R, state: str, error: str | None = None) -> None:
        rec.state, rec.error = state, error
        self.save(store, rec)
        clear_active(store, self.kind, rec.id)
        if self.on_finish is not None:
            self.on_finish(store, rec)

    def retry_later(self, settings: Settings, store: ArtifactStore, rec: R, reason: str,
                    enqueue: Enqueue) -> str:
        """After a temporary failure: queue it again after a back-off, or fail it when out of attempts."""
        if rec.attempts >= rec.max_attempts:
            self.finish(store, rec, "failed", f"{reason} (gave up after {rec.attempts} attempts)")
            return "failed"
        rec.state, rec.error, rec.enqueued_at = "queued", reason, now_iso()
        self.save(store, rec)
        time.sleep(min(30.0, 2.0 ** rec.attempts))
        enqueue(self.task, rec.id, settings.queue_inference)
        return "retrying"

    def sweep(self, settings: Settings, store: ArtifactStore, enqueue: Enqueue,
              now: datetime | None = None) -> int:
        """Re-send records queued or running longer than ``pacs_pull_grace_s`` (lost message, dead
        worker); fail those out of attempts; drop the markers of finished ones. Returns how many were sent."""
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=settings.pacs_pull_grace_s)
        resent = 0
        for record_id in active_ids(store, self.kind):
            rec = self.load(store, record_id)
            if rec is None or rec.state in FINISHED:
                clear_active(store, self.kind, record_id)
                continue
            last = parse_iso(rec.enqueued_at if rec.state == "queued" else rec.updated_at)
            if last is not None and last > cutoff:
                continue
            if rec.attempts >= rec.max_attempts:
                self.finish(store, rec, "failed", rec.error or f"gave up after {rec.attempts} attempts")
                continue
            rec.state, rec.enqueued_at = "queued", now.isoformat()
            self.save(store, rec)
            enqueue(self.task, rec.id, settings.queue_inference)
            resent += 1
        return resent
