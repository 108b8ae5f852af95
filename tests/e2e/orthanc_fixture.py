"""A real Orthanc (Debian `orthanc` + `orthanc-dicomweb`) for the PACS tests: free loopback ports,
``RemoteAccessAllowed: false``, DICOMweb on, store/find from any AE allowed, optional Lua scripts.

Orthanc 1.10 has no bind-address option (it listens on every interface); the tests only ever talk to
127.0.0.1, the HTTP API refuses non-loopback clients, and the DICOM port checks the called AE title.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import free_port

DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def dicomweb_plugin() -> str | None:
    for p in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(p).exists():
            return p
    try:  # the Debian package's file list names the versioned library
        out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    libs = [line for line in out.stdout.splitlines() if "libOrthancDicomWeb.so" in line]
    return libs[0] if libs else None


class Orthanc:
    """One Orthanc process with its own storage folder; ``stop()`` ends it."""

    def __init__(self, folder: Path, aet: str = "ORTHANCTEST", lua_scripts: list[Path] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        binary, plugin = orthanc_binary(), dicomweb_plugin()
        if binary is None or plugin is None:
            raise RuntimeError("Orthanc or its DICOMweb plugin is not installed "
                               "(apt-get install orthanc orthanc-dicomweb)")
        self.folder = folder
        self.aet = aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.base}/dicom-web"
        folder.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "dualseg-test-orthanc",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowEcho": True,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpDescribeErrors": True,
            "StableAge": 1,
            "ConcurrentJobs": 1,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "LuaScripts": [str(p.resolve()) for p in (lua_scripts or [])],
        }
        config.update(extra or {})
        self.config = config
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = folder / "orthanc.log"
        self._binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, **options: Any) -> None:
        """Change configuration options before ``start()``."""
        self.config.update(options)
        self.config_path.write_text(json.dumps(self.config, indent=1))

    def start(self, timeout: float = 30.0) -> Orthanc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([self._binary, "--verbose", str(self.config_path)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/system", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def get(self, path: str) -> Any:
        r = httpx.get(self.base + path, timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
