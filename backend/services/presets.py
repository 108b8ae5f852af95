"""Training presets are YAML files in configs/ (read by models.training.config; listed here torch-free)."""

from __future__ import annotations

from pathlib import Path

from backend.errors import BadInput

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def check_preset(name: str) -> None:
    if name not in available_presets():
        raise BadInput(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
