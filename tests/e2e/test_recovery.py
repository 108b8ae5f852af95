"""Recovery in seconds with real processes (issue 18): a worker SIGKILLed mid-inference under `dualseg
serve` leaves no process behind and its job succeeds right after a restart; in the production layout the
other worker takes the job over within lease + one sweep period; of two `dualseg beat` only one schedules.

The measured times are printed (run with -s to read them)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import ROOT, LiveStack, blob_volume, make_tiny_package, write_nifti

pytestmark = pytest.mark.slow


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _tree(root: int) -> set[int]:
    table = _proc_table()
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in found]
        found.update(kids)
        frontier.extend(kids)
    return found


def _alive(pids: set[int]) -> list[int]:
    table = _proc_table()
    return sorted(p for p in pids if p in table and table[p][1] not in ("Z", "X"))


def _processes_using(data_dir: Path) -> list[int]:
    """Every live process whose environment names this data folder (orphans reparented to PID 1 too)."""
    marker = f"DUALSEG_DATA_DIR={data_dir}".encode()
    out = []
    for pid in _alive(set(_proc_table())):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            out.append(pid)
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _wait(pred: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(what)


def _upload(stack: LiveStack, tmp: Path, shape: tuple[int, int, int], seed: int) -> dict[str, Any]:
    image, _ = blob_volume(shape, seed=seed)
    path = write_nifti(tmp / f"v{seed}.nii.gz", image, np.eye(4))
    with stack.client("admin") as client:
        r = client.post("/api/v1/cases", files=[("files", ("v.nii.gz", path.read_bytes()))])
    assert r.status_code == 202, r.text
    return dict(r.json())


def _job(stack: LiveStack, job_id: str) -> dict[str, Any]:
    with stack.client("viewer") as client:
        return dict(client.get(f"/api/v1/jobs/{job_id}").json())


def _in_inference(stack: LiveStack, job_id: str) -> dict[str, Any] | None:
    job = _job(stack, job_id)
    assert job["state"] in ("queued", "running"), job
    return job if job["state"] == "running" and job["stage"] == "inference" and job["progress"] >= 5 else None


def _serve(stack: LiveStack, name: str) -> subprocess.Popen[bytes]:
    stack.logs.mkdir(parents=True, exist_ok=True)
    log = open(stack.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "backend.cli", "serve"], env=stack.env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def _one_artifact_set(stack: LiveStack, case_id: str, job_id: str) -> None:
    with stack.client("viewer") as client:
        case = client.get(f"/api/v1/cases/{case_id}").json()
    kinds = [a["kind"] for a in case["artifacts"]]
    assert len(kinds) == len(set(kinds)) and {"mask_nifti", "entropy_nifti", "regions_json"} <= set(kinds)
    root = Path(stack.env["DUALSEG_DATA_DIR"]) / "artifacts" / "cases" / case_id
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert not [f for f in files if ".tmp" in f], files
    job_dirs = {f.split("/")[1] for f in files if f.startswith("jobs/")}
    assert job_dirs == {job_id}, files


def test_embedded_worker_killed_mid_inference_no_orphans_and_restart_recovers(tmp_path: Path) -> None:
    data = tmp_path / "var"
    stack = LiveStack(data)
    stack.env.pop("DUALSEG_SWEEP_INTERVAL_S")  # the defaults: recovery must not wait for a sweep or lease
    pkg = make_tiny_package(tmp_path / "pkg", version="tiny-restart-1")
    assert "imported tiny-restart-1" in stack.cli("models", "import", str(pkg), "--activate").stdout
    stack.token("admin"), stack.token("viewer")
    serve = _serve(stack, "serve-1")
    try:
        stack.wait_http("/readyz", timeout=120)
        created = _upload(stack, tmp_path, (80, 80, 48), seed=3)
        job_id = created["job_id"]
        first = _wait(lambda: _in_inference(stack, job_id), 120, "the job never reached inference", 0.05)
        assert first["attempts"] == 1
        tree = _tree(serve.pid)
        assert len(tree) >= 4, tree  # serve, api, worker, beat
        worker = next(p for p in tree if " worker " in _cmdline(p))
        os.kill(worker, signal.SIGKILL)
        assert serve.wait(timeout=60) == 1
        assert "worker exited with status -9" in stack.log_tail("serve-1", 10**7)
        time.sleep(0.3)
        assert _alive(tree) == [], f"left of the tree: {[(p, _cmdline(p)) for p in _alive(tree)]}"
        assert _processes_using(data) == []
        url = f"sqlite:///{data.resolve() / 'dualseg.db'}"
        assert _column(url, job_id, "state") == "running"  # nobody was left to say otherwise
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()

    restarted = time.monotonic()
    serve = _serve(stack, "serve-2")
    try:
        stack.wait_http("/healthz", timeout=120)
        job = _wait(lambda: (j := _job(stack, job_id))["state"] in ("succeeded", "failed") and j, 120,
                    f"the job did not finish within 2 minutes of the restart: {_job(stack, job_id)}")
        took = time.monotonic() - restarted
        assert job["state"] == "succeeded", (job, stack.log_tail("serve-2"))
        assert job["attempts"] == 2 and took < 120, (job, took)
        assert "re-queued 1 job(s) left running by the previous worker" in stack.log_tail("serve-2", 10**7)
        _one_artifact_set(stack, created["case_id"], job_id)
        print(f"\nembedded: restart -> job succeeded in {took:.1f} s (attempts {job['attempts']})")
        tree = _tree(serve.pid)
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=90) == 0
        time.sleep(0.3)
        assert _alive(tree) == [] and _processes_using(data) == []
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def _spawn(stack: LiveStack, name: str, *args: str) -> subprocess.Popen[bytes]:
    stack.logs.mkdir(parents=True, exist_ok=True)
    log = open(stack.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    stack.procs[name] = subprocess.Popen([sys.executable, "-m", "backend.cli", *args], env=stack.env,
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return stack.procs[name]


def _registered(url: str) -> dict[int, str]:
    """pid -> workers.id of the registered workers."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {int(pid): wid for wid, pid in conn.execute(text("SELECT id, pid FROM workers"))}
    finally:
        engine.dispose()


def _column(url: str, job_id: str, column: str) -> Any:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT {column} FROM jobs WHERE id = :j"), {"j": job_id}).scalar()
    finally:
        engine.dispose()


def _held_by(url: str, job_id: str) -> str | None:
    return _column(url, job_id, "worker_id")  # type: ignore[no-any-return]


SENT = re.compile(r"Sending due task sweep-stuck-jobs")


@pytest.mark.postgres
@pytest.mark.redis
def test_production_failover_to_the_other_worker_and_one_beat(tmp_path: Path, postgres_url: str,
                                                              redis_url: str) -> None:
    lease, sweep = 6, 2
    stack = LiveStack(tmp_path / "var", database_url=postgres_url, broker_url=redis_url,
                      extra_env={"DUALSEG_JOB_LEASE_S": str(lease), "DUALSEG_TRAINING_LEASE_S": str(lease),
                                 "DUALSEG_HEARTBEAT_S": "1", "DUALSEG_SWEEP_INTERVAL_S": str(sweep)})
    pkg = make_tiny_package(tmp_path / "pkg", version="tiny-failover-1")
    assert "imported tiny-failover-1" in stack.cli("models", "import", str(pkg), "--activate").stdout
    stack.token("admin"), stack.token("viewer")
    try:
        stack.start("api")
        workers = {n: _spawn(stack, n, "worker", "--queues", "inference", "--pool", "solo",
                             "--name", f"dualseg-{n}@%h") for n in "ab"}
        beat1 = _spawn(stack, "beat-1", "beat")
        _wait(lambda: {p.pid for p in workers.values()} <= set(_registered(postgres_url)), 90,
              "the workers did not register")
        created = _upload(stack, tmp_path, (80, 80, 48), seed=5)
        job_id = created["job_id"]
        _wait(lambda: _in_inference(stack, job_id), 120, "the job never reached inference", 0.05)
        ids = _registered(postgres_url)
        holder_id = _held_by(postgres_url, job_id)
        holder = next(n for n, p in workers.items() if ids.get(p.pid) == holder_id)
        survivor = "b" if holder == "a" else "a"
        workers[holder].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        workers[holder].wait()
        stack.procs.pop(holder)
        again = _wait(lambda: (j := _job(stack, job_id))["attempts"] == 2 and j["state"] != "queued" and j,
                      60, "no other worker took the job over")
        taken_over = time.monotonic() - killed
        with stack.client("viewer") as client:
            job = stack.wait_job(client, job_id, timeout=120)
        finished = time.monotonic() - killed
        assert job["state"] == "succeeded" and job["attempts"] == 2, (job, stack.log_tail(survivor))
        assert _held_by(postgres_url, job_id) == ids[workers[survivor].pid]
        assert again["state"] in ("running", "succeeded")
        assert taken_over <= lease + sweep, taken_over
        run_s = float(job["timings"].get("total", 0.0))
        assert finished <= lease + sweep + run_s + 5, (finished, run_s)
        _one_artifact_set(stack, created["case_id"], job_id)
        print(f"\nproduction: SIGKILL -> taken over by the other worker in {taken_over:.1f} s, succeeded "
              f"{finished:.1f} s after the kill (its run: {run_s:.1f} s; lease {lease} s, sweep {sweep} s)")

        # a second beat refuses to schedule while the first holds the lock, and takes over when it dies
        _wait(lambda: SENT.search(stack.log_tail("beat-1", 100_000)), 30, "beat-1 never scheduled")
        _spawn(stack, "beat-2", "beat")
        _wait(lambda: "this process does NOT schedule" in stack.log_tail("beat-2"), 60,
              f"beat-2 did not refuse: {stack.log_tail('beat-2')}")
        before = len(SENT.findall(stack.log_tail("beat-1", 100_000)))
        time.sleep(3 * sweep)
        assert len(SENT.findall(stack.log_tail("beat-1", 100_000))) >= before + 2
        assert not SENT.search(stack.log_tail("beat-2", 100_000))
        beat1.send_signal(signal.SIGKILL)
        beat1.wait()
        stack.procs.pop("beat-1")
        dead = time.monotonic()
        _wait(lambda: SENT.search(stack.log_tail("beat-2", 100_000)), 30, "beat-2 never took over")
        took_over = time.monotonic() - dead
        assert "took over the scheduler lock" in stack.log_tail("beat-2", 100_000)
        assert took_over <= 15, took_over  # lock retry (2 s) + beat start-up + its first tick
        print(f"beat: the standby beat scheduled {took_over:.1f} s after the holder was killed")
    finally:
        stack.stop()
