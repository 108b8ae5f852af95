"""Model registry: model_versions rows + packages on disk. Torch-free: packages are validated by
reading model.json, hashing weights.safetensors and parsing the safetensors header (JSON) — nothing
pickled is ever executed."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import BadInput, Conflict, NotFound
from backend.storage import sha256_file
from backend.tables import ModelState, ModelVersion, utcnow

REQUIRED_CARD_KEYS = ("name", "version", "architecture", "classes", "preprocessing", "patch_size",
                      "content_hash")
PACKAGE_FILES = ("model.json", "weights.safetensors")
STARTER_DIR = Path(__file__).resolve().parents[2] / "models" / "assets" / "starter"


def starter_package_path() -> Path | None:
    return STARTER_DIR if (STARTER_DIR / "model.json").is_file() else None


def active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.state == ModelState.active)).first()


def get_version(session: Session, version: str) -> ModelVersion:
    mv = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    if mv is None:
        raise NotFound(f"model version {version!r} does not exist")
    return mv


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())).all())


def _safetensors_tensor_names(path: Path) -> list[str]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise BadInput("weights.safetensors is truncated")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > 100 * 1024 * 1024:
            raise BadInput("weights.safetensors has an invalid header")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise BadInput("weights.safetensors header is not valid JSON") from exc
    return [k for k in header if k != "__metadata__"]


def validate_package_dir(folder: Path) -> dict[str, Any]:
    """Return the card of a package folder after checking files, card keys, hash and tensor names."""
    for name in PACKAGE_FILES:
        if not (folder / name).is_file():
            raise BadInput(f"model package lacks {name}")
    try:
        card = json.loads((folder / "model.json").read_text())
    except ValueError as exc:
        raise BadInput(f"model.json is not valid JSON: {exc}") from exc
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise BadInput(f"model.json lacks required keys: {', '.join(missing)}")
    digest = sha256_file(folder / "weights.safetensors")
    if digest != card["content_hash"]:
        raise BadInput("weights.safetensors does not match the card's content_hash (corrupt or altered)")
    names = _safetensors_tensor_names(folder / "weights.safetensors")
    if not any(n.startswith("net_a.") for n in names) or not any(n.startswith("net_b.") for n in names):
        raise BadInput("weights.safetensors must hold both networks (keys net_a.* and net_b.*)")
    return dict(card)


def _unzip_package(src: Path, dest: Path) -> None:
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            pure = PurePosixPath(info.filename)
            if pure.is_absolute() or ".." in pure.parts:
                raise BadInput(f"unsafe path in model zip: {info.filename!r}")
            if pure.name not in PACKAGE_FILES:
                raise BadInput(f"unexpected file in model zip: {info.filename!r}")
            if info.file_size > 2 * 1024**3:
                raise BadInput(f"{info.filename} is too large")
            with zf.open(info) as fin, open(dest / pure.name, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def import_package(
    session: Session, settings: Settings, src: Path, activate: bool = False, state: ModelState | None = None,
    training_run_id: str | None = None,
) -> ModelVersion:
    """Validate a package (folder or .zip), copy it into the model dir and register it."""
    src = Path(src)
    with tempfile.TemporaryDirectory(dir=settings.resolved_model_dir) as tmp:
        staging = Path(tmp)
        if src.is_dir():
            for name in PACKAGE_FILES:
                if (src / name).is_file():
                    shutil.copyfile(src / name, staging / name)
        elif zipfile.is_zipfile(src):
            _unzip_package(src, staging)
        else:
            raise BadInput(f"{src.name} is neither a package folder nor a .zip")
        card = validate_package_dir(staging)
        version = str(card["version"])
        existing = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
        if existing is not None:
            if existing.content_hash == card["content_hash"]:
                return existing
            raise Conflict(f"model version {version!r} already exists with different weights")
        target = settings.resolved_model_dir / _safe_dirname(version)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
        staging.mkdir()  # TemporaryDirectory cleanup expects it
    mv = ModelVersion(
        version=version, path=str(target), content_hash=str(card["content_hash"]), card=card,
        metrics=dict(card.get("metrics") or {}), parent_version=card.get("parent_version"),
        state=state or ModelState.candidate, training_run_id=training_run_id,
    )
    session.add(mv)
    session.flush()
    if activate:
        promote(session, version)
    return mv


def promote(session: Session, version: str) -> ModelVersion:
    mv = get_version(session, version)
    for other in session.scalars(select(ModelVersion).where(ModelVersion.state == ModelState.active)):
        if other.id != mv.id:
            other.state = ModelState.retired
    mv.state = ModelState.active
    mv.promoted_at = utcnow()
    return mv


def _safe_dirname(version: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in version)
    return cleaned.strip(".") or hashlib.sha256(version.encode()).hexdigest()[:16]


def rollback(session: Session) -> tuple[ModelVersion, ModelVersion]:
    """Re-activate the version that was active before the current one; returns (new active, retired)."""
    current = active_version(session)
    if current is None:
        raise Conflict("no model is active, so there is nothing to roll back")
    previous = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.state == ModelState.retired, ModelVersion.promoted_at.is_not(None),
               ModelVersion.id != current.id)
        .order_by(ModelVersion.promoted_at.desc())
    ).first()
    if previous is None:
        raise Conflict(f"{current.version} is the only version that was ever active; nothing to roll back to")
    current.state = ModelState.retired
    previous.state = ModelState.active
    # promoted_at of `previous` is kept: the history of promotions stays readable
    return previous, current
