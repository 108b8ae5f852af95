"""Adaptation to a new site through the real HTTP API: a few corrections turn the model into a good one there.

    .venv/bin/python bench/adaptation.py [--k 2 4 6] [--seeds 0 1 2] [--variants semi supervised]
        [--n 10] [--package models/assets/starter] [--iterations N] [--work var/bench/adaptation] [--append]

Per cell (seed, K, variant) a fresh embedded server (``dualseg api`` + one ``dualseg worker``, SQLite and the
filesystem broker, in ``WORK/runs/<cell>``) with the package active:

1. N contrast-CT-like phantoms of the second family (``dualseg phantoms --family ct``, seed 1000 + seed,
   128×128×96) are uploaded (``POST /api/v1/cases``) and segmented; Dice against the truth is "before";
2. the first K cases are corrected with their true labels (``PUT …/correction``): sides are assigned at the
   first correction (the first trains, the second validates, …), ``GET /training-runs/readiness`` must say
   ready;
3. one retraining run (``POST /api/v1/training-runs``) with the server's default preset
   (``DUALSEG_RETRAIN_PRESET``, ``starter``): **semi** = the preset as it is (the uncorrected cases are its
   unlabeled data); **supervised** = the same with ``batch_unlabeled: 0`` (a supervised-only fine-tune on
   the corrected cases, no unlabeled term);
4. the N − K uncorrected cases are segmented again with the run's candidate (``model_version``), promoted or
   not; Dice is "after". The run's seconds (started → finished), its gate decision and the OOD flags before /
   after are recorded.

Results accumulate in ``WORK/results.json`` (a finished cell is never re-run); the table has per (K, variant)
the mean over seeds of the uncorrected cases' mean Dice before and after with a 95 % t-interval, the run's
seconds, and how many of the uncorrected cases each model flags out-of-distribution.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append  # noqa: E402

SHAPE = (128, 128, 96)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _mask(client: Any, case_id: str, tmp: Path) -> np.ndarray:
    import nibabel as nib

    r = client.get(f"/api/v1/cases/{case_id}/mask", params={"format": "nifti"})
    r.raise_for_status()
    p = tmp / f"{case_id}.nii.gz"
    p.write_bytes(r.content)
    img: Any = nib.load(p)
    return np.asarray(img.dataobj)


def _wait(client: Any, url: str, done: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(url).json()
        if body["state"] in done:
            return body
        time.sleep(1.0)
    raise TimeoutError(f"{url} still {body.get('state')} after {timeout:.0f} s")


def run_cell(work: Path, package: Path, seed: int, k: int, variant: str, n: int,
             iterations: int | None) -> dict[str, Any]:
    import nibabel as nib

    from models.data.phantoms import write_phantom_dataset
    from tests.helpers import LiveStack

    data = work / "data" / f"ct_seed{1000 + seed}"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, n, seed=1000 + seed, test_cases=0, shape=SHAPE, family="ct")
    cell = work / "runs" / f"s{seed}_k{k}_{variant}"
    stack = LiveStack(cell / "var", extra_env={"DUALSEG_RETRAIN_AUTO_PROMOTE": "true"})
    stack.cli("models", "import", str(package), "--activate")
    stack.start("api", "worker")
    tmp = cell / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        client = stack.client("admin", timeout=300)
        images = sorted((data / "imagesTr").glob("*.nii.gz"))[:n]
        labels = [data / "labelsTr" / p.name for p in images]
        truth = [np.asarray(cast(Any, nib.load(p)).dataobj) for p in labels]
        cases, jobs = [], []
        for p in images:
            r = client.post("/api/v1/cases", files={"files": (p.name, p.read_bytes())})
            r.raise_for_status()
            cases.append(r.json()["case_id"])
            jobs.append(r.json()["job_id"])
        before, ood_before = [], []
        for i, job in enumerate(jobs):
            j = _wait(client, f"/api/v1/jobs/{job}", ("succeeded", "failed"), 900)
            if j["state"] != "succeeded":
                raise RuntimeError(f"segmentation failed: {j['error']}")
            before.append(_dice(_mask(client, cases[i], tmp), truth[i]))
            ood_before.append((j.get("uncertainty") or {}).get("out_of_distribution"))
        sides = []
        for i in range(k):
            r = client.put(f"/api/v1/cases/{cases[i]}/correction",
                           files={"file": (labels[i].name, labels[i].read_bytes())})
            r.raise_for_status()
            sides.append(r.json()["split"])
        ready = client.get("/api/v1/training-runs/readiness").json()
        body: dict[str, Any] = {"overrides": {"batch_unlabeled": 0} if variant == "supervised" else {}}
        if iterations:
            body["iterations"] = iterations
        r = client.post("/api/v1/training-runs", json=body)
        r.raise_for_status()
        run = _wait(client, f"/api/v1/training-runs/{r.json()['id']}",
                    ("succeeded", "failed", "skipped", "cancelled"), 3600)
        if run["state"] != "succeeded":
            raise RuntimeError(f"run {run['state']}: {run.get('error') or run.get('decision')}")
        seconds = (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])
                   ).total_seconds()
        after, ood_after = [], []
        for i in range(k, n):
            r = client.post(f"/api/v1/cases/{cases[i]}/segmentations",
                            json={"model_version": run["candidate_version"]})
            r.raise_for_status()
            j = _wait(client, f"/api/v1/jobs/{r.json()['job_id']}", ("succeeded", "failed"), 900)
            after.append(_dice(_mask(client, cases[i], tmp), truth[i]))
            ood_after.append((j.get("uncertainty") or {}).get("out_of_distribution"))
        return {"seed": seed, "k": k, "variant": variant, "n": n, "sides": sides, "readiness": ready,
                "dice_before_all": before, "dice_before": before[k:], "dice_after": after,
                "ood_before": ood_before[k:], "ood_after": ood_after, "seconds": seconds,
                "iterations": run["iteration"],
                "decision": run["decision"], "data_summary": run["data_summary"]}
    finally:
        stack.stop()


def _interval(values: list[float]) -> str:
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return f"{v.mean():.3f}"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.3f} ({v.mean() - half:.3f} … {v.mean() + half:.3f})"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| K | variant | seeds | Dice before (uncorrected) | Dice after | run s (mean) | promoted | "
             "OOD flagged before → after |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k in sorted({r["k"] for r in results}):
        for variant in ("semi", "supervised"):
            rows = [r for r in results if r["k"] == k and r["variant"] == variant]
            if not rows:
                continue
            b = [float(np.mean(r["dice_before"])) for r in rows]
            a = [float(np.mean(r["dice_after"])) for r in rows]
            promoted = sum(bool(r["decision"].get("promoted")) for r in rows)
            fb = sum(sum(bool(x) for x in r["ood_before"]) for r in rows)
            fa = sum(sum(bool(x) for x in r["ood_after"]) for r in rows)
            total = sum(len(r["ood_after"]) for r in rows)
            lines.append(f"| {k} | {variant} | {len(rows)} | {_interval(b)} | {_interval(a)} | "
                         f"{np.mean([r['seconds'] for r in rows]):.0f} | {promoted}/{len(rows)} | "
                         f"{fb}/{total} → {fa}/{total} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 6])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["semi", "supervised"], choices=["semi", "supervised"])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--package", default="models/assets/starter")
    ap.add_argument("--iterations", type=int, default=None, help="override the preset's iterations")
    ap.add_argument("--work", default="var/bench/adaptation")
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results: list[dict[str, Any]] = json.loads(store.read_text()) if store.exists() else []
    package = Path(args.package).resolve()
    version = json.loads((package / "model.json").read_text())["version"]
    for seed in args.seeds:
        for k in args.k:
            for variant in args.variants:
                key = (version, seed, k, variant, args.n, args.iterations)
                if any((r["package"], r["seed"], r["k"], r["variant"], r["n"], r["iterations_arg"]) == key
                       for r in results):
                    continue
                t0 = time.perf_counter()
                res = run_cell(work, package, seed, k, variant, args.n, args.iterations)
                res.update(package=version, iterations_arg=args.iterations, wall=time.perf_counter() - t0)
                results.append(res)
                store.write_text(json.dumps(results, indent=1))
                print(f"seed {seed} K {k} {variant}: before {np.mean(res['dice_before']):.3f} after "
                      f"{np.mean(res['dice_after']):.3f} run {res['seconds']:.0f} s", flush=True)
    mine = [r for r in results if r["package"] == version and r["iterations_arg"] == args.iterations
            and r["n"] == args.n]
    head = f"Package `{version}`, N = {args.n}, iterations {args.iterations or 'of the preset'}."
    text = head + "\n\n" + table(mine)
    print(text)
    if args.append:
        append(f"Adaptation to the CT phantom family through HTTP: {version}", text)


if __name__ == "__main__":
    main()
