"""Semi-supervised phantoms over several data and training seeds: is the full method above its control?

The single-set benchmark (``bench/ssl_phantoms.py``) scores every variant on one phantom set with one
training seed; its per-case spread (0.1-0.3 Dice) and the way its settings were chosen make one run weak
evidence. This script repeats the comparison with the settings frozen:

* every ``--data-seeds`` value is a new phantom set: ``--cases`` training phantoms (the first 10 % keep
  their labels, the rest are unlabeled) and ``--test-cases`` test phantoms, never used for a choice;
* every ``--train-seeds`` value trains each variant again (initialisation and sampling change);
* every variant of a (data seed, training seed) run uses the same arrays, config and seed, so they are
  compared pairwise.

Protocol (issue 16; pre-registered in bench/RESULTS.md before the run): the settings are
``bench/ssl_phantoms.py``'s defaults, i.e. ``configs/phantoms_ssl.yaml``. Sets 0-19 were used for choices
or earlier confirmations and 20-27 are reserved for ``bench/gpu_ssl.sh``, so the defaults here are the fresh
sets 30-37 with training seeds 1337 and 7. The primary comparator is the **control** (the full method's
batches, unlabeled crops forwarded through both nets, every unlabeled weight 0); supervised-only and fully
supervised are references. The primary figure is the per-set mean over training seeds of
``Dice(full) - Dice(control)`` (foreground, mean over the set's test phantoms) with a two-sided 95 %
Student-t interval over the sets; the method counts as *clearly above* its control only when that interval
lies above 0. The share of the supervised-only → fully supervised gap closed is reported (target >= 60 %).
Each ablation (``no_<module>``) is reported the same way against the full method, without a criterion.
Per-phantom wins/losses and a Wilcoxon signed-rank test over all test phantoms are descriptive (phantoms
of one run share the trained nets, so they are not independent).

Run (from the repository root; ``--jobs 2`` on 2 cores)::

    .venv/bin/python bench/ssl_seeds.py --jobs 2 --no-progress
    .venv/bin/python bench/ssl_seeds.py --quick --jobs 1      # smoke run, nothing appended

Finished trainings are kept in ``<work>/results.json`` (every seed run with the same settings); a rerun
skips them, so ablations can be added to earlier runs with ``--variants``. Other settings (``--set``,
``--iterations``, ...) need their own ``--work`` folder: the script refuses to mix them.
The table, the command, the machine and the date are appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shlex
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ssl_phantoms import (  # noqa: E402
    VARIANTS,
    append_section,
    base_config,
    describe_training,
    machine,
    train_and_score,
    training_arrays,
)

#: Config fields left out of a work folder's saved settings: the seed is per run, each variant sets modules
_PER_RUN = ("seed", "modules")
_CACHE: dict[str, dict[str, Any]] = {}  # worker-process copy of the prepared arrays, by pickle path


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _task(key: str, variant: str, prep: str, data_dir: str, base_dict: dict[str, Any], pkg_dir: str,
          device: str) -> tuple[str, dict[str, Any]]:
    if prep not in _CACHE:
        with open(prep, "rb") as fh:
            _CACHE.clear()
            _CACHE[prep] = pickle.load(fh)
    return key, train_and_score(variant, _CACHE[prep], Path(data_dir), base_dict, Path(pkg_dir), device)


def _normalised(settings: dict[str, Any]) -> dict[str, Any]:
    """Saved settings with config fields added since they were written filled with their defaults."""
    from models.training.config import TrainConfig

    if "config" not in settings:
        return settings
    try:
        config = TrainConfig.from_dict(settings["config"]).to_dict()
    except (TypeError, ValueError, KeyError):
        return settings
    for key in _PER_RUN:
        config.pop(key, None)
    return json.loads(json.dumps({**settings, "config": config}))


def prepare(work: Path, data_seed: int, cases: int, test_cases: int, base: Any) -> tuple[Path, Path]:
    """Write (or reuse) phantom set ``data_seed`` and its preprocessed training arrays; returns
    ``(dataset folder, pickle of the arrays)``."""
    from models.data.phantoms import write_phantom_dataset
    from models.training.pipeline import load_dataset

    data_dir = work / f"phantoms_{cases}+{test_cases}_s{data_seed}"
    if not (data_dir / "dataset.json").is_file():
        write_phantom_dataset(data_dir, cases, seed=data_seed, test_cases=test_cases)
    prep = data_dir / f"prepared_{base.preprocessing.spacing[0]:g}mm.pkl"
    if not prep.is_file():
        tmp = prep.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(training_arrays(load_dataset(data_dir), base), fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(prep)
    return data_dir, prep


def _paired(runs: dict[str, dict[str, Any]], a: str, b: str) -> tuple[dict[str, list[float]], list[float]]:
    """``({data seed: [Dice(a) - Dice(b) per training seed]}, per-phantom differences)`` of the runs with
    both variants (run keys ``d<data seed>_t<training seed>``)."""
    by_set: dict[str, list[float]] = {}
    case_deltas: list[float] = []
    for key, variants in runs.items():
        if a in variants and b in variants:
            by_set.setdefault(key.split("_t")[0], []).append(variants[a]["dice"] - variants[b]["dice"])
            pa, pb = variants[a]["dice_per_case"], variants[b]["dice_per_case"]
            case_deltas += [pa[c] - pb[c] for c in pa if c in pb]
    return by_set, case_deltas


def summarize(runs: dict[str, dict[str, Any]], a: str = "full", b: str = "control",
              by_set: bool = False) -> dict[str, Any]:
    """Paired comparison of variant ``a`` against ``b`` over ``runs`` ({"d2_t1337": {variant: result}}).

    The unit is a run (``runs``: their number), or with ``by_set`` a phantom set: the mean of its runs'
    differences over the training seeds (``runs`` then counts sets). ``mean_delta`` and the two-sided 95 %
    Student-t interval ``ci95`` are over those units; ``clearly_above``: the interval lies above 0."""
    from scipy import stats

    sets, case_deltas = _paired(runs, a, b)
    deltas = [float(np.mean(v)) for v in sets.values()] if by_set else [x for v in sets.values() for x in v]
    out: dict[str, Any] = {"runs": len(deltas), "cases": len(case_deltas)}
    if not deltas:
        return out
    d = np.asarray(deltas)
    out["mean_delta"] = float(d.mean())
    if d.size > 1:
        half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
        out["ci95"] = [out["mean_delta"] - half, out["mean_delta"] + half]
    out["runs_better"] = int((d > 0).sum())
    c = np.asarray(case_deltas)
    out["cases_better"], out["cases_worse"] = int((c > 0).sum()), int((c < 0).sum())
    out["median_case_delta"] = float(np.median(c))
    if np.any(c != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(c).pvalue)
    out["clearly_above"] = bool("ci95" in out and out["ci95"][0] > 0)
    return out


def gap_closed(runs: dict[str, dict[str, Any]], variant: str = "full") -> float | None:
    """Share of the supervised-only → fully supervised Dice gap that ``variant`` closes (means over the runs
    that have all three); ``None`` without such runs or without a gap."""
    keep = [r for r in runs.values() if {variant, "supervised", "fully_supervised"} <= set(r)]
    if not keep:
        return None
    sup = float(np.mean([r["supervised"]["dice"] for r in keep]))
    gap = float(np.mean([r["fully_supervised"]["dice"] for r in keep])) - sup
    return None if gap <= 0 else (float(np.mean([r[variant]["dice"] for r in keep])) - sup) / gap


def comparator(variants: list[str]) -> str:
    """The variant the full method is judged against: the control when it runs, else supervised-only."""
    return "control" if "control" in variants else "supervised"


def comparisons(runs: dict[str, dict[str, Any]], variants: list[str]) -> str:
    """Paired differences of the full method against the control, supervised-only and each ablation, one
    unit per phantom set (the mean over its training seeds), as a table."""
    others = [v for v in ("control", "supervised", *(v for v in variants if v.startswith("no_")))
              if v in variants]
    rows = ["| comparison | sets (mean over training seeds) | mean Δ Dice | 95 % t-interval | sets better "
            "| test phantoms better / worse | median Δ per phantom | Wilcoxon p (descriptive) |",
            "|" + " --- |" * 8]
    for b in others:
        s = summarize(runs, "full", b, by_set=True)
        if "mean_delta" not in s:
            continue
        ci = f"{s['ci95'][0]:+.3f} … {s['ci95'][1]:+.3f}" if "ci95" in s else "—"
        p = f"{s['wilcoxon_p']:.2g}" if "wilcoxon_p" in s else "—"
        rows.append(f"| full − {b} | {s['runs']} | {s['mean_delta']:+.3f} | {ci} | {s['runs_better']} | "
                    f"{s['cases_better']} / {s['cases_worse']} of {s['cases']} | "
                    f"{s['median_case_delta']:+.3f} | {p} |")
    return "\n".join(rows)


def table(runs: dict[str, dict[str, Any]], variants: list[str]) -> str:
    ref = comparator(variants)
    diff = {"full", ref} <= set(variants)
    head = "| data seed | training seed | " + " | ".join(f"Dice {v}" for v in variants)
    rows = [head + (f" | full − {ref} |" if diff else " |")]
    rows.append("|" + " --- |" * (rows[0].count("|") - 1))
    for key, res in runs.items():
        ds, ts = key[1:].split("_t")
        cells = [f"{res[v]['dice']:.3f} ± {res[v]['dice_std']:.3f}" if v in res else "—" for v in variants]
        line = f"| {ds} | {ts} | " + " | ".join(cells)
        if diff:
            both = "full" in res and ref in res
            line += f" | {res['full']['dice'] - res[ref]['dice']:+.3f}" if both else " | —"
        rows.append(line + " |")
    tail = " | |" if diff else " |"

    def mean_row(title: str, cell: Any) -> str | None:
        cells = [cell(v) for v in variants]
        return f"| **{title}** | | " + " | ".join(cells) + tail if any(x != "—" for x in cells) else None

    def dice(v: str) -> str:
        vals = [r[v]["dice"] for r in runs.values() if v in r]
        return f"{np.mean(vals):.3f}" if vals else "—"

    def shares(v: str) -> str:  # missed / extra foreground (÷ true volume), where the runs recorded them
        fn = [r[v]["fn_share"] for r in runs.values() if "fn_share" in r.get(v, {})]
        fp = [r[v]["fp_share"] for r in runs.values() if "fp_share" in r.get(v, {})]
        return f"{np.mean(fn):.3f} / {np.mean(fp):.3f}" if fn and fp else "—"

    def band(v: str) -> str:  # per-case boundary-band entropy AUROC, mean over runs
        vals = [r[v]["band_auroc"] for r in runs.values() if "band_auroc" in r.get(v, {})]
        vals = [x for x in vals if np.isfinite(x)]
        return f"{np.mean(vals):.3f}" if vals else "—"

    rows.append(mean_row("mean", dice) or "")
    for extra in (mean_row("missed / extra share", shares), mean_row("boundary-band entropy AUROC", band)):
        if extra:
            rows.append(extra)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-seeds", type=int, nargs="+", default=list(range(30, 38)))
    p.add_argument("--train-seeds", type=int, nargs="+", default=[1337, 7])
    p.add_argument("--variants", nargs="+", default=["control", "full", "supervised", "fully_supervised"],
                   choices=VARIANTS)
    p.add_argument("--cases", type=int, default=40, help="training phantoms per set")
    p.add_argument("--test-cases", type=int, default=16, help="test phantoms per set")
    p.add_argument("--labeled-fraction", type=float, default=0.1)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default=str(ROOT / "var" / "bench" / "ssl_seeds"))
    p.add_argument("--data-root", help="where the phantom sets and their prepared arrays live (default: "
                   "--work); share it between work folders of different settings")
    p.add_argument("--prepare-only", action="store_true",
                   help="write the phantom sets and their arrays (--jobs sets in parallel), then stop")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 sets of 10 + 2 phantoms, 1 training seed, 20 iterations")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.data_seeds, args.cases, args.test_cases, args.iterations = args.data_seeds[:2], 10, 2, 20
        args.train_seeds = args.train_seeds[:1]
        args.patch, args.no_append = [32, 32, 32], True
        args.work = str(Path(args.work).with_name("ssl_seeds_quick"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data_root) if args.data_root else work
    data_root.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.now(UTC), time.perf_counter()
    n_lab = max(1, round(args.labeled_fraction * args.cases))
    bases = {}
    for ts in args.train_seeds:
        ns = argparse.Namespace(iterations=args.iterations, seed=ts, patch=args.patch, width=args.width,
                                set=args.set)
        bases[ts] = base_config(ns, n_lab)
    if args.prepare_only:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            base0 = bases[args.train_seeds[0]]
            futures = [pool.submit(prepare, data_root, ds, args.cases, args.test_cases, base0)
                       for ds in args.data_seeds]
            for fut in futures:
                print(f"prepared {fut.result()[0]}", flush=True)
        print(f"prepare: {time.perf_counter() - t0:.1f} s for {len(futures)} set(s)", flush=True)
        return 0
    results_path = work / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    shared = {k: v for k, v in bases[args.train_seeds[0]].to_dict().items() if k not in _PER_RUN}
    settings = {"cases": args.cases, "test_cases": args.test_cases, "labeled": n_lab, "config": shared}
    settings = json.loads(json.dumps(settings))
    if saved.get("runs") and _normalised(saved.get("settings", {})) != settings:
        raise SystemExit(f"{results_path} holds runs made with other settings (cases, labels or config); "
                         "use another --work folder for these settings, or move that file away")
    runs: dict[str, dict[str, Any]] = saved.get("runs", {})

    def save() -> None:  # every run with these settings, this invocation's seeds or an earlier one's
        results_path.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1) + "\n")

    import multiprocessing

    pending: list[Future[tuple[str, dict[str, Any]]]] = []
    order = sorted(args.variants, key=lambda v: v in ("supervised", "fully_supervised"))  # longest first
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(args.threads,)) as pool:
        for ds in args.data_seeds:
            data_dir, prep = prepare(data_root, ds, args.cases, args.test_cases, bases[args.train_seeds[0]])
            for ts in args.train_seeds:
                key = f"d{ds}_t{ts}"
                runs.setdefault(key, {})
                for v in order:
                    if v in runs[key]:
                        continue
                    pkg = work / "runs" / key / v
                    pending.append(pool.submit(_task, f"{key}/{v}", v, str(prep), str(data_dir),
                                               bases[ts].to_dict(), str(pkg), args.device))
        for done in pending:
            key_v, res = done.result()
            key, v = key_v.split("/")
            runs[key][v] = res
            save()
            if not args.no_progress:
                print(f"{key} {v}: Dice {res['dice']:.3f} ({res['train_seconds'] / 60:.1f} min)", flush=True)
    save()
    keys = [f"d{ds}_t{ts}" for ds in args.data_seeds for ts in args.train_seeds]
    runs = {k: runs[k] for k in keys if k in runs}
    ref = comparator(args.variants)
    summary = summarize(runs, "full", ref, by_set=True)
    md = table(runs, args.variants)
    print(md)
    print(json.dumps(summary))
    if args.no_append:
        return 0
    cfg = bases[args.train_seeds[0]].to_dict()
    python = sys.executable.replace(str(ROOT) + "/", "")
    command = " ".join(shlex.quote(x) for x in [python, "bench/ssl_seeds.py", *sys.argv[1:]])
    verdict = ""
    if "mean_delta" in summary:
        verdict = (f"\nPre-set criterion (95 % t-interval over the phantom sets of the per-set mean over "
                   f"training seeds of Dice(full) − Dice({ref}) above 0): "
                   f"{'met' if summary['clearly_above'] else 'not met'}.\n")
        closed = gap_closed(runs)
        if closed is not None:
            verdict += (f"Share of the supervised-only → fully supervised gap closed by the full method: "
                        f"{100 * closed:.0f} % (target >= 60 %).\n")
    pairs = comparisons(runs, args.variants)
    text = (
        f"\n## Semi-supervised phantoms over seeds ({started:%Y-%m-%d %H:%M} UTC)\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine()}; {args.jobs} process(es) x {args.threads} torch thread(s); device "
        f"{args.device}; wall time {(time.perf_counter() - t0) / 60:.1f} min (trainings reused from an "
        f"earlier interrupted run are not in it)\n"
        f"- data: per set {args.cases} training phantoms, {n_lab} labeled, {args.test_cases} test phantoms; "
        f"data seeds {' '.join(map(str, args.data_seeds))}; training seeds "
        f"{' '.join(map(str, args.train_seeds))}\n"
        f"- training (first training seed; the others differ only in the seed): {describe_training(cfg)}"
        + (f"; overrides {' '.join(args.set)}" if args.set else "") + "\n"
        f"- Dice: foreground, mean ± std over the set's test phantoms\n\n{md}\n\n{pairs}\n{verdict}"
    )
    append_section(args.results, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
