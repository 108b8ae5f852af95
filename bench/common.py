"""Shared helpers of the benchmark scripts: machine description, RSS peak sampling, result appending."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine(device: str = "cpu") -> str:
    cpu = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                   if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu} ({cpu_flags()}), {os.cpu_count()} cores, Python {platform.python_version()}"
    if device.startswith("cuda"):
        import torch

        text += f", GPU {torch.cuda.get_device_name(0)}"
    load = os.getloadavg()[0]
    return f"{text}; load average at start {load:.1f}"


def cpu_flags() -> str:
    """The vector-extension flags that decide CPU speed here (avx2, avx512f, avx512_bf16, amx_*)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    keep = [x for x in flags if x in wanted]
    return " ".join(keep) or "no avx2/avx512"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def append(title: str, body: str, device: str = "cpu") -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with open(RESULTS, "a") as f:
        f.write(f"\n## {title} ({stamp})\n\n- machine: {machine(device)}\n- command: `{command_line()}`\n\n"
                f"{body.rstrip()}\n")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated CUDA memory above the level at entry, in bytes."""

    def __init__(self, device: str = "cpu", interval: float = 0.01) -> None:
        self.device, self.interval = device, interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self._base)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes() - self._base)
