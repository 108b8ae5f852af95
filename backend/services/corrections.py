"""Corrections: a clinician's label map for a case (NIfTI on the case grid, or a DICOM SEG that
references the case's series). Validated, stored as NIfTI on the case grid, never overwritten, and
compared with the model's mask (does the heatmap point at the errors?)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import BadInput
from backend.imaging.nifti import load_image, write_nifti
from backend.services import artifacts as art
from backend.services import identity, registry, training
from backend.storage import ArtifactStore, sha256_file
from backend.tables import Case, Correction, Job, JobState, new_id

log = logging.getLogger("dualseg.corrections")

Format = Literal["nifti", "dicom-seg"]
FLAG_THRESHOLD = 0.5  # the uncertain-region threshold of the predictor
GRID_TOL_MM = 1e-2


def correction_key(case_id: str, correction_id: str) -> str:
    return f"cases/{case_id}/corrections/{correction_id}.nii.gz"


def _num_classes(session: Session, case: Case) -> int:
    version = case.model_version
    mv = registry.get_version(session, version) if version else registry.active_version(session)
    if mv is None:
        return 256
    return int(mv.card["architecture"]["num_classes"])


def _labels_from_nifti(path: Path, case: Case) -> np.ndarray:
    try:
        img = load_image(path)
        data = np.asarray(img.dataobj)
    except Exception as exc:  # any reader failure is bad input
        raise BadInput(f"the correction is not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    data = np.squeeze(data) if data.ndim > 3 else data
    if tuple(data.shape) != tuple(case.shape):
        raise BadInput(f"the correction's grid {list(data.shape)} differs from the case image {case.shape}; "
                       "save it on the image's grid")
    corners = np.array([[0, 0, 0, 1], [*[n - 1 for n in case.shape], 1]], dtype=float).T
    mm = np.abs(img.affine @ corners - np.asarray(case.affine) @ corners).max()
    if not np.isfinite(mm) or mm > GRID_TOL_MM * 100:
        raise BadInput(f"the correction's affine differs from the case image's by {mm:.3g} mm; "
                       "save it on the image's grid")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.all(np.mod(data, 1) == 0):
            raise BadInput("the correction must hold integer labels (found non-integer or NaN values)")
    return data.astype(np.int64)


def _source_uids(settings: Settings, store: ArtifactStore, case: Case) -> tuple[list[str], str]:
    from backend.imaging.volume import DicomInfo
    from backend.services.dicom_outputs import source_for_case

    src = source_for_case(settings, store, case)
    if isinstance(src, DicomInfo):
        if src.is_multiframe:
            raise BadInput("corrections as DICOM SEG are not supported for multi-frame source series; "
                           "upload a NIfTI label map instead")
        return list(src.sop_instance_uids), src.series_uid
    return [str(ds.SOPInstanceUID) for ds in src], str(src[0].SeriesInstanceUID)


def _labels_from_seg(settings: Settings, store: ArtifactStore, path: Path, case: Case,
                     classes: list[dict[str, Any]] | None) -> np.ndarray:
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise BadInput(f"the correction is not a readable DICOM SEG ({type(exc).__name__}: {exc})") from exc
    uids, series_uid = _source_uids(settings, store, case)
    referenced = {s.SeriesInstanceUID for s in getattr(seg, "ReferencedSeriesSequence", [])}
    if series_uid not in referenced:
        raise BadInput(f"the SEG references series {sorted(referenced)}, not this case's series {series_uid}")
    number_to_label = {}
    by_code = {str(c["type"]["code"]): int(c["index"]) for c in classes or [] if c.get("index")}
    for item in seg.SegmentSequence:
        code = str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        number_to_label[int(item.SegmentNumber)] = by_code.get(code, int(item.SegmentNumber))
    referenced_sops = {x[2] for x in seg.get_source_image_uids()}
    if not referenced_sops & set(uids):
        raise BadInput("the SEG's frames reference none of this case's images")
    out = np.zeros(tuple(case.shape), dtype=np.int64)
    for number, label in number_to_label.items():
        frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[number],
                                                   assert_missing_frames_are_empty=True)
        vol = np.transpose(frames[..., 0], (2, 1, 0))  # (k, row=j, col=i) -> (i, j, k)
        if vol.shape != out.shape:
            raise BadInput(f"the SEG frames {list(vol.shape)} do not match the case grid {case.shape}")
        out[vol > 0] = label
    return out


def latest_result(session: Session, case: Case) -> Job | None:
    return session.scalars(select(Job).where(Job.case_id == case.id, Job.state == JobState.succeeded)
                           .order_by(Job.finished_at.desc())).first()


def change_statistics(model: np.ndarray, corrected: np.ndarray, entropy: np.ndarray | None,
                      regions: list[dict[str, Any]]) -> dict[str, Any]:
    """Dice (foreground), added / removed / relabelled voxels, and where the changes lie."""
    m_fg, c_fg = model > 0, corrected > 0
    inter = int(np.count_nonzero(m_fg & c_fg))
    denom = int(np.count_nonzero(m_fg)) + int(np.count_nonzero(c_fg))
    changed = model != corrected
    n_changed = int(np.count_nonzero(changed))
    stats: dict[str, Any] = {
        "dice": 1.0 if denom == 0 else 2.0 * inter / denom,
        "voxels_added": int(np.count_nonzero(c_fg & ~m_fg)),
        "voxels_removed": int(np.count_nonzero(m_fg & ~c_fg)),
        "voxels_relabelled": int(np.count_nonzero(m_fg & c_fg & changed)),
        "voxels_changed": n_changed,
        "changed_share_of_volume": n_changed / max(1, model.size),
    }
    if entropy is not None:
        flagged = entropy >= FLAG_THRESHOLD
        stats["changed_in_flagged_share"] = (
            None if n_changed == 0 else int(np.count_nonzero(changed & flagged)) / n_changed)
        stats["flagged_share_of_volume"] = float(flagged.mean())
    boxes = np.zeros(model.shape, dtype=bool)
    for r in regions:
        lo, hi = r["bbox_voxel"]["min"], r["bbox_voxel"]["max"]
        boxes[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
    stats["changed_in_region_boxes_share"] = (
        None if n_changed == 0 else int(np.count_nonzero(changed & boxes)) / n_changed)
    return stats


def create_correction(session: Session, settings: Settings, store: ArtifactStore, case: Case, path: Path,
                      fmt: Format, author: str | None) -> Correction:
    """Validate and store a correction; compute its statistics against the latest result."""
    num_classes = _num_classes(session, case)
    job = latest_result(session, case)
    classes = None
    if job is not None and job.model_version:
        classes = registry.get_version(session, job.model_version).card.get("classes")
    labels = (_labels_from_nifti(path, case) if fmt == "nifti"
              else _labels_from_seg(settings, store, path, case, classes))
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise BadInput(f"labels must be in 0..{num_classes - 1} for this model; found {lo}..{hi}")
    labels_u8 = labels.astype(np.uint8)
    stats: dict[str, Any] = {"labels_present": sorted(int(v) for v in np.unique(labels_u8))}
    if job is not None:
        mask_row = art.get_artifact(session, job, "mask_nifti")
        model = np.asarray(load_image(store.path(mask_row.key)).dataobj).astype(np.uint8)
        entropy = None
        try:
            ent_row = art.get_artifact(session, job, "entropy_nifti")
            entropy = np.asarray(load_image(store.path(ent_row.key)).dataobj, dtype=np.float32)
        except Exception:  # noqa: BLE001 - statistics without entropy
            entropy = None
        from backend.services.cases import load_regions

        regions = load_regions(store, art.get_artifact(session, job, "regions_json").key)
        stats.update(change_statistics(model, labels_u8, entropy, regions))
    if fmt == "dicom-seg" and settings.deidentify_on_ingest:  # before anything is stored
        identity.deidentify_correction(settings, case.meta or {}, path)
    cid = new_id()
    key = correction_key(case.id, cid)
    store.write_with(key, lambda p: write_nifti(p, labels_u8, np.asarray(case.affine), dtype=np.uint8))
    if fmt == "dicom-seg":
        store.put_file(f"cases/{case.id}/corrections/{cid}.seg.dcm", path)
    row = Correction(id=cid, case_id=case.id, job_id=job.id if job else None,
                     model_version=job.model_version if job else None, author=author, source_format=fmt,
                     key=key, sha256=sha256_file(store.path(key)), stats=stats)
    session.add(row)
    training.assign_split(session, settings, case)
    session.flush()
    return row


def list_corrections(session: Session, case_id: str) -> list[Correction]:
    return list(session.scalars(select(Correction).where(Correction.case_id == case_id)
                                .order_by(Correction.created_at.desc())).all())


def model_stats(session: Session, version: str) -> dict[str, Any]:
    """Aggregate correction statistics of one model version."""
    rows = session.scalars(select(Correction).where(Correction.model_version == version)).all()
    keys = ("dice", "voxels_changed", "changed_in_flagged_share", "changed_in_region_boxes_share")
    out: dict[str, Any] = {"version": version, "corrections": len(rows),
                           "cases": len({r.case_id for r in rows})}
    for k in keys:
        vals = [float(r.stats[k]) for r in rows if r.stats.get(k) is not None]
        out[k] = {"mean": float(np.mean(vals)) if vals else None, "n": len(vals)}
    return out
