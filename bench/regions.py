"""Is the uncertainty where the errors are, and are the flagged regions worth going to?

    .venv/bin/python bench/regions.py [--package models/assets/starter] [--work var/bench/ood] [--append]

Per case of the held-out sets of bench/ood.py (MR seed 4, CT seed 200; generated there if missing):

* **band AUROC**: AUROC of the normalised entropy for wrong voxels (prediction ≠ truth), restricted to the
  band of ±3 voxels around the predicted and the true boundaries (bench/ssl_metrics.boundary_band) — not
  pooled over the easy background;
* **wrong in regions**: the share of wrong voxels inside the listed uncertain regions (their voxels);
* **regions / structure**: the listed regions' total volume relative to the true structure's volume;
* the same two for other entropy thresholds of the region extraction (``--thresholds``), to show the
  trade-off. Target (issue 15): ≥ 80 % of wrong voxels inside regions totalling ≤ 30 % of the structure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append  # noqa: E402
from bench.ood import ensure_set  # noqa: E402
from bench.ssl_metrics import auroc, boundary_band, flagged_masks  # noqa: E402


def case_scores(pred: Any, label: np.ndarray, affine: np.ndarray, thresholds: list[float]
                ) -> dict[str, Any]:
    from models.inference.regions import extract_regions

    wrong = pred.mask != label
    band = boundary_band(pred.mask, label)
    structure = max(1, int((label > 0).sum()))
    nan = float("nan")
    out: dict[str, Any] = {
        "band_auroc": auroc(pred.entropy[band], wrong[band]) if band.any() else nan,
        "wrong_share_of_structure": float(wrong.sum()) / structure,
        "wrong_entropy_ge_half": float((pred.entropy[wrong] >= 0.5).mean()) if wrong.any() else nan,
    }
    for t in thresholds:
        regions = (pred.regions if t == 0.5
                   else extract_regions(pred.entropy, affine, threshold=t, mask=pred.mask))
        inside, _ = flagged_masks(pred.entropy, regions, threshold=t)
        out[f"in_regions@{t}"] = float((inside & wrong).sum()) / max(1, int(wrong.sum()))
        out[f"volume@{t}"] = float(inside.sum()) / structure
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", default="models/assets/starter")
    ap.add_argument("--work", default="var/bench/ood")
    ap.add_argument("--sets", nargs="+", default=["mr_test", "ct_test"])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()

    import nibabel as nib
    import torch

    from models.inference.predictor import Predictor
    from models.package import load_package

    torch.set_num_threads(1)
    pkg = load_package(args.package, torch.device("cpu"))
    predictor = Predictor(pkg, "cpu")
    lines = [f"Package `{pkg.card.version}`; means over cases (NaN-free).", "",
             "| set | cases | Dice | band AUROC | wrong voxels / structure | wrong with entropy ≥ 0.5 | "
             + " | ".join(f"wrong in regions @{t} | regions / structure @{t}" for t in args.thresholds)
             + " |",
             "| --- " * (6 + 2 * len(args.thresholds)) + "|"]
    from models.metrics import dice

    for name in args.sets:
        folder = ensure_set(Path(args.work), name)
        rows, dices = [], []
        for img_path in sorted((folder / "imagesTr").glob("*.nii.gz")):
            img: Any = nib.load(img_path)
            seg: Any = nib.load(folder / "labelsTr" / img_path.name)
            label = np.asarray(seg.dataobj).astype(np.uint8)
            pred = predictor.predict(np.asarray(img.dataobj, dtype=np.float32), img.affine)
            rows.append(case_scores(pred, label, img.affine, args.thresholds))
            dices.append(dice(pred.mask > 0, label > 0))

        def m(key: str, rows: list[dict[str, Any]] = rows) -> str:
            v = [r[key] for r in rows if not np.isnan(r[key])]
            return f"{np.mean(v):.3f}" if v else "–"

        cells = [m("band_auroc"), m("wrong_share_of_structure"), m("wrong_entropy_ge_half")]
        for t in args.thresholds:
            cells += [m(f"in_regions@{t}"), m(f"volume@{t}")]
        lines.append(f"| {name} | {len(rows)} | {np.mean(dices):.3f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.append:
        append(f"Uncertainty where the errors are, and region specificity: {pkg.card.version}", text)


if __name__ == "__main__":
    main()
