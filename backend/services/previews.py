"""PNG previews of a job's entropy map over the image (with the mask outline), rendered on request."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from sqlalchemy.orm import Session

from backend.imaging.errors import ImagingError
from backend.imaging.nifti import load_image
from backend.imaging.png import render_montage_png, render_slice_png
from backend.services.artifacts import get_artifact
from backend.storage import ArtifactStore
from backend.tables import Case, Job

Plane = Literal["axial", "coronal", "sagittal"]


def _load(store: ArtifactStore, key: str, dtype: type) -> np.ndarray:
    return np.asarray(load_image(store.path(key)).get_fdata(dtype=np.float32)).astype(dtype)


def render_preview(session: Session, store: ArtifactStore, case: Case, job: Job, *, axis: Plane,
                   index: int | None, tiles: int) -> tuple[bytes, str]:
    """PNG bytes and an ETag (derived from the artifacts' hashes and the view parameters)."""
    entropy_row = get_artifact(session, job, "entropy_nifti")
    mask_row = get_artifact(session, job, "mask_nifti")
    image = _load(store, case.image_key, np.float32)
    entropy = _load(store, entropy_row.key, np.float32)
    mask = _load(store, mask_row.key, np.uint8)
    affine = np.asarray(case.affine, dtype=float)
    try:
        if index is None:
            png = render_montage_png(image, affine, entropy=entropy, mask=mask, axis=axis, count=tiles)
        else:
            png = render_slice_png(image, affine, entropy=entropy, mask=mask, axis=axis, index=index)
    except ImagingError as exc:
        raise IndexError(str(exc)) from exc
    tag = hashlib.sha256(f"{entropy_row.sha256}{mask_row.sha256}{axis}{index}{tiles}".encode()).hexdigest()
    return png, tag[:32]
