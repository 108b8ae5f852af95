"""Semi-supervised benchmark on the synthetic phantoms: does the dual-network method beat its control?

Setup: ``--cases`` training phantoms of which the first ``--labeled-fraction`` (default 10 %) keep their
labels; the rest are unlabeled; the test split is the phantom set's ``imagesTs``/``labelsTs`` (never used
for any choice). Every variant trains with the same config (``configs/phantoms_ssl.yaml`` at the run's
budget), iterations and seed:

==================  =====================================================================================
``control``         the primary comparator: the full method's config and batches (labeled + the same
                    unlabeled crops through both nets, so BatchNorm sees the same batches) with every
                    unlabeled weight 0 (``loss.w_u = loss.lambda_c = 0``)
``full``            the method: every module on, labeled + unlabeled
``supervised``      reference: labeled part only, CE + Dice (every module off, no unlabeled data)
``no_<module>``     the method with one module off (supervised_cr, cps_kl, entropy_filter, cosine,
                    prototype)
``fully_supervised`` every training label, CE + Dice only (upper bound)
==================  =====================================================================================

Reported on the test split, on each case's original grid (the real predictor): Dice, Jaccard, HD95 and ASD
(mm, foreground class), and uncertainty quality: the AUROC of the normalised entropy as a score for
*wrong* voxels (prediction != truth; all voxels of all test volumes pooled; ties get average ranks), and
per case in the boundary band (voxels within 3 of the predicted or the true boundary; mean over cases),
and the share of wrong voxels inside the flagged uncertain regions (the predictor's region list:
components of entropy >= 0.5, >= 10 voxels, top 20) and inside those regions' bounding boxes.

Run (from the repository root)::

    .venv/bin/python bench/ssl_phantoms.py                # default budget, appends to bench/RESULTS.md
    .venv/bin/python bench/ssl_phantoms.py --quick        # smoke run (minutes), does not append

The table, the command, the machine (``lscpu``) and the date are appended to ``bench/RESULTS.md``; the raw
numbers go to ``<work>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ssl_metrics import UncertaintyStats, auroc, boundary_band, flagged_masks  # noqa: E402,F401

MODULES = ("supervised_cr", "cps_kl", "entropy_filter", "cosine", "prototype")
VARIANTS = ("supervised", "control", "full", *(f"no_{m}" for m in MODULES), "fully_supervised")
#: Loss weights that a control run sets to 0 (every unlabeled term; the labeled terms stay as in "full").
CONTROL_ZERO = {"loss.w_u": 0.0, "loss.lambda_c": 0.0}


def base_config(args: argparse.Namespace, num_labeled: int) -> Any:
    """The shared config: ``configs/phantoms_ssl.yaml`` (its comments and bench/RESULTS.md say where each
    value comes from) at this run's budget, seed, patch and widths. The preset's labeled-only warm-up is a
    share of the run and its contrastive ramp spans the whole run (``lambda_c_rampup: null``), so both
    follow ``--iterations``. Each variant then sets the modules (and the control its weights)."""
    from models.training.config import load_config

    return load_config("phantoms_ssl").with_overrides({
        "name": "bench-ssl", "iterations": args.iterations, "num_labeled": num_labeled, "seed": args.seed,
        "patch_size": args.patch, "checkpoint_every": 0, "log_every": 10,
        "networks.net_a.width": args.width, "networks.net_b.width": args.width,
        **dict(_parse_set(kv) for kv in args.set),
    })


def _parse_set(text: str) -> tuple[str, Any]:
    """``"loss.w_u=0.1"`` -> ``("loss.w_u", 0.1)`` (the value parsed as YAML: numbers, bools, lists)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set expects KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def variant_config(base: Any, name: str) -> tuple[Any, bool, bool]:
    """``(config, use_unlabeled, all_labels)`` of a variant.

    ``control`` is the primary comparator: the full method's config and batches (the unlabeled crops go
    through both nets, so BatchNorm sees the same batches) with every unlabeled weight 0
    (:data:`CONTROL_ZERO`). ``supervised`` and ``fully_supervised`` (references) train on the labeled
    crops only with every module off."""
    on = dict.fromkeys(MODULES, True)
    if name in ("supervised", "fully_supervised"):
        return base.with_overrides({"modules": dict.fromkeys(MODULES, False)}), False, name != "supervised"
    if name == "control":
        return base.with_overrides({"modules": on, **CONTROL_ZERO}), True, False
    if name.startswith("no_"):
        on[name[3:]] = False
    return base.with_overrides({"modules": on}), True, False


def machine() -> str:
    """The CPU (``lscpu`` model name, CPU count, and which of the AVX2 / AVX-512 / AMX flags it has)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = info.get("Model name", "?").strip()
        cpus = info.get("CPU(s)", "?").strip()
        flags = info.get("Flags", "").split()
        wanted = [f for f in flags if f == "avx2" or f.startswith(("avx512", "amx"))]
        shown = " ".join(wanted) if wanted else "none of avx2/avx512/amx"
        return f"{model}, {cpus} CPU(s), flags {shown} (lscpu); {platform.system()} {platform.machine()}"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()


_ARRAYS: dict[str, Any] = {}  # worker-process copy of the preprocessed arrays (set by _init_worker)


def _init_worker(arrays: dict[str, Any], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _ARRAYS.update(arrays)


def run_variant(name: str, args: argparse.Namespace, data_dir: Path, base_dict: dict[str, Any]
                ) -> dict[str, Any]:
    """Train one variant on the preprocessed arrays of :data:`_ARRAYS`, then score it on the test split."""
    return train_and_score(name, _ARRAYS, data_dir, base_dict, Path(args.work) / "runs" / name, args.device,
                           progress=not args.no_progress and args.jobs == 1)


def train_and_score(name: str, arrays: dict[str, Any], data_dir: Path, base_dict: dict[str, Any],
                    pkg_dir: Path, device: str, progress: bool = False) -> dict[str, Any]:
    """Train variant ``name`` on ``arrays`` (``labeled``, ``labeled_ids``, ``unlabeled``, ``spec`` of every
    training case, the first ``num_labeled`` keeping their labels) into ``pkg_dir``; score the test split."""
    from models.training.config import TrainConfig
    from models.training.pipeline import PreparedData, evaluate_items, load_dataset, train_prepared

    source = load_dataset(data_dir)
    base = TrainConfig.from_dict(base_dict)
    n_lab = int(base.num_labeled or 1)
    cfg, use_unlabeled, all_labels = variant_config(base, name)
    lab, ids, unl = arrays["labeled"], arrays["labeled_ids"], arrays["unlabeled"]
    if all_labels:
        cfg = cfg.with_overrides({"num_labeled": None})
    else:
        lab, ids, unl = lab[:n_lab], ids[:n_lab], [x for x, _ in lab[n_lab:]] + unl
    data = PreparedData(replace(source, test=[]), arrays["spec"], list(lab), list(ids), list(unl), [])
    t1, c1 = time.perf_counter(), time.process_time()
    train_prepared(data, cfg, pkg_dir, device, version=f"bench-{name}", progress=progress,
                   use_unlabeled=use_unlabeled)
    train_s, train_cpu = time.perf_counter() - t1, time.process_time() - c1
    stats = UncertaintyStats()
    report = evaluate_items(pkg_dir, source.test, device, progress=False, on_prediction=stats)
    card = json.loads((pkg_dir / "model.json").read_text())
    return {
        **report["summary"], **stats.result(),
        "dice_std": next(iter(report["aggregate"].values()))["dice"]["std"],
        "dice_per_case": {c["id"]: round(next(iter(c["metrics"].values()))["dice"], 4)
                          for c in report["cases"]},
        "labeled": card["training"]["data"]["labeled"],
        "unlabeled": card["training"]["data"]["unlabeled"], "iterations": card["training"]["iterations"],
        "train_seconds": train_s, "train_cpu_seconds": train_cpu,
        "eval_seconds": time.perf_counter() - t1 - train_s,
    }


def training_arrays(source: Any, base: Any) -> dict[str, Any]:
    """Every training case of ``source`` preprocessed with ``base``'s settings, all with their labels (a
    variant keeps the first ``num_labeled``): ``{"labeled", "labeled_ids", "unlabeled", "spec"}``."""
    from models.training.pipeline import prepare_data

    data = prepare_data(source, base.with_overrides({"num_labeled": None}), progress=False)
    return {"labeled": data.labeled, "labeled_ids": data.labeled_ids, "unlabeled": data.unlabeled,
            "spec": data.spec}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate / reuse the phantoms, preprocess once, run every variant (``--jobs`` processes)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from models.data.phantoms import write_phantom_dataset
    from models.training.pipeline import load_dataset

    work = Path(args.work)
    data_dir = work / f"phantoms_{args.cases}_s{args.data_seed}"
    if not (data_dir / "dataset.json").is_file():
        write_phantom_dataset(data_dir, args.cases, seed=args.data_seed)
    source = load_dataset(data_dir)
    n_lab = max(1, round(args.labeled_fraction * len(source.labeled)))
    base = base_config(args, n_lab)
    t0 = time.perf_counter()
    arrays = training_arrays(source, base)
    results: dict[str, Any] = {"prep_seconds": time.perf_counter() - t0, "num_labeled": n_lab,
                               "config": base.to_dict(), "num_training": len(source.labeled),
                               "num_test": len(source.test), "jobs": args.jobs, "variants": {}}
    t_all = time.perf_counter()

    def record(name: str, value: dict[str, Any]) -> None:
        results["variants"][name] = value
        print(json.dumps({name: value}), flush=True)
        ordered = {n: results["variants"][n] for n in args.variants if n in results["variants"]}
        results["variants"] = ordered
        results["wall_seconds"] = time.perf_counter() - t_all
        (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    if args.jobs == 1:
        _init_worker(arrays, args.threads)
        for name in args.variants:
            record(name, run_variant(name, args, data_dir, base.to_dict()))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(arrays, args.threads)) as pool:
            futures = {pool.submit(run_variant, n, args, data_dir, base.to_dict()): n for n in args.variants}
            for fut in futures:
                record(futures[fut], fut.result())
    return results


def table(results: dict[str, Any]) -> str:
    head = ("| variant | labeled / unlabeled | Dice | Jaccard | HD95 (mm) | ASD (mm) | entropy AUROC (wrong) "
            "| boundary-band AUROC (per case) | wrong in regions | wrong in region boxes "
            "| train min (CPU min) |")
    rows = [head, "|" + " --- |" * 11]
    for name, v in results["variants"].items():
        rows.append(
            f"| {name} | {v['labeled']} / {v['unlabeled']} | {v['dice']:.3f} ± {v['dice_std']:.3f} | "
            f"{v['jaccard']:.3f} | {v['hd95_mm']:.2f} | {v['asd_mm']:.2f} | {v['entropy_auroc']:.3f} | "
            f"{v.get('band_auroc', float('nan')):.3f} | "
            f"{100 * v['wrong_in_regions']:.1f} % | {100 * v['wrong_in_region_boxes']:.1f} % | "
            f"{v['train_seconds'] / 60:.1f} ({v['train_cpu_seconds'] / 60:.1f}) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=40, help="training phantoms (test: 20 %% more)")
    p.add_argument("--labeled-fraction", type=float, default=0.1)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--width", type=int, default=4, help="base width of both nets")
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    p.add_argument("--seed", type=int, default=1337, help="training seed (same for every variant)")
    p.add_argument("--data-seed", type=int, default=0, help="phantom generator seed")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant (dotted key, e.g. loss.w_u=0.1); repeatable")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--jobs", type=int, default=1, help="variants trained in parallel processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default=str(ROOT / "var" / "bench" / "ssl_phantoms"))
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--quick", action="store_true", help="smoke run: 20 cases, 40 iterations, 32^3 patch, "
                   "nothing appended to RESULTS.md")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.iterations, args.patch, args.no_append = 20, 40, [32, 32, 32], True
        args.work = str(Path(args.work).with_name("ssl_phantoms_quick"))
    started = datetime.now(UTC)
    results = run(args)
    md = table(results)
    print(md)
    if args.no_append:
        return 0
    full, ctrl = results["variants"].get("full"), results["variants"].get("control")
    verdict = ""
    if full and ctrl:
        delta = full["dice"] - ctrl["dice"]
        verdict = (f"\nFull method vs the control (same batches, unlabeled weights 0): Dice {delta:+.3f} "
                   f"({'better' if delta > 0 else 'not better'} at this budget, one run).\n")
    cfg = results["config"]
    python = sys.executable.replace(str(ROOT) + "/", "")
    command = " ".join(shlex.quote(a) for a in [python, "bench/ssl_phantoms.py", *sys.argv[1:]])
    text = (
        f"\n## Semi-supervised phantoms ({started:%Y-%m-%d %H:%M} UTC)\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine()}; {args.jobs} process(es) x {args.threads} torch thread(s); device "
        f"{args.device}; wall time of all variants {results['wall_seconds'] / 60:.1f} min\n"
        f"- data: {results['num_training']} training phantoms (seed {args.data_seed}), "
        f"{results['num_labeled']} labeled ({100 * args.labeled_fraction:.0f} %), test split "
        f"{results['num_test']} phantoms (every variant scored on it)\n"
        f"- training: {describe_training(cfg)}\n"
        f"- metrics on the foreground class (left atrium), mean ± std over the test cases; distances in mm; "
        f"uncertainty over all test voxels pooled\n\n{md}\n{verdict}"
    )
    append_section(args.results, text)
    return 0


def describe_training(cfg: dict[str, Any]) -> str:
    """One line of a config's training settings for RESULTS.md (``cfg``: ``TrainConfig.to_dict()``)."""
    loss = cfg["loss"]
    return (f"{cfg['iterations']} iterations, seed {cfg['seed']}, batch {cfg['batch_labeled']} + "
            f"{cfg['batch_unlabeled']}, patch {cfg['patch_size']} at {cfg['preprocessing']['spacing']} mm, "
            f"widths {cfg['networks']['net_a']['width']}/{cfg['networks']['net_b']['width']}, lr "
            f"{cfg['optimizer']['lr']} poly; labeled-only warm-up {loss.get('unlabeled_warmup', 0.0):g} of "
            f"the run, w_u {loss['w_u']} (ramp {loss['w_u_rampup']}), lambda_c {loss['lambda_c']} (ramp "
            f"{'whole run' if loss['lambda_c_rampup'] is None else loss['lambda_c_rampup']}), q "
            f"{loss['q_start']} {'per pseudo-class' if loss.get('classwise_q') else 'global'}; L_cr vs "
            f"{loss.get('cr_target', 'other_net')}, Dice "
            f"{'with' if loss.get('dice_background') else 'without'} background, teacher "
            f"{loss.get('teacher', 'symmetric')}; pseudo-label Dice "
            f"{'on' if loss['pseudo_dice'] else 'off'}, class-balanced pseudo-labels "
            f"{'on' if loss.get('balanced_pseudo') else 'off'}")


def append_section(path: str | Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
    print(f"appended to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
