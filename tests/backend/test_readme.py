"""The README stays true: its settings table is the Settings class, and it lists every API route."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import settings_table  # noqa: E402


def test_settings_table_matches_settings() -> None:
    assert settings_table.readme_block() == settings_table.table(), \
        "README settings table is stale: run `python scripts/settings_table.py --write`"


def test_every_route_is_documented(tmp_path: Path) -> None:
    from backend.config import Settings
    from backend.main import create_app

    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(?:GET|POST|PUT|DELETE|PATCH) (/[^`? ]*)", readme))
    documented |= set(re.findall(
        r"`(?:GET|POST|PUT|DELETE|PATCH) [^`]*?, (?:GET|POST|PUT|DELETE) (/[^`? ]*)", readme))
    app = create_app(Settings(data_dir=tmp_path))
    missing = []
    for route in app.openapi()["paths"]:
        if route not in documented:
            missing.append(route)
    assert missing == [], f"routes missing from README: {missing}"
