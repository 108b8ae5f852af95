"""Cases: create from a staged upload (validated completely first), list as a worklist, read, delete."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import case as sql_case
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import BadInput, NotFound
from backend.imaging.errors import ImagingError, MultipleSeriesError, VolumeTooSmall
from backend.imaging.min_shape import check_min_shape
from backend.imaging.nifti import read_nifti, write_nifti
from backend.imaging.volume import ImageVolume
from backend.services import identity as identity_service
from backend.services import registry
from backend.services.identity import Identity
from backend.services.uploads import NIFTI_SUFFIXES, StagedUpload
from backend.storage import ArtifactStore
from backend.tables import Case, Job, new_id

log = logging.getLogger("dualseg.cases")

IMAGE_NAME = "image.nii.gz"
SortKey = Literal["created", "uncertainty"]


def case_prefix(case_id: str) -> str:
    return f"cases/{case_id}"


def read_staged_volume(staged: StagedUpload, settings: Settings, series_uid: str | None) -> ImageVolume:
    """Read and validate the staged files; ImagingError becomes a 4xx with the reader's message."""
    try:
        if staged.kind == "nifti":
            return read_nifti(staged.files[0], max_voxels=settings.max_voxels)
        from backend.imaging.dicom_series import read_dicom_series

        return read_dicom_series([str(p) for p in staged.files], series_uid=series_uid,
                                 max_voxels=settings.max_voxels)
    except MultipleSeriesError as exc:
        raise BadInput(str(exc), details={"series": [dataclasses.asdict(x) for x in exc.series]}) from exc
    except ImagingError as exc:
        raise BadInput(str(exc)) from exc


def model_card(session: Session, version: str | None) -> dict[str, Any] | None:
    """The card of model ``version`` (None: no model will segment the case)."""
    return None if version is None else dict(registry.get_version(session, version).card)


def check_segmentable(shape: tuple[int, ...] | list[int], affine: Any, card: dict[str, Any] | None) -> None:
    """The minimum-shape rule (``backend.imaging.min_shape``) as a 422 with the shape and the minimum."""
    try:
        check_min_shape(shape, np.asarray(affine, dtype=float), card)
    except VolumeTooSmall as exc:
        raise BadInput(str(exc), details=exc.details) from exc


def storage_dtype(array: np.ndarray) -> type[np.int16] | type[np.float32]:
    """int16 when every voxel is an integer in its range (CT, most MR: lossless, half the bytes to write,
    store and read back), else float32."""
    if array.size and float(array.min()) >= -32768 and float(array.max()) <= 32767 \
            and np.array_equal(array, np.rint(array)):
        return np.int16
    return np.float32


@dataclass
class NewCase:
    case: Case
    volume: ImageVolume


def _kept_files(staged: StagedUpload, volume: ImageVolume) -> list[Path]:
    """The files a case keeps: the chosen series' instances (DICOM) or the NIfTI file."""
    if volume.dicom is not None and volume.dicom.paths:
        return [Path(p) for p in volume.dicom.paths]
    return list(staged.files)


def _stored_name(n: int, path: Path, neutral: bool) -> str:
    """``000007_<upload name>``; de-identified cases keep no upload file name (it may hold a name)."""
    if not neutral:
        return f"{n:06d}_{path.name.split('_', 1)[-1]}"
    lower = path.name.lower()
    return f"{n:06d}" + next((s for s in NIFTI_SUFFIXES[::-1] if lower.endswith(s)), ".dcm")


def _store_sources(store: ArtifactStore, source_key: str, files: list[Path], neutral_names: bool) -> None:
    source_dir = store.path(source_key)
    source_dir.mkdir(parents=True, exist_ok=True)
    for n, f in enumerate(files):
        shutil.move(str(f), source_dir / _stored_name(n, f, neutral_names))


def _case_row(case_id: str, staged: StagedUpload, volume: ImageVolume, num_files: int,
              identity: Identity | None, deidentified: bool) -> Case:
    prefix = case_prefix(case_id)
    info = volume.dicom
    meta: dict[str, Any] = {"sop_class_uid": info.sop_class_uid} if info else {}
    if deidentified:
        meta = {**meta, "deidentified": True, **({"pseudonym": identity.pseudonym} if identity else {})}
    return Case(
        id=case_id, source_format=staged.kind, original_name=None if deidentified else staged.original_name,
        sha256=staged.sha256, size_bytes=staged.total_bytes, num_files=num_files,
        image_key=f"{prefix}/{IMAGE_NAME}", source_key=f"{prefix}/source", shape=list(volume.shape),
        spacing=[float(s) for s in volume.spacing], affine=np.asarray(volume.affine, dtype=float).tolist(),
        modality=info.modality if info else None, study_uid=info.study_uid if info else None,
        series_uid=info.series_uid if info else None,
        frame_of_reference_uid=info.frame_of_reference_uid if info else None,
        series_description=(info.series_description or None) if info and not deidentified else None,
        meta=meta,
    )


def create_case(
    session: Session, settings: Settings, store: ArtifactStore, staged: StagedUpload,
    series_uid: str | None = None, created_by: str | None = None, model_version: str | None = None,
) -> NewCase:
    """Validate (readable, and not below the minimum shape for ``model_version``, the model that will
    segment it; None = the absolute floor only), de-identify when ``deidentify_on_ingest`` is on, then
    store the canonical NIfTI copy and the source files, then add the row (not committed). On any error
    the case folder is removed, so no half case is left behind."""
    volume = read_staged_volume(staged, settings, series_uid)
    check_segmentable(volume.shape, volume.affine, model_card(session, model_version))
    keep = _kept_files(staged, volume)
    deidentified = settings.deidentify_on_ingest
    identity = identity_service.deidentify_staged(settings, volume, keep) if deidentified else None
    case_id = new_id()
    prefix = case_prefix(case_id)
    try:
        dtype = storage_dtype(volume.array)
        store.write_with(f"{prefix}/{IMAGE_NAME}",
                         lambda tmp: write_nifti(tmp, volume.array, volume.affine, dtype=dtype))
        case = _case_row(case_id, staged, volume, len(keep), identity, deidentified)
        _store_sources(store, str(case.source_key), keep, neutral_names=deidentified)
        case.created_by = created_by
        if identity is not None:
            case.identity = identity_service.mapping_row(settings, case_id, identity)
        session.add(case)
        session.flush()
    except BaseException:
        store.delete_prefix(prefix)
        raise
    return NewCase(case=case, volume=volume)


def get_case(session: Session, case_id: str) -> Case:
    case = session.get(Case, case_id)
    if case is None:
        raise NotFound(f"case {case_id} does not exist")
    return case


def list_cases(
    session: Session, *, limit: int = 50, offset: int = 0, sort: SortKey = "created",
    state: str | None = None, modality: str | None = None, study_uid: str | None = None,
) -> tuple[list[tuple[Case, Job | None]], int]:
    """The worklist: newest first, or most uncertain first — cases flagged out-of-distribution before all
    others (their low entropy is not to be trusted), then by the uncertainty score; cases without a
    result last."""
    query = select(Case, Job).outerjoin(Job, Job.id == Case.latest_job_id)
    if state:
        query = query.where(Job.state == state)
    if modality:
        query = query.where(Case.modality == modality)
    if study_uid:
        query = query.where(Case.study_uid == study_uid)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    if sort == "uncertainty":
        flagged = sql_case((Case.out_of_distribution.is_(True), 0), else_=1)
        query = query.order_by(Case.uncertainty_score.is_(None), flagged, Case.uncertainty_score.desc(),
                               Case.created_at.desc())
    else:
        query = query.order_by(Case.created_at.desc())
    rows = session.execute(query.limit(limit).offset(offset)).all()
    return [(r[0], r[1]) for r in rows], total


def delete_case(session: Session, store: ArtifactStore, case_id: str) -> None:
    case = get_case(session, case_id)
    session.delete(case)
    session.flush()
    store.delete_prefix(case_prefix(case_id))


def load_regions(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    with store.open(key) as f:
        data = json.load(f)
    return list(data["regions"] if isinstance(data, dict) else data)
