"""Out-of-distribution flag and starter quality on both phantom families (models/inference/ood.py).

    .venv/bin/python bench/ood.py [--package models/assets/starter] [--work var/bench/ood] [--append]

Sets (fixed before any measurement; each case depends only on its family, seed and index):

| role | MR family (``dualseg phantoms``) | CT family (``--family ct``) |
| --- | --- | --- |
| reference (only when the package records none) | seed 0, cases 0-39 (the starter's training set) | — |
| development: every choice (features, margin) | seed 3, 20 cases | seed 100, 10 cases |
| held out: reported only | seed 4, 20 cases | seed 200, 10 cases |

For each case: Dice of the package's prediction, the worklist uncertainty score, the case features and the
OOD score. Reported per split: AUROC of the score (CT positive, MR negative), the share of MR cases flagged
(target ≤ 5 %), the share of CT cases flagged (target 100 %), mean Dice per family. ``--sweep`` also prints
the development-set table over margins and feature groups that the defaults were chosen from (rule, fixed
beforehand: the largest development AUROC; among ties the configuration that flags every CT case with the
fewest MR flags; then the margin closest to 1.5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append  # noqa: E402

SETS = {  # name -> (family, seed, cases)
    "mr_ref": ("mr", 0, 40), "mr_dev": ("mr", 3, 20), "ct_dev": ("ct", 100, 10),
    "mr_test": ("mr", 4, 20), "ct_test": ("ct", 200, 10),
}
GROUPS = {
    "all": None,
    "intensity": ("q01", "q10", "q50", "q90", "q99"),
    "model": ("fg_log_share", "fg_confidence", "roi_entropy", "disagreement"),
}


def ensure_set(work: Path, name: str) -> Path:
    from models.data.phantoms import write_phantom_dataset

    family, seed, cases = SETS[name]
    out = work / "data" / name
    if not (out / "dataset.json").exists():
        write_phantom_dataset(out, cases, seed=seed, test_cases=0, family=family)
    return out


def score_set(predictor: Any, folder: Path) -> list[dict[str, Any]]:
    """Per case: Dice, worklist score, features, the package's own OOD verdict."""
    import nibabel as nib

    from backend.services.results import uncertainty_summary
    from models.metrics import dice

    rows = []
    for img_path in sorted((folder / "imagesTr").glob("*.nii.gz")):
        img: Any = nib.load(img_path)
        label = np.asarray(cast(Any, nib.load(folder / "labelsTr" / img_path.name)).dataobj)
        pred = predictor.predict(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        summary = uncertainty_summary(pred.mask, pred.entropy, pred.regions)
        rows.append({"case": img_path.name, "dice": dice(pred.mask > 0, label > 0),
                     "uncertainty_score": summary["uncertainty_score"], "features": pred.features,
                     "ood": pred.ood})
    return rows


Rows = list[dict[str, Any]]


def evaluate(reference: dict[str, Any], neg: Rows, pos: Rows) -> dict[str, Any]:
    from models.inference.ood import score_case
    from models.metrics import auroc

    s_neg = [score_case(reference, r["features"])["ood_score"] for r in neg]
    s_pos = [score_case(reference, r["features"])["ood_score"] for r in pos]
    scores = np.array(s_neg + s_pos)
    y = np.array([False] * len(s_neg) + [True] * len(s_pos))
    return {"auroc": auroc(scores, y), "mr_flagged": float(np.mean(np.array(s_neg) >= 0.5)),
            "ct_flagged": float(np.mean(np.array(s_pos) >= 0.5)),
            "mr_score_max": float(max(s_neg)), "ct_score_min": float(min(s_pos))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", default="models/assets/starter")
    ap.add_argument("--work", default="var/bench/ood")
    ap.add_argument("--sweep", action="store_true", help="print the development-set choice table")
    ap.add_argument("--append", action="store_true", help="append the result to bench/RESULTS.md")
    args = ap.parse_args()

    import torch

    from models.inference.ood import FEATURES, fit_reference
    from models.inference.predictor import Predictor
    from models.package import load_package

    torch.set_num_threads(1)
    work = Path(args.work)
    pkg = load_package(args.package, torch.device("cpu"))
    predictor = Predictor(pkg, "cpu")
    cache = work / f"scores-{pkg.card.version}.json"
    results: dict[str, list[dict[str, Any]]] = json.loads(cache.read_text()) if cache.exists() else {}
    t0 = time.perf_counter()
    own = pkg.card.training.get("ood_reference")
    needed = [n for n in SETS if n != "mr_ref" or not own or args.sweep]
    for name in needed:
        if name not in results:
            results[name] = score_set(predictor, ensure_set(work, name))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(results))
    seconds = time.perf_counter() - t0
    reference = own or fit_reference([r["features"] for r in results["mr_ref"]])
    lines = []
    if args.sweep:
        lines += ["Development sets (mr_dev negative, ct_dev positive):", "",
                  "| features | margin | AUROC | MR flagged | CT flagged | max MR score | min CT score |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for group, feats in GROUPS.items():
            for margin in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0):
                ref = fit_reference([r["features"] for r in results["mr_ref"]], margin=margin,
                                    features=tuple(feats or FEATURES))
                e = evaluate(ref, results["mr_dev"], results["ct_dev"])
                lines.append(f"| {group} | {margin} | {e['auroc']:.3f} | {e['mr_flagged']:.0%} | "
                             f"{e['ct_flagged']:.0%} | {e['mr_score_max']:.3f} | {e['ct_score_min']:.3f} |")
        lines.append("")
    where = "recorded in the package" if own else "fitted on mr_ref"
    lines += [f"Package `{pkg.card.version}`; reference: {where} ({reference['cases']} cases, margin "
              f"{reference['margin']}, threshold {reference['threshold']:.3f}).",
              "", "| split | AUROC | MR flagged | CT flagged | max MR score | min CT score |",
              "| --- | --- | --- | --- | --- | --- |"]
    for split in ("dev", "test"):
        e = evaluate(reference, results[f"mr_{split}"], results[f"ct_{split}"])
        lines.append(f"| {split} | {e['auroc']:.3f} | {e['mr_flagged']:.0%} | {e['ct_flagged']:.0%} | "
                     f"{e['mr_score_max']:.3f} | {e['ct_score_min']:.3f} |")
    lines += ["", "| set | cases | mean Dice | min | max | mean worklist score |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name in needed:
        d = [r["dice"] for r in results[name]]
        u = [r["uncertainty_score"] for r in results[name]]
        lines.append(f"| {name} | {len(d)} | {np.mean(d):.3f} | {min(d):.3f} | {max(d):.3f} | "
                     f"{np.mean(u):.3f} |")
    lines.append(f"\nscoring took {seconds:.0f} s (cached runs: 0 s)")
    text = "\n".join(lines)
    print(text)
    if args.append:
        append(f"OOD flag and Dice on both phantom families: {pkg.card.version}", text)


if __name__ == "__main__":
    main()
