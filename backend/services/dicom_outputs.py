"""DICOM outputs of a job: a BINARY SEG of the mask and the entropy Parametric Map, both referencing
the source series (a DICOM upload) or a synthetic series derived from the NIfTI upload (deterministic
UIDs from the case id, so every job of a case references the same series)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from backend.config import Settings
from backend.db import session_scope
from backend.imaging.dicom_refs import DicomSource
from backend.imaging.dicom_series import read_dicom_series
from backend.imaging.errors import ImagingError
from backend.imaging.nifti import read_nifti
from backend.imaging.pmap import build_entropy_pmap
from backend.imaging.seg import build_seg
from backend.imaging.synthetic import nifti_to_dicom_series
from backend.imaging.volume import ImageVolume
from backend.services.artifacts import artifact_key
from backend.services.results import Outputs
from backend.storage import ArtifactStore
from backend.tables import Case, Job

log = logging.getLogger("dualseg.dicom_outputs")


def source_for_case(
    settings: Settings, store: ArtifactStore, case: Case, image: ImageVolume | None = None
) -> DicomSource:
    """The DICOM source a derived object references. ``image``: the case's stored image (``image_key``)
    when the caller has read it already (a NIfTI case's source is made from it)."""
    if case.source_format == "dicom" and case.source_key:
        files = sorted(str(p) for p in store.path(case.source_key).iterdir() if p.is_file())
        volume = read_dicom_series(files, series_uid=case.series_uid, max_voxels=settings.max_voxels)
        assert volume.dicom is not None
        return volume.dicom
    if image is None:
        image = read_nifti(store.path(case.image_key), max_voxels=settings.max_voxels)
    return nifti_to_dicom_series(image, modality="CT" if case.modality == "CT" else "MR", uid_seed=case.id,
                                 pixels=False)  # derived objects reference the source; they need no pixels


def write_dicom_outputs(
    settings: Settings,
    store: ArtifactStore,
    case_id: str,
    job_id: str,
    out: Outputs,
    card: dict[str, Any],
    version: str,
    image: ImageVolume | None = None,
) -> list[str]:
    """Write seg.dcm and entropy-pm.dcm; returns the kinds written. When the geometry cannot be expressed
    in DICOM (e.g. a sheared NIfTI affine) the NIfTI outputs still stand and the reason is kept on the job."""
    with session_scope(settings.resolved_database_url) as s:
        case = s.get(Case, case_id)
        assert case is not None
        s.expunge(case)
    try:
        source = source_for_case(settings, store, case, image)
        seg = build_seg(out.mask, source, card["classes"], model_version=version, uid_seed=job_id)
        pm = build_entropy_pmap(out.entropy, source, model_version=version, uid_seed=job_id)
    except ImagingError as exc:
        log.warning("job %s: no DICOM outputs: %s", job_id, exc)
        with session_scope(settings.resolved_database_url) as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.options = {**(job.options or {}), "dicom_outputs_error": str(exc)}
        return []
    store.write_with(artifact_key(case_id, job_id, "seg_dicom"), lambda p: _save(seg, p))
    store.write_with(artifact_key(case_id, job_id, "pm_dicom"), lambda p: _save(pm, p))
    return ["seg_dicom", "pm_dicom"]


def _save(ds: Any, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)
