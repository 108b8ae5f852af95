"""Predict one NIfTI file and write the outputs beside each other (the ``dualseg predict`` command)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from models.data.readers import read_nifti
from models.inference.predictor import Predictor
from models.package import ModelPackage, load_package
from models.runtime import json_safe, resolve_device


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(f".{path.name}.part.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)


def predict_file(
    package: str | Path | ModelPackage, input_path: str | Path, out_dir: str | Path,
    device: str | torch.device | None = "auto", disagreement: bool = True,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Path]:
    """Segment one NIfTI file; every output has the input's grid and affine.

    Writes ``<stem>_mask.nii.gz`` (uint8), ``<stem>_entropy.nii.gz`` (float32 in [0, 1]),
    ``<stem>_regions.json`` and, with ``disagreement``, ``<stem>_disagreement.nii.gz`` (float32 0/1).
    Returns ``{"mask", "entropy", "regions"[, "disagreement"]}`` -> path.
    """
    dev = resolve_device(device)
    src = Path(input_path)
    vol = read_nifti(src)
    pkg = package if isinstance(package, ModelPackage) else load_package(package, dev)
    image = vol.array if vol.array.ndim == 3 else np.moveaxis(vol.array, -1, 0)
    pred = Predictor(pkg, dev, disagreement=disagreement).predict(image, vol.affine, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"\.nii(\.gz)?$", "", src.name)
    paths = {"mask": out / f"{stem}_mask.nii.gz", "entropy": out / f"{stem}_entropy.nii.gz",
             "regions": out / f"{stem}_regions.json"}
    _write_nifti(pred.mask.astype(np.uint8), vol.affine, paths["mask"])
    _write_nifti(pred.entropy.astype(np.float32), vol.affine, paths["entropy"])
    if pred.disagreement is not None:
        paths["disagreement"] = out / f"{stem}_disagreement.nii.gz"
        _write_nifti(pred.disagreement.astype(np.float32), vol.affine, paths["disagreement"])
    card = pkg.card
    counts = np.bincount(pred.mask.ravel(), minlength=card.num_classes)
    doc = {
        "input": str(src), "shape": list(pred.mask.shape), "affine": vol.affine.tolist(),
        "model": {"name": card.name, "version": card.version, "content_hash": card.content_hash},
        "classes": {str(c["index"]): c["name"] for c in card.classes},
        "voxels_per_class": {str(c): int(n) for c, n in enumerate(counts)},
        "mean_entropy": float(pred.entropy.mean()), "timings": pred.timings, "regions": pred.regions,
    }
    tmp = paths["regions"].with_name(f".{paths['regions'].name}.part")
    tmp.write_text(json.dumps(json_safe(doc), indent=1) + "\n")
    tmp.replace(paths["regions"])
    return paths
