"""Bearer tokens and roles on the API (in-process app, embedded SQLite)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import session_scope
from backend.main import create_app
from backend.migrations import run_migrations
from backend.security import create_token, hash_token, revoke
from backend.tables import ApiToken, Role


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestClient, Settings]:
    s = Settings(data_dir=tmp_path, secret_key="test-secret-0123456789")
    run_migrations(s.resolved_database_url)
    return TestClient(create_app(s)), s


def _token(s: Settings, role: Role, expires: timedelta | None = None) -> tuple[str, str]:
    with session_scope(s.resolved_database_url) as session:
        token, row = create_token(session, s.secret_key, f"t-{role.value}", role, expires)
        return token, row.id


def test_tokens_are_stored_hashed(setup: tuple[TestClient, Settings]) -> None:
    _, s = setup
    token, tid = _token(s, Role.viewer)
    with session_scope(s.resolved_database_url) as session:
        row = session.get(ApiToken, tid)
        assert row is not None
        assert row.token_hash == hash_token(token, s.secret_key) and token not in row.token_hash


def test_missing_invalid_expired_revoked(setup: tuple[TestClient, Settings]) -> None:
    c, s = setup
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    r = c.get("/api/v1/cases")
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    assert c.get("/api/v1/cases", headers={"Authorization": "Bearer dsg_wrong"}).status_code == 401
    expired, _ = _token(s, Role.admin, timedelta(seconds=-1))
    r = c.get("/api/v1/cases", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    token, tid = _token(s, Role.admin)
    assert c.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with session_scope(s.resolved_database_url) as session:
        revoke(session, tid)
    r = c.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_role_order(setup: tuple[TestClient, Settings]) -> None:
    c, s = setup
    viewer, _ = _token(s, Role.viewer)
    annotator, _ = _token(s, Role.annotator)
    h = {"Authorization": f"Bearer {viewer}"}
    assert c.get("/api/v1/cases", headers=h).status_code == 200
    r = c.post("/api/v1/cases", headers=h, files=[("files", ("a.nii.gz", b"x"))], data={"segment": "false"})
    assert r.status_code == 403 and "annotator" in r.json()["error"]["message"]
    r = c.delete("/api/v1/cases/abc", headers={"Authorization": f"Bearer {annotator}"})
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]


def test_token_cache_keeps_expiry_and_revocation(
    setup: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token lookups are cached for CACHE_TTL_S: expiry still applies on every request, a revocation
    made outside this process (here: the row edited directly) within the TTL, and the cache is bounded."""
    import backend.security as security

    c, s = setup
    monkeypatch.setattr(security, "CACHE_TTL_S", 0.3)
    token, _ = _token(s, Role.viewer, timedelta(hours=1))
    h = {"Authorization": f"Bearer {token}"}
    assert c.get("/api/v1/cases", headers=h).status_code == 200
    later = security.utcnow() + timedelta(hours=2)
    monkeypatch.setattr(security, "utcnow", lambda: later)
    r = c.get("/api/v1/cases", headers=h)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    monkeypatch.undo()

    monkeypatch.setattr(security, "CACHE_TTL_S", 0.3)
    token, tid = _token(s, Role.viewer)
    h = {"Authorization": f"Bearer {token}"}
    assert c.get("/api/v1/cases", headers=h).status_code == 200
    with session_scope(s.resolved_database_url) as session:
        row = session.get(ApiToken, tid)
        assert row is not None
        row.revoked_at = security.utcnow()  # not through revoke(): as another process would
    assert c.get("/api/v1/cases", headers=h).status_code == 200  # still cached
    time.sleep(0.35)
    r = c.get("/api/v1/cases", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]

    monkeypatch.setattr(security, "CACHE_MAX", 2)
    for _ in range(3):
        other, _ = _token(s, Role.viewer)
        assert c.get("/api/v1/cases", headers={"Authorization": f"Bearer {other}"}).status_code == 200
        assert len(security._CACHE) <= 2
