from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

CLASSES: list[dict[str, Any]] = [
    {
        "index": 0,
        "name": "background",
        "category": {"code": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
        "type": {"code": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
        "color": [0, 0, 0],
    },
    {
        "index": 1,
        "name": "left atrium",
        "category": {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
        "type": {"code": "82471001", "scheme": "SCT", "meaning": "Left atrium"},
        "color": [220, 60, 60],
    },
    {
        "index": 2,
        "name": "left ventricle",
        "category": {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
        "type": {"code": "87878005", "scheme": "SCT", "meaning": "Left ventricle"},
        "color": [60, 60, 220],
    },
]


@pytest.fixture
def classes() -> list[dict[str, Any]]:
    return [dict(c) for c in CLASSES]


def run_dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by dciodvfy for ``path``; skips when dciodvfy is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings
