"""Write a job's outputs (torch-free): NIfTI mask / entropy / disagreement, regions JSON, and the DICOM
SEG + entropy Parametric Map, all on the input's own grid, each published atomically."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from backend.imaging.nifti_write import write_entropy_nifti, write_nifti
from backend.services.artifacts import artifact_key
from backend.storage import ArtifactStore

log = logging.getLogger("dualseg.results")

ROI_ENTROPY = 0.05


@dataclass
class Outputs:
    mask: np.ndarray
    entropy: np.ndarray
    disagreement: np.ndarray | None
    regions: list[dict[str, Any]]
    affine: np.ndarray
    #: the case-level verdict of models/inference/ood.py (``ood_score``, ``out_of_distribution``,
    #: ``ood_reason``); empty when the predictor computed none
    ood: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def summary(self) -> dict[str, Any]:
        return {**uncertainty_summary(self.mask, self.entropy, self.regions),
                "out_of_distribution": self.ood.get("out_of_distribution"),
                "ood_score": self.ood.get("ood_score"), "ood_reason": self.ood.get("ood_reason")}

    @property
    def reliability(self) -> dict[str, Any]:
        """What the regions JSON says about trusting its own ranking."""
        flagged = bool(self.ood.get("out_of_distribution"))
        note = ("the volume is unlike the model's training data: entropy can be low where the model is "
                "wrong, so the region ranking is unreliable; review the whole volume" if flagged else None)
        return {"out_of_distribution": self.ood.get("out_of_distribution"),
                "ood_score": self.ood.get("ood_score"), "ood_reason": self.ood.get("ood_reason"),
                "region_ranking_reliable": not flagged, "note": note}


def uncertainty_summary(
    mask: np.ndarray, entropy: np.ndarray, regions: list[dict[str, Any]]
) -> dict[str, Any]:
    """Worklist numbers: mean entropy overall and in the region of interest (foreground ∪ entropy ≥ 0.05)."""
    roi = (mask > 0) | (entropy >= ROI_ENTROPY)
    score = float(entropy[roi].mean()) if roi.any() else 0.0
    return {"mean_entropy": float(entropy.mean()), "uncertainty_score": score, "region_count": len(regions)}


def write_volume_outputs(
    store: ArtifactStore, case_id: str, job_id: str, out: Outputs, model: dict[str, Any],
    threads: int = 2,
) -> list[str]:
    """NIfTI + JSON artifacts; returns the artifact kinds written.

    mask uint8 (labels), entropy as int16 scaled to [0, 1] by ``scl_slope`` (round-trip error <= 1.6e-5,
    ``backend.imaging.nifti_write``), disagreement uint8 (0/1). The files are written by ``threads``
    threads (gzip and the slab conversions release the GIL)."""
    writers: list[tuple[str, Callable[[Path], None]]] = [
        ("entropy_nifti", partial(write_entropy_nifti, entropy=out.entropy, affine=out.affine)),
        ("mask_nifti", partial(write_nifti, array=out.mask, affine=out.affine, dtype=np.uint8)),
    ]
    if out.disagreement is not None:
        writers.append(("disagreement_nifti",
                        partial(write_nifti, array=out.disagreement, affine=out.affine, dtype=np.uint8)))
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="write-nifti") as pool:
        futures = [pool.submit(store.write_with, artifact_key(case_id, job_id, kind), fn)
                   for kind, fn in writers]
        for f in futures:
            f.result()
    kinds = [kind for kind, _ in writers]
    doc = {
        "case_id": case_id,
        "job_id": job_id,
        "model": model,
        "shape": list(out.mask.shape),
        "affine": np.asarray(out.affine, dtype=float).tolist(),
        "summary": out.summary,
        "reliability": out.reliability,
        "regions": out.regions,
    }
    store.put_bytes(artifact_key(case_id, job_id, "regions_json"), json.dumps(doc, indent=1).encode())
    kinds.append("regions_json")
    return kinds
