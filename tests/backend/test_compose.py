"""docker-compose.yml stays valid (there is no Docker engine here; only the file is checked)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_the_production_services() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    for name in ("postgres", "redis", "api", "worker", "trainer", "beat", "orthanc"):
        assert name in services, name
        assert "healthcheck" in services[name] or name == "migrate", name
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "inference" in services["worker"]["command"]
    assert "training" in services["trainer"]["command"]


def test_compose_config_parses() -> None:
    env = {**os.environ, "DUALSEG_SECRET_KEY": "test-secret-value-123456"}
    if (shutil.which("docker")
            and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0):
        cmd = ["docker", "compose", "config", "-q"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "config", "-q"]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
