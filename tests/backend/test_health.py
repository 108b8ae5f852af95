from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.main import create_app
from backend.migrations import run_migrations


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def test_healthz_and_readyz_embedded(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    run_migrations(s.resolved_database_url)
    c = _client(s)
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_503_when_database_and_broker_are_down(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
                 broker_url="redis://127.0.0.1:1/0")
    r = _client(s).get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("unavailable")
    assert body["checks"]["broker"].startswith("unavailable")


@pytest.mark.postgres
@pytest.mark.redis
def test_readyz_on_postgres_and_redis(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    s = Settings(data_dir=tmp_path, database_url=postgres_url, broker_url=redis_url)
    run_migrations(postgres_url)
    r = _client(s).get("/readyz")
    assert r.status_code == 200, r.text


def test_unknown_route_is_json_404(tmp_path: Path) -> None:
    r = _client(Settings(data_dir=tmp_path)).get("/api/v1/nothing-here")
    assert r.status_code == 404
