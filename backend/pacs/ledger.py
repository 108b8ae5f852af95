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
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from backend.storage import ArtifactStore

PREFIX = "pacs"
ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-_]{0,127}$")
Kind = Literal["pull", "push"]
InstanceRole = Literal["output", "imported", "rejected"]


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
