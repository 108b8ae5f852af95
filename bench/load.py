"""Bounded load test on loopback: concurrent uploads of small volumes plus a steady rate of job-status
polls for a fixed time, then every job accounted for (each upload got a job, each job finished).

    # start its own stack (API + one worker, embedded SQLite + filesystem broker, a tiny random model):
    .venv/bin/python bench/load.py --spawn --uploads 50 --poll-rate 200 --duration 60 --record
    # or against a running server:
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --token dsg_... --uploads 50

Traffic goes only to the given loopback URL; the request count and the time are bounded, and the
script stops by itself. ``--record`` appends the numbers to bench/RESULTS.md with the machine and
the command. Exit status 1 when a job is unaccounted for, failed, or any request got a 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

# httpcore imports sniffio on every request; when it is not installed each failed import searches sys.path
# again (~15 % of this client's CPU, taken from the server it measures on a small machine). A None entry
# makes the import fail at once; httpcore then assumes asyncio.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
POLL_POOL = 8  # connections per polling client: httpcore scans its whole pool on every request


@dataclass
class Stats:
    upload_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    polls_skipped: int = 0
    job_ids: list[str] = field(default_factory=list)
    upload_errors: list[str] = field(default_factory=list)

    def count(self, kind: str, status: int) -> None:
        key = f"{kind} {status}"
        self.statuses[key] = self.statuses.get(key, 0) + 1


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 1)


def make_volumes(n: int, shape: tuple[int, int, int]) -> list[bytes]:
    import nibabel as nib
    import numpy as np

    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        data = (rng.normal(100, 20, shape) + 200 * (rng.random(shape) > 0.8)).astype(np.float32)
        buf = io.BytesIO()
        img = nib.Nifti1Image(data, np.eye(4))
        buf.write(img.to_bytes())
        import gzip

        out.append(gzip.compress(buf.getvalue(), compresslevel=1))
    return out


async def _upload(client: httpx.AsyncClient, data: bytes, n: int, stats: Stats) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post("/api/v1/cases", files=[("files", (f"load{n:03d}.nii.gz", data))])
    except httpx.HTTPError as exc:
        stats.upload_errors.append(f"upload {n}: {type(exc).__name__}")
        return
    stats.upload_ms.append((time.perf_counter() - t0) * 1000)
    stats.count("upload", r.status_code)
    if r.status_code == 202:
        stats.job_ids.append(r.json()["job_id"])
    else:
        stats.upload_errors.append(f"upload {n}: HTTP {r.status_code} {r.text[:200]}")


async def _poll(client: httpx.AsyncClient, stats: Stats, rng: random.Random) -> None:
    path = f"/api/v1/jobs/{rng.choice(stats.job_ids)}" if stats.job_ids else "/api/v1/cases?limit=1"
    t0 = time.perf_counter()
    try:
        r = await client.get(path)
        stats.count("poll", r.status_code)
    except httpx.HTTPError as exc:
        stats.count("poll " + type(exc).__name__, 0)
        return
    stats.poll_ms.append((time.perf_counter() - t0) * 1000)


async def run_load(
    base: str,
    token: str,
    *,
    uploads: int = 50,
    concurrency: int = 50,
    poll_rate: float = 200,
    duration: float = 60,
    drain_timeout: float = 600,
    shape: tuple[int, int, int] = (32, 32, 16),
    max_inflight_polls: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    host = urlparse(base).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise SystemExit(f"refusing to load {host}: loopback only")
    volumes = make_volumes(min(uploads, 16), shape)
    stats = Stats()
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}

    def make_client(connections: int) -> httpx.AsyncClient:
        # keep-alive shorter than uvicorn's 5 s: a connection the server is closing is never reused
        limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
        )
        return httpx.AsyncClient(base_url=base, headers=headers, timeout=120, limits=limits)

    # polls spread over small clients (the load generator shares the machine with the server)
    pollers = [make_client(POLL_POOL) for _ in range(-(-max_inflight_polls // POLL_POOL))]
    async with make_client(concurrency + 8) as client, contextlib.AsyncExitStack() as stack:
        for c in pollers:
            await stack.enter_async_context(c)
        sem = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            async with sem:
                await _upload(client, volumes[n % len(volumes)], n, stats)

        t_start = time.perf_counter()
        upload_tasks = [asyncio.create_task(one(n)) for n in range(uploads)]
        inflight: set[asyncio.Task[None]] = set()
        interval = 1.0 / poll_rate if poll_rate > 0 else None
        next_at = time.perf_counter()
        sent = 0
        while interval and time.perf_counter() - t_start < duration:
            now = time.perf_counter()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at += interval
            if len(inflight) >= max_inflight_polls:
                stats.polls_skipped += 1  # the server is behind: do not pile up more than the bound
                continue
            task = asyncio.create_task(_poll(pollers[sent % len(pollers)], stats, rng))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            sent += 1
        poll_window = time.perf_counter() - t_start
        await asyncio.gather(*upload_tasks)
        await asyncio.gather(*list(inflight))
        upload_window = time.perf_counter() - t_start

        # every job accounted for: wait until each reached a final state
        final: dict[str, dict[str, Any]] = {}
        deadline = time.perf_counter() + drain_timeout
        while time.perf_counter() < deadline and len(final) < len(stats.job_ids):
            for job_id in [j for j in stats.job_ids if j not in final]:
                r = await client.get(f"/api/v1/jobs/{job_id}")
                if r.status_code == 200 and r.json()["state"] in ("succeeded", "failed", "cancelled"):
                    final[job_id] = r.json()
            if len(final) < len(stats.job_ids):
                await asyncio.sleep(1.0)
        drained_s = time.perf_counter() - t_start

    states: dict[str, int] = {}
    for job_id in stats.job_ids:
        state = final[job_id]["state"] if job_id in final else "unfinished"
        states[state] = states.get(state, 0) + 1
    turnaround = []
    for job in final.values():
        if job.get("finished_at") and job.get("created_at"):
            from datetime import datetime

            t1 = datetime.fromisoformat(job["finished_at"])
            t0 = datetime.fromisoformat(job["created_at"])
            turnaround.append((t1 - t0).total_seconds())
    server_errors = sum(
        v for k, v in stats.statuses.items() if k.split()[-1].isdigit() and int(k.split()[-1]) >= 500
    )
    transport_errors = sum(v for k, v in stats.statuses.items() if k.split()[-1] == "0")
    return {
        "uploads": uploads,
        "concurrency": concurrency,
        "poll_rate_target": poll_rate,
        "duration_s": duration,
        "shape": list(shape),
        "upload_window_s": round(upload_window, 1),
        "poll_window_s": round(poll_window, 1),
        "polls_sent": sent,
        "polls_per_s": round(len(stats.poll_ms) / poll_window, 1) if poll_window else 0,
        "polls_skipped_backpressure": stats.polls_skipped,
        "upload_ms": {
            "p50": pct(stats.upload_ms, 50),
            "p95": pct(stats.upload_ms, 95),
            "max": pct(stats.upload_ms, 100),
        },
        "poll_ms": {
            "p50": pct(stats.poll_ms, 50),
            "p95": pct(stats.poll_ms, 95),
            "max": pct(stats.poll_ms, 100),
        },
        "job_turnaround_s": {
            "p50": pct(turnaround, 50),
            "p95": pct(turnaround, 95),
            "max": pct(turnaround, 100),
        },
        "jobs_created": len(stats.job_ids),
        "job_states": states,
        "all_done_after_s": round(drained_s, 1),
        "statuses": stats.statuses,
        "server_errors": server_errors,
        "transport_errors": transport_errors,
        "upload_errors": stats.upload_errors[:10],
        "accounted": len(stats.job_ids) == uploads and states.get("succeeded", 0) == uploads,
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average at start {os.getloadavg()[0]:.1f}"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}{load}"
    )


def record(summary: dict[str, Any], command: str, where: str, start_machine: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    lines = []
    if not path.exists() or not path.read_text().strip():
        lines.append("# Benchmark results\n")
    u, p, t = summary["upload_ms"], summary["poll_ms"], summary["job_turnaround_s"]
    lines += [
        f"\n## Load: {summary['uploads']} concurrent uploads + {summary['poll_rate_target']:g} polls/s for "
        f"{summary['duration_s']:g} s ({time.strftime('%Y-%m-%d')})\n",
        f"- machine: {start_machine}",
        f"- stack: {where}",
        f"- command: `{command}`",
        f"- uploads ({summary['shape'][0]}×{summary['shape'][1]}×{summary['shape'][2]} NIfTI): "
        f"p50 {u['p50']} ms, p95 {u['p95']} ms, max {u['max']} ms; "
        f"{summary['jobs_created']} of {summary['uploads']} answered 202",
        f"- status polls: {summary['polls_sent']} sent, {summary['polls_per_s']} answered/s "
        f"(target {summary['poll_rate_target']:g}; {summary['polls_skipped_backpressure']} skipped by "
        f"the in-flight bound); p50 {p['p50']} ms, p95 {p['p95']} ms, max {p['max']} ms",
        f"- jobs: {summary['job_states']}; created→finished p50 {t['p50']} s, p95 {t['p95']} s; all finished "
        f"{summary['all_done_after_s']} s after the start; every job accounted for: {summary['accounted']}",
        f"- 5xx: {summary['server_errors']}, transport errors: {summary['transport_errors']}",
        "",
    ]
    with open(path, "a") as f:
        f.write("\n".join(lines))


def spawn_stack(workdir: Path, database_url: str | None, broker_url: str | None) -> Any:
    sys.path.insert(0, str(ROOT))
    from tests.helpers import LiveStack, make_tiny_package

    stack = LiveStack(
        workdir / "var",
        database_url=database_url,
        broker_url=broker_url,
        extra_env={"DUALSEG_LOG_LEVEL": "WARNING"},
    )
    pkg = make_tiny_package(workdir / "pkg", version="tiny-load-1")
    stack.cli("models", "import", str(pkg), "--activate")
    stack.token("annotator")
    stack.start("api", "worker")
    return stack


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="API base URL (loopback only)")
    ap.add_argument("--token", help="annotator (or admin) bearer token")
    ap.add_argument("--spawn", action="store_true", help="start a private API + worker with a tiny model")
    ap.add_argument("--database-url", help="--spawn: PostgreSQL URL (default: embedded SQLite)")
    ap.add_argument("--broker-url", help="--spawn: Redis URL (default: filesystem broker)")
    ap.add_argument("--uploads", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--poll-rate", type=float, default=200)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--drain-timeout", type=float, default=600)
    ap.add_argument("--shape", default="32,32,16", help="volume shape, e.g. 32,32,16")
    ap.add_argument("--record", action="store_true", help="append the numbers to bench/RESULTS.md")
    ap.add_argument("--workdir", help="--spawn: keep data and process logs in this folder")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    assert len(shape) == 3
    start_machine = machine()
    stack = None
    tmp = None
    try:
        if args.spawn:
            if args.workdir:
                workdir = Path(args.workdir)
                workdir.mkdir(parents=True, exist_ok=True)
            else:
                tmp = tempfile.TemporaryDirectory(prefix="dualseg-load-")
                workdir = Path(tmp.name)
            stack = spawn_stack(workdir, args.database_url, args.broker_url)
            base, token = stack.base, stack.token("annotator")
            where = (
                "spawned `dualseg api` + one `dualseg worker --pool solo` on "
                f"{'PostgreSQL' if args.database_url else 'SQLite'} + "
                f"{'Redis' if args.broker_url else 'filesystem broker'}, tiny random-weight model"
            )
        else:
            if not (args.url and args.token):
                ap.error("give --url and --token, or --spawn")
            base, token, where = args.url, args.token, f"server at {args.url}"
        summary = asyncio.run(
            run_load(
                base,
                token,
                uploads=args.uploads,
                concurrency=args.concurrency,
                poll_rate=args.poll_rate,
                duration=args.duration,
                drain_timeout=args.drain_timeout,
                shape=shape,
            )
        )  # type: ignore[arg-type]
    finally:
        if stack is not None:
            stack.stop()
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(summary, indent=1))
    if args.record:
        cmd = "python bench/load.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record(summary, cmd, where, start_machine)
    ok = summary["accounted"] and summary["server_errors"] == 0 and summary["transport_errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
