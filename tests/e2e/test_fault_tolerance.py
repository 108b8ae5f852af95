"""Fault tolerance with real processes and our *own* throwaway PostgreSQL and Redis (other tests share
the machine's servers, so nothing here stops those): a worker SIGKILLed mid-inference, Redis restarted
with jobs queued, the API killed mid-upload, PostgreSQL briefly down."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import IN_CI
from tests.helpers import ROOT, LiveStack, blob_volume, free_port, make_tiny_package, write_nifti

PG_BIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is needed for the fault tests in CI")
    pytest.skip(f"{what} not available")


class ThrowawayPostgres:
    """initdb + pg_ctl in a temp folder on a free port, run as the `postgres` user when we are root."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            _missing("PostgreSQL 15 server binaries")
        self.dir = Path(tempfile.mkdtemp(prefix="dualseg-pg-"))
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            PG_BIN / "initdb",
            "-D",
            str(self.dir / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: object) -> None:
        argv = [str(c) for c in cmd]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        )
        self._run(
            PG_BIN / "pg_ctl",
            "-D",
            self.dir / "data",
            "-o",
            opts,
            "-l",
            self.dir / "log",
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    def __init__(self) -> None:
        if not shutil.which("redis-server"):
            _missing("redis-server")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dualseg-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # no persistence: every queued message is lost
            self.proc.wait(timeout=20)
            self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def spawn(stack: LiveStack, name: str, *args: str) -> None:
    log = open(stack.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    stack.procs[name] = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", *args],
        env=stack.env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def start_worker(stack: LiveStack, name: str = "worker") -> None:
    spawn(stack, name, "worker", "--queues", "inference,training", "--pool", "solo")


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[ThrowawayPostgres, ThrowawayRedis]]:
    pg, redis = ThrowawayPostgres(), ThrowawayRedis()
    try:
        pg.start()
        redis.start()
        yield pg, redis
    finally:
        pg.destroy()
        redis.destroy()


@pytest.fixture(scope="module")
def stack(
    services: tuple[ThrowawayPostgres, ThrowawayRedis], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveStack]:
    pg, redis = services
    tmp = tmp_path_factory.mktemp("faults")
    s = LiveStack(
        tmp / "var",
        database_url=pg.url,
        broker_url=redis.url,
        extra_env={
            "DUALSEG_JOB_LEASE_S": "5",
            "DUALSEG_TRAINING_LEASE_S": "5",
            "DUALSEG_HEARTBEAT_S": "1",
            "DUALSEG_SWEEP_INTERVAL_S": "2",
            "DUALSEG_JOB_QUEUED_GRACE_S": "6",
            "DUALSEG_ORPHAN_MAX_AGE_S": "3",  # the janitor part of the API-kill test
        },
    )
    pkg = make_tiny_package(tmp / "pkg", version="tiny-fault-1")
    out = s.cli("models", "import", str(pkg), "--activate")
    assert "imported tiny-fault-1" in out.stdout, out.stderr
    s.token("admin"), s.token("viewer")
    s.start("api")
    start_worker(s)
    spawn(s, "beat", "beat")  # the sweeper
    yield s
    s.stop()


def _nifti(tmp: Path, shape: tuple[int, int, int], seed: int) -> bytes:
    image, _ = blob_volume(shape, seed=seed)
    return write_nifti(tmp / f"v{seed}.nii.gz", image, np.diag([1.0, 1.0, 1.0, 1.0])).read_bytes()


def _upload(client: httpx.Client, data: bytes) -> dict[str, Any]:
    r = client.post("/api/v1/cases", files=[("files", ("v.nii.gz", data))])
    assert r.status_code == 202, r.text
    return dict(r.json())


def _wait(pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(what)


def _case_files(stack: LiveStack, case_id: str) -> list[str]:
    root = Path(stack.env["DUALSEG_DATA_DIR"]) / "artifacts" / "cases" / case_id
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_worker_sigkilled_mid_inference_is_swept_and_succeeds(stack: LiveStack, tmp_path: Path) -> None:
    with stack.client("admin") as client:
        created = _upload(client, _nifti(tmp_path, (64, 64, 48), seed=11))  # 75 windows: seconds of inference
        job_id = created["job_id"]

        def running() -> dict[str, Any] | None:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            return (
                job
                if job["state"] == "running" and job["stage"] == "inference" and job["progress"] >= 5
                else None
            )

        first = _wait(running, 120, "job never ran", interval=0.05)
        assert first["attempts"] == 1
        stack.stop("worker", sig=signal.SIGKILL)
        start_worker(stack)
        job = stack.wait_job(client, job_id, timeout=240)
        assert job["state"] == "succeeded", (job, stack.log_tail("worker"), stack.log_tail("beat"))
        assert job["attempts"] >= 2, job
        case = client.get(f"/api/v1/cases/{created['case_id']}").json()
        kinds = [a["kind"] for a in case["artifacts"]]
        assert len(kinds) == len(set(kinds)) and {"mask_nifti", "entropy_nifti", "regions_json"} <= set(kinds)
        files = _case_files(stack, created["case_id"])
        assert not [f for f in files if ".tmp-" in f], files  # nothing half-written left by the killed worker
        results = [f for f in files if f.startswith("jobs/") or "/jobs/" in f or job_id in f]
        assert len(results) == len(set(results))
        assert client.get(f"/api/v1/cases/{created['case_id']}/mask").status_code == 200


def test_redis_restart_with_jobs_queued_all_complete(stack: LiveStack, services: Any, tmp_path: Path) -> None:
    _, redis = services
    with stack.client("admin") as client:
        stack.stop("worker")  # jobs stay queued in Redis
        jobs = [_upload(client, _nifti(tmp_path, (32, 32, 16), seed=20 + n))["job_id"] for n in range(2)]
        redis.stop()
        # while Redis is down an upload is still accepted (the row is the truth; the sweeper re-sends)
        jobs.append(_upload(client, _nifti(tmp_path, (32, 32, 16), seed=30))["job_id"])
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
        redis.start()
        start_worker(stack)
        done = [stack.wait_job(client, j, timeout=240) for j in jobs]
        assert [d["state"] for d in done] == ["succeeded"] * 3, (done, stack.log_tail("beat"))
        assert client.get("/readyz").status_code == 200


def _raw_upload_start(port: int, token: str, total: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    boundary = "kill-me"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.nii.gz"\r\n'
        "Content-Type: application/gzip\r\n\r\n"
    ).encode()
    sock.sendall(
        (
            f"POST /api/v1/cases HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n"
        ).encode()
        + head
    )
    return sock


def test_api_killed_mid_upload_leaves_no_half_case(stack: LiveStack, tmp_path: Path) -> None:
    import threading

    data_dir = Path(stack.env["DUALSEG_DATA_DIR"])
    incoming, cases_dir = data_dir / "artifacts" / ".incoming", data_dir / "artifacts" / "cases"
    with stack.client("admin") as client:
        before = client.get("/api/v1/cases", params={"limit": 500}).json()
        # 1. killed while the body streams in: the spooled parts die with the process
        sock = _raw_upload_start(stack.port, stack.token("admin"), 40 * 1024 * 1024)
        for _ in range(80):  # 5 MiB of a 40 MiB body
            sock.sendall(b"\x1f" * 65536)
        time.sleep(0.5)
        stack.stop("api", sig=signal.SIGKILL)
        sock.close()
        stack.start("api")
        assert client.get("/api/v1/cases", params={"limit": 500}).json()["total"] == before["total"]
        assert list(incoming.iterdir()) == []

        # 2. killed while the complete upload is validated and stored (staging + the case folder)
        big = _nifti(tmp_path, (256, 256, 96), seed=50)
        cases_dir.mkdir(parents=True, exist_ok=True)
        dirs_before = set(os.listdir(cases_dir))
        thread = threading.Thread(target=lambda: _post_quietly(stack, big), daemon=True)
        thread.start()
        _wait(lambda: set(os.listdir(cases_dir)) - dirs_before, 120, "the API never started storing the case",
              interval=0.01)
        stack.stop("api", sig=signal.SIGKILL)
        thread.join(30)
        stack.start("api")
        after = client.get("/api/v1/cases", params={"limit": 500}).json()
        assert after["total"] == before["total"]  # no case row: the transaction never committed
        # what the dead request left on disk is removed by the sweeper once it is orphan_max_age_s old
        ids = {c["case_id"] for c in after["items"]}
        _wait(lambda: set(os.listdir(cases_dir)) == ids and not list(incoming.iterdir()), 60,
              f"orphans stayed: {set(os.listdir(cases_dir)) - ids} {list(incoming.iterdir())}")


def _post_quietly(stack: LiveStack, data: bytes) -> None:
    try:
        with stack.client("admin", timeout=120) as c:
            c.post("/api/v1/cases", files=[("files", ("big.nii.gz", data))])
    except httpx.HTTPError:
        pass  # the server was killed under it


def test_postgres_briefly_down_gives_503_and_recovers(
    stack: LiveStack, services: Any, tmp_path: Path
) -> None:
    pg, _ = services
    with stack.client("viewer") as viewer, stack.client("admin") as admin:
        assert viewer.get("/api/v1/cases").status_code == 200
        pg.stop()
        try:
            ready = viewer.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
            r = viewer.get("/api/v1/cases")
            assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
            r = admin.post(
                "/api/v1/cases", files=[("files", ("v.nii.gz", _nifti(tmp_path, (40, 36, 24), 41)))]
            )
            assert r.status_code == 503, r.text
            assert viewer.get("/api/v1/jobs/whatever").status_code == 503
        finally:
            pg.start()
        _wait(lambda: viewer.get("/readyz").status_code == 200, 30, "readyz did not recover")
        assert viewer.get("/api/v1/cases").status_code == 200
        created = _upload(admin, _nifti(tmp_path, (32, 32, 16), seed=42))
        job = stack.wait_job(admin, created["job_id"], timeout=240)
        assert job["state"] == "succeeded", (job, stack.log_tail("worker"))  # worker recovered, not restarted
        assert stack.procs["api"].poll() is None and stack.procs["worker"].poll() is None
