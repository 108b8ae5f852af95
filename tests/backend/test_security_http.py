"""HTTP hardening in-process: security headers, request IDs, CORS, the size cap, the audit trail."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import session_scope
from backend.main import create_app
from backend.migrations import run_migrations
from backend.security import create_token
from backend.tables import Role


def _setup(tmp_path: Path, **kw: object) -> tuple[TestClient, dict[str, str]]:
    s = Settings(data_dir=tmp_path, secret_key="http-secret-0123456789", **kw)  # type: ignore[arg-type]
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    tokens = {}
    with session_scope(s.resolved_database_url) as session:
        for role in Role:
            tokens[role.value], _ = create_token(session, s.secret_key, f"http-{role.value}", role)
    return TestClient(create_app(s)), {r: f"Bearer {t}" for r, t in tokens.items()}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    yield _setup(tmp_path, max_upload_bytes=2 * 1024 * 1024)


def test_security_headers_everywhere(app: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = app
    for path, headers in (
        ("/healthz", {}),
        ("/api/v1/cases", {"Authorization": auth["viewer"]}),
        ("/api/v1/cases", {}),
        ("/api/v1/nope", {"Authorization": auth["viewer"]}),
    ):
        r = client.get(path, headers=headers)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"
        if path.startswith("/api/"):
            assert r.headers["cache-control"] == "no-store", (path, r.status_code)
            assert r.json()["error"]["message"] if r.status_code >= 400 else True


def test_request_id_in_and_out(
    app: tuple[TestClient, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    client, auth = app
    r = client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and generated != "trace-abc.123"
    # a malformed id (header injection, absurd length) is replaced, never echoed
    for bad in ("a" * 300, "x y", "id;drop"):
        assert client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"] != bad
    # log records made while serving a request carry its id
    with caplog.at_level(logging.INFO):
        logging.getLogger("dualseg.test").info("outside")
        client.post("/api/v1/cases", headers={"X-Request-ID": "rid-42"})  # 401, logged by nothing...
    outside = [r for r in caplog.records if r.getMessage() == "outside"]
    assert outside and outside[0].request_id == "-"  # type: ignore[attr-defined]


def test_cors_is_off_by_default_and_explicit_when_on(tmp_path: Path) -> None:
    client, auth = _setup(tmp_path / "a")
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/api/v1/cases", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    r = client.get(
        "/api/v1/cases", headers={"Origin": "https://evil.example", "Authorization": auth["viewer"]}
    )
    assert "access-control-allow-origin" not in r.headers

    client, auth = _setup(tmp_path / "b", cors_allowed_origins="https://viewer.example.org")
    ok = {
        "Origin": "https://viewer.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    r = client.options("/api/v1/cases", headers=ok)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://viewer.example.org"
    assert "x-request-id" in r.headers  # preflights pass through the request-context middleware too
    r = client.options("/api/v1/cases", headers=pre)
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    r = client.get(
        "/api/v1/cases", headers={"Origin": "https://viewer.example.org", "Authorization": auth["viewer"]}
    )
    assert r.headers["access-control-allow-origin"] == "https://viewer.example.org"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


def test_size_cap_from_content_length_and_streamed(app: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = app
    big = b"\0" * (4 * 1024 * 1024)  # cap: 2 MiB + 1 MiB of multipart slack
    r = client.post(
        "/api/v1/cases",
        headers={"Authorization": auth["annotator"]},
        files=[("files", ("big.nii.gz", big))],
        data={"segment": "false"},
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"--b\r\n" + b"\0" * (512 * 1024)

    r = client.post(
        "/api/v1/cases",
        content=chunks(),
        headers={"Authorization": auth["annotator"], "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413, r.text
    # the cap applies after authentication: an anonymous giant is a 401, not a 413
    r = client.post("/api/v1/cases", files=[("files", ("big.nii.gz", big))])
    assert r.status_code == 401


def test_early_guard_refuses_before_the_route(app: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = app
    r = client.post("/api/v1/cases", files=[("files", ("a.nii.gz", b"x"))])
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.headers["connection"] == "close"
    r = client.post(
        "/api/v1/cases", headers={"Authorization": auth["viewer"]}, files=[("files", ("a.nii.gz", b"x"))]
    )
    assert r.status_code == 403 and "annotator" in r.json()["error"]["message"]
    r = client.delete("/api/v1/cases/x", headers={"Authorization": auth["annotator"]})
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    r = client.post("/api/v1/cases", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    # allowed callers reach the route (here: a 422 for the missing files)
    r = client.post("/api/v1/cases", headers={"Authorization": auth["annotator"]})
    assert r.status_code == 422


def test_audit_trail_filters_and_pages(app: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = app
    admin = {"Authorization": auth["admin"]}
    for n in range(3):
        assert (
            client.post("/api/v1/tokens", json={"name": f"t{n}", "role": "viewer"}, headers=admin).status_code
            == 201
        )
    page = client.get("/api/v1/audit", params={"limit": 2}, headers=admin).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["items"][0]["action"] == "token.create"
    assert page["items"][0]["actor"] == "http-admin" and page["items"][0]["details"] == {"role": "viewer"}
    rest = client.get("/api/v1/audit", params={"limit": 2, "offset": 2}, headers=admin).json()["items"]
    assert len(rest) == 1 and rest[0]["id"] < page["items"][1]["id"]
    assert client.get("/api/v1/audit", params={"action": "token.*"}, headers=admin).json()["total"] == 3
    assert client.get("/api/v1/audit", params={"action": "case.*"}, headers=admin).json()["total"] == 0
    assert client.get("/api/v1/audit", params={"actor": "someone-else"}, headers=admin).json()["total"] == 0
    since = page["items"][0]["at"]
    assert client.get("/api/v1/audit", params={"since": since}, headers=admin).json()["total"] >= 1
    assert client.get("/api/v1/audit", params={"limit": 0}, headers=admin).status_code == 422
    # an offset past any real list is a clear 422, not a database overflow (found by fuzzing: a 500)
    for path in ("/api/v1/audit", "/api/v1/cases"):
        huge = client.get(path, params={"offset": 33600436792524816384}, headers=admin)
        assert huge.status_code == 422 and "offset" in huge.text
        assert client.get(path, params={"offset": 10_000_000}, headers=admin).status_code == 200
    assert client.get("/api/v1/audit", headers={"Authorization": auth["annotator"]}).status_code == 403
