"""Upload → succeeded through HTTP with a running worker, split into the job's stages.

Starts `dualseg api` + `dualseg worker` (embedded: SQLite + filesystem broker) on a free loopback port with
a model package (full-size random-weight nets by default, or the starter model), uploads NIfTI volumes
of the given sizes one after the other, and reports: queue wait, model load, read, preprocess, inference,
postprocess, regions, writers (NIfTI + JSON in parallel with DICOM SEG + PM: wall, then each), total, and
the non-inference share of the job's time.

    python bench/end_to_end.py                                 # 128×128×96 and 256×256×96, full-size nets
    python bench/end_to_end.py --starter --sizes 128x128x96 --record
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128x128x96,256x256x96")
    ap.add_argument("--starter", action="store_true")
    ap.add_argument("--warmup", action="store_true", help="one untimed job first (model load excluded)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from bench.inference import full_size_package
    from tests.helpers import LiveStack, write_nifti

    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    stack = LiveStack(tmp / "var")
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
            image = np.random.default_rng(n).normal(100, 20, shape).astype(np.float32)
            path = write_nifti(tmp / f"v{n}.nii.gz", image, np.diag([1.0, 1.0, 1.0, 1.0]))
            t0 = time.time()
            r = client.post("/api/v1/cases", files={"files": (path.name, path.read_bytes())})
            r.raise_for_status()
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
                }
            )
            print(rows[-1], flush=True)
    finally:
        stack.stop()
    model = "starter model" if args.starter else "full-size nets (random weights, patch 112×112×80)"
    worker = "warm worker" if args.warmup else "first job loads the model"
    lines = [
        f"{model}; embedded mode; worker solo pool; {worker}",
        "",
        "| volume | upload→succeeded s | queue wait | model load | read | preprocess | inference | "
        "postprocess | regions | writers (NIfTI ∥ DICOM) | job s | non-inference share |",
        "| --- | " + "--- | " * 11,
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['wall']:.1f} | {r['queue']:.2f} | {r['load']:.2f} | {r['read']:.2f} | "
            f"{r['pre']:.2f} | {r['infer']:.2f} | {r['post']:.2f} | {r['regions']:.2f} | "
            f"{r['write']:.2f} ({r['nifti']:.2f} ∥ {r['dicom']:.2f}) | {r['job']:.1f} | "
            f"{100 * r['overhead']:.1f} % |"
        )
    table = "\n".join(lines)
    print(table)
    if args.record:
        append("End to end: upload → succeeded", table)


if __name__ == "__main__":
    main()
