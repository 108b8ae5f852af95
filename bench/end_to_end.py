"""Upload → succeeded through HTTP with a running worker, split into the job's stages.

Starts `dualseg api` + `dualseg worker` (embedded: SQLite + filesystem broker) on a free loopback port with
a model package (full-size random-weight nets by default, or the starter model), uploads NIfTI volumes
of the given sizes one after the other, and reports: queue wait, model load, read, preprocess, inference,
postprocess, regions, writers (NIfTI + JSON in parallel with DICOM SEG + PM: wall, then each), total, and
the non-inference share of the job's time.

    python bench/end_to_end.py                                 # 128×128×96 and 256×256×96, full-size nets
    python bench/end_to_end.py --starter --sizes 128x128x96 --record
    python bench/end_to_end.py --starter --sizes 512x512x300 --spacing 0.7x0.7x1.0 --int16 --warmup --record

``--int16`` uploads CT-like int16 voxels (a .nii.gz about half the raw size, like a real CT) instead of
float32 noise. Peak RSS of the worker and the API processes is taken per job from ``/proc/PID/status``
(``VmHWM``, reset before each upload through ``/proc/PID/clear_refs``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append  # noqa: E402


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _reset_peak(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128x128x96,256x256x96")
    ap.add_argument("--starter", action="store_true")
    ap.add_argument("--warmup", action="store_true", help="one untimed job first (model load excluded)")
    ap.add_argument("--spacing", default="1x1x1", help="voxel size in mm, e.g. 0.7x0.7x1.0")
    ap.add_argument("--int16", action="store_true", help="CT-like int16 voxels instead of float32 noise")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from bench.inference import full_size_package
    from tests.helpers import LiveStack, write_nifti

    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    stack = LiveStack(tmp / "var")
    spacing = [float(v) for v in args.spacing.split("x")]
    if args.starter:
        from backend.services.registry import starter_package_path

        pkg = starter_package_path()
        assert pkg is not None
    else:
        pkg = full_size_package(tmp, (112, 112, 80))
    stack.cli("models", "import", str(pkg), "--activate")
    stack.start("api", "worker")
    rows = []
    try:
        client = stack.client("admin", timeout=600)
        sizes = args.sizes.split(",")
        if args.warmup:
            sizes = [sizes[0]] + sizes
        for n, size in enumerate(sizes):
            shape = tuple(int(v) for v in size.split("x"))
            dtype = np.int16 if args.int16 else np.float32
            image = np.random.default_rng(n).normal(100, 20, shape).astype(dtype)
            path = write_nifti(tmp / f"v{n}.nii.gz", image, np.diag([*spacing, 1.0]))
            data = path.read_bytes()
            for proc in stack.procs.values():
                _reset_peak(proc.pid)
            t0 = time.time()
            r = client.post("/api/v1/cases", files={"files": (path.name, data)})
            r.raise_for_status()
            upload = time.time() - t0
            job = stack.wait_job(client, r.json()["job_id"], timeout=3600)
            wall = time.time() - t0
            assert job["state"] == "succeeded", job
            if args.warmup and n == 0:
                continue
            t = job["timings"]
            started, finished, created = (
                _ts(job["started_at"]),
                _ts(job["finished_at"]),
                _ts(job["created_at"]),
            )
            job_s = finished - started
            infer = t.get("predict_inference", 0.0)
            rows.append(
                {
                    "size": size,
                    "mb": len(data) / 1e6,
                    "upload": upload,
                    "wall": wall,
                    "queue": started - created,
                    "load": t.get("model_load", 0.0),
                    "read": t.get("read", 0.0),
                    "pre": t.get("predict_preprocess", 0.0),
                    "infer": infer,
                    "post": t.get("predict_postprocess", 0.0),
                    "regions": t.get("predict_regions", 0.0),
                    "write": t.get("write", 0.0),
                    "nifti": t.get("write_nifti", 0.0),
                    "dicom": t.get("write_dicom", 0.0),
                    "job": job_s,
                    "overhead": 1 - infer / job_s,
                    "writers_share": t.get("write", 0.0) / job_s,
                    "rss_worker": _peak_rss_mb(stack.procs["worker"].pid),
                    "rss_api": _peak_rss_mb(stack.procs["api"].pid),
                }
            )
            print(rows[-1], flush=True)
    finally:
        stack.stop()
    model = "starter model" if args.starter else "full-size nets (random weights, patch 112×112×80)"
    worker = "warm worker" if args.warmup else "first job loads the model"
    lines = [
        f"{model}; embedded mode; worker solo pool; {worker}; spacing {args.spacing} mm; "
        f"{'int16' if args.int16 else 'float32'} input",
        "",
        "| volume | .nii.gz MB | upload s | upload→succeeded s | queue wait | model load | read | "
        "preprocess | inference | postprocess | regions | writers (NIfTI ∥ DICOM) | job s | writers share | "
        "non-inference share | peak RSS worker / API MB |",
        "| --- | " + "--- | " * 15,
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['mb']:.0f} | {r['upload']:.1f} | {r['wall']:.1f} | {r['queue']:.2f} |"
            f" {r['load']:.2f} | {r['read']:.2f} | "
            f"{r['pre']:.2f} | {r['infer']:.2f} | {r['post']:.2f} | {r['regions']:.2f} | "
            f"{r['write']:.2f} ({r['nifti']:.2f} ∥ {r['dicom']:.2f}) | {r['job']:.1f} | "
            f"{100 * r['writers_share']:.1f} % | {100 * r['overhead']:.1f} % | "
            f"{r['rss_worker']:.0f} / {r['rss_api']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.record:
        append("End to end: upload → succeeded", table)


if __name__ == "__main__":
    main()
