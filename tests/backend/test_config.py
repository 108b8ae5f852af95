from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.config import Settings


def test_embedded_defaults_need_no_server(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'dualseg.db'}"
    assert s.resolved_broker_url == "filesystem://"
    assert s.resolved_storage_dir == tmp_path.resolve() / "artifacts"
    assert s.port == 8000 and s.host == "127.0.0.1" and s.auth_enabled
    s.ensure_dirs()
    assert (tmp_path / "broker" / "in").is_dir() and (tmp_path / "models").is_dir()


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUALSEG_PORT", "9123")
    monkeypatch.setenv("DUALSEG_DATA_DIR", str(tmp_path / "d"))
    s = Settings()
    assert s.port == 9123
    assert s.data_path == (tmp_path / "d").resolve()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"env": "production", "auth_enabled": True,
          "database_url": "postgresql+psycopg://x/y"}, "SECRET_KEY"),
        ({"env": "production", "secret_key": "s" * 32, "auth_enabled": False,
          "database_url": "postgresql+psycopg://x/y"}, "AUTH_ENABLED"),
        ({"env": "production", "secret_key": "s" * 32, "auth_enabled": True}, "PostgreSQL"),
        ({"host": "0.0.0.0", "auth_enabled": False}, "authentication off"),
    ],
)
def test_unsafe_values_refused(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_safe_production_accepted() -> None:
    s = Settings(env="production", secret_key="s" * 32, auth_enabled=True, host="0.0.0.0",
                 database_url="postgresql+psycopg://u@db/dualseg", broker_url="redis://r:6379/0")
    assert s.resolved_broker_url == "redis://r:6379/0"
