"""`dualseg serve` (what `make run` runs): answers /healthz and /readyz, stops cleanly on Ctrl-C, and
exits non-zero when a child dies — with no orphan processes either way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, free_port


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALSEG_")}
    env.update({"DUALSEG_DATA_DIR": str(tmp_path / "var"), "DUALSEG_PORT": str(port),
                "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[str], base: str, timeout: float = 90) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("dualseg serve did not become ready")


@pytest.mark.slow
def test_serve_answers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc, base = _start(tmp_path)
    try:
        seconds = _wait_ready(proc, base)
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        assert httpx.get(base + "/api/v1/cases").status_code == 401
        kids = _children(proc.pid)
        assert len(kids) == 3, kids  # api + worker + beat
        time.sleep(3)  # let the worker finish starting
        grandchildren = [g for k in kids for g in _children(k)]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "dualseg is up at" in out
        token = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("admin token"))
        assert token.startswith("dsg_")
        assert "stopping dualseg" in out
        time.sleep(0.5)
        leftovers = [p for p in kids + grandchildren if _alive(p)]
        assert leftovers == [], f"orphans left: {leftovers}"
        print(f"ready after {seconds:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_serve_exits_nonzero_when_a_child_dies(tmp_path: Path) -> None:
    proc, base = _start(tmp_path)
    try:
        _wait_ready(proc, base)
        kids = _children(proc.pid)
        api = next(k for k in kids if "api" in Path(f"/proc/{k}/cmdline").read_text())
        os.kill(api, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "api exited with status" in out
        time.sleep(0.5)
        assert [k for k in kids if _alive(k)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
