"""What kind of errors the semi-supervised variants make: missed vs extra foreground, per trained model.

Re-scores the packages that ``bench/ssl_seeds.py`` left in ``<work>/runs/d<S>_t<T>/<variant>`` on their
phantom set's test split and prints, per run and variant, the mean Dice and the two error shares of a
test phantom (each divided by its true foreground volume): **missed** (false negatives) and **extra**
(false positives), plus how many phantoms are almost entirely missed (missed share >= 0.9: the model
segments nothing there or another structure). Nothing is trained; a package is predicted as by
``dualseg evaluate``.

Run (from the repository root)::

    .venv/bin/python bench/ssl_errors.py --runs d6_t1337 d7_t1337 --variants control full supervised
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ssl_phantoms import UncertaintyStats  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "var" / "bench" / "ssl_seeds"))
    p.add_argument("--runs", nargs="+", help="run keys such as d6_t1337 (default: every run in results.json)")
    p.add_argument("--variants", nargs="+", default=["control", "full", "supervised"])
    p.add_argument("--per-case", action="store_true", help="also print each test phantom's shares")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch

    from models.training.pipeline import evaluate_items, load_dataset

    torch.set_num_threads(1)
    work = Path(args.work)
    saved = json.loads((work / "results.json").read_text())
    cases, test_cases = saved["settings"]["cases"], saved["settings"]["test_cases"]
    rows = ["| run | variant | Dice | missed share | extra share | phantoms ≥ 90 % missed |",
            "|" + " --- |" * 6]
    totals: dict[str, list[tuple[float, float, float, int]]] = {}
    for key in args.runs or list(saved["runs"]):
        data_seed = key[1:].split("_t")[0]
        source = load_dataset(work / f"phantoms_{cases}+{test_cases}_s{data_seed}")
        for variant in args.variants:
            pkg = work / "runs" / key / variant
            if not (pkg / "model.json").is_file():
                continue
            stats = UncertaintyStats()
            report = evaluate_items(pkg, source.test, args.device, progress=False, on_prediction=stats)
            fn = [e["fn_share"] for e in stats.errors.values()]
            fp = [e["fp_share"] for e in stats.errors.values()]
            row = (report["summary"]["dice"], float(np.mean(fn)), float(np.mean(fp)),
                   sum(f >= 0.9 for f in fn))
            totals.setdefault(variant, []).append(row)
            rows.append(f"| {key} | {variant} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} | "
                        f"{row[3]} of {len(fn)} |")
            print(rows[-1], flush=True)
            if args.per_case:
                for case, e in stats.errors.items():
                    print(f"  {key} {variant} {case}: missed {e['fn_share']:.2f} extra {e['fp_share']:.2f}")
    for variant, vals in totals.items():
        a = np.asarray(vals)
        rows.append(f"| **mean of {len(vals)}** | {variant} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | "
                    f"{a[:, 2].mean():.3f} | {int(a[:, 3].sum())} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
