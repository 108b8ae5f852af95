"""Runs the embedded deployment (API, one worker, beat) as child processes of `dualseg serve`.

Each child leads its own process group, and the supervisor signals whole groups: Ctrl-C / SIGTERM stops
every group (SIGTERM, then SIGKILL after a grace period); a child that dies on its own is reported, every
group — the dead child's too, where its own children may still run — is stopped and the supervisor exits
non-zero. Children get PR_SET_PDEATHSIG so that even a SIGKILL of the supervisor leaves no orphans, and the
worker's pool children and embedded beat set it too (worker/liveness.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; no-op elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):  # not Linux: best effort
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, children: list[Child], grace_s: float = 30.0, echo: Callable[[str], None] = print):
        self.children = children
        self.grace_s = grace_s
        self.echo = echo
        self._stop_signal: int | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    def start(self) -> None:
        for child in self.children:
            # A new session: the terminal's Ctrl-C reaches only the supervisor, which stops the
            # children in order instead of every process reacting at once.
            child.proc = subprocess.Popen(child.argv, start_new_session=True, preexec_fn=die_with_parent)

    def _signal_group(self, child: Child, sig: int) -> bool:
        """Send ``sig`` to the child's process group (the child and whatever it started); False when the
        group is empty."""
        assert child.proc is not None
        try:
            os.killpg(child.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - a reused group id of another user
            return False

    def stop(self) -> None:
        started = [c for c in self.children if c.proc is not None]
        for c in started:
            self._signal_group(c, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for c in started:
            assert c.proc is not None
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"{c.name} did not stop within {self.grace_s:.0f} s; killing it")
        for c in started:  # whatever is left in a group (a stuck child, a grandchild) is killed
            assert c.proc is not None
            self._signal_group(c, signal.SIGKILL)
            c.proc.wait()

    def wait_http(self, url: str, timeout_s: float) -> bool:
        """Poll ``url`` until it answers 200 or a child dies; True when it answered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._stop_signal is None:
            if self.dead_child() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL
                    if resp.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def dead_child(self) -> Child | None:
        for c in self.children:
            if c.proc is not None and c.proc.poll() is not None:
                return c
        return None

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start, call ``on_ready`` (in the supervisor), then block until a signal or a child's death."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if on_ready is not None:
                on_ready()
            while self._stop_signal is None:
                dead = self.dead_child()
                if dead is not None:
                    assert dead.proc is not None
                    self.echo(f"{dead.name} exited with status {dead.proc.returncode}; stopping dualseg")
                    self.stop()
                    return 1
                time.sleep(0.3)
            self.echo("stopping dualseg ...")
            self.stop()
            return 0
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def python_child(command: str, *args: str) -> Child:
    """A child named ``command`` running ``python -m backend.cli <command> <args>``."""
    return Child(command, [sys.executable, "-m", "backend.cli", command, *args])
