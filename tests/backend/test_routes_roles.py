"""Every /api and /monailabel route × every role, table-driven.

The routes come from the app itself, so a new route is covered automatically; the expected minimum
role comes from ROLE_TABLE, and the test fails when a route is missing from it (add the route there
with the role a person should need). viewer reads; annotator uploads and corrects; admin manages
models, training, tokens and deletion.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import session_scope
from backend.main import create_app
from backend.migrations import run_migrations
from backend.security import create_token
from backend.tables import Role

V, A, ADM = "viewer", "annotator", "admin"
ROLE_TABLE: dict[tuple[str, str], str] = {
    # cases and results: viewers read, annotators upload and re-run, admins delete
    ("GET", "/api/v1/cases"): V,
    ("POST", "/api/v1/cases"): A,
    ("GET", "/api/v1/cases/{case_id}"): V,
    ("DELETE", "/api/v1/cases/{case_id}"): ADM,
    ("GET", "/api/v1/cases/{case_id}/identity"): ADM,  # original patient identifiers of a de-identified case
    ("POST", "/api/v1/cases/{case_id}/segmentations"): A,
    ("GET", "/api/v1/cases/{case_id}/mask"): V,
    ("GET", "/api/v1/cases/{case_id}/uncertainty"): V,
    ("GET", "/api/v1/cases/{case_id}/regions"): V,
    ("GET", "/api/v1/cases/{case_id}/image"): V,
    ("PUT", "/api/v1/cases/{case_id}/correction"): A,
    ("GET", "/api/v1/cases/{case_id}/corrections"): V,
    ("GET", "/api/v1/jobs/{job_id}"): V,
    ("DELETE", "/api/v1/jobs/{job_id}"): A,
    # model registry: viewers read, admins promote and roll back
    ("GET", "/api/v1/models"): V,
    ("GET", "/api/v1/models/{version}"): V,
    ("GET", "/api/v1/models/{version}/stats"): V,
    ("POST", "/api/v1/models/{version}/promote"): ADM,
    ("POST", "/api/v1/models/rollback"): ADM,
    # training: viewers read, admins start and cancel
    ("GET", "/api/v1/training-runs"): V,
    ("GET", "/api/v1/training-runs/readiness"): V,
    ("GET", "/api/v1/training-runs/{run_id}"): V,
    ("POST", "/api/v1/training-runs"): ADM,
    ("DELETE", "/api/v1/training-runs/{run_id}"): ADM,
    # PACS: annotators pull, import and push; viewers read the state of a pull/push
    ("POST", "/api/v1/pacs/segment"): A,
    ("GET", "/api/v1/pacs/pulls/{pull_id}"): V,
    ("POST", "/api/v1/pacs/import-seg"): A,
    ("POST", "/api/v1/pacs/cases/{case_id}/push"): A,
    ("GET", "/api/v1/pacs/pushes/{push_id}"): V,
    ("GET", "/api/v1/pacs/status"): A,
    # tokens and audit: admins only
    ("POST", "/api/v1/tokens"): ADM,
    ("GET", "/api/v1/tokens"): ADM,
    ("DELETE", "/api/v1/tokens/{token_id}"): ADM,
    ("GET", "/api/v1/audit"): ADM,
    # the MONAI Label protocol (3D Slicer): the same roles as the /api/v1 routes it maps onto
    ("GET", "/monailabel/info/"): V,
    ("GET", "/monailabel/auth/token/valid"): V,
    ("PUT", "/monailabel/datastore/"): A,
    ("GET", "/monailabel/datastore/"): V,
    ("GET", "/monailabel/datastore/image"): V,
    ("PUT", "/monailabel/datastore/label"): A,
    ("GET", "/monailabel/datastore/label"): V,
    ("POST", "/monailabel/infer/{model}"): A,  # may queue a segmentation job
    ("POST", "/monailabel/activelearning/{strategy}"): V,
    ("GET", "/monailabel/train/"): V,
    ("POST", "/monailabel/train/{model}"): ADM,
    ("DELETE", "/monailabel/train/"): ADM,
}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/monailabel/auth/")}
# MONAI Label's login: no bearer token; the form's password is the token (tests/e2e/test_monailabel.py)
PUBLIC_FORMS = {("POST", "/monailabel/auth/token")}
GUARDED = ("/api/", "/monailabel/")
RANK = {V: 0, A: 1, ADM: 2}


def _api_routes(app: object) -> list[tuple[str, str]]:
    out = []
    for ctx in iter_route_contexts(app.routes):  # type: ignore[attr-defined]
        path = ctx.path or ""
        if not path.startswith(GUARDED):
            continue
        for method in sorted(ctx.methods or ()):
            if method != "HEAD" and (method, path) not in PUBLIC | PUBLIC_FORMS:
                out.append((method, path))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestClient, dict[str, str], list[tuple[str, str]]]:
    tmp = tmp_path_factory.mktemp("roles")
    s = Settings(data_dir=tmp, secret_key="roles-secret-0123456789")
    run_migrations(s.resolved_database_url)
    tokens = {}
    with session_scope(s.resolved_database_url) as session:
        for role in Role:
            tokens[role.value], _ = create_token(session, s.secret_key, f"roles-{role.value}", role)
    app = create_app(s)
    return TestClient(app), tokens, _api_routes(app)


def test_every_route_is_in_the_table(env: tuple[TestClient, dict[str, str], list[tuple[str, str]]]) -> None:
    _, _, routes = env
    missing = sorted(set(routes) - set(ROLE_TABLE))
    assert not missing, f"routes without an expected role (add them to ROLE_TABLE): {missing}"
    # rows of routers that are not mounted in this build are tolerated (reported as skips below)


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "does-not-exist", path)


def _call(client: TestClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(method, _fill(path), headers=headers).status_code


@pytest.mark.parametrize("route", sorted(ROLE_TABLE), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_role(
    env: tuple[TestClient, dict[str, str], list[tuple[str, str]]], route: tuple[str, str]
) -> None:
    client, tokens, routes = env
    if route not in routes:
        pytest.skip(f"{route} is in ROLE_TABLE but not mounted in this build")
    method, path = route
    needed = ROLE_TABLE[route]
    assert _call(client, method, path, None) == 401, "no token must be refused"
    assert _call(client, method, path, "dsg_not-a-real-token") == 401, "a wrong token must be refused"
    for role, token in tokens.items():
        status = _call(client, method, path, token)
        if RANK[role] < RANK[needed]:
            assert status == 403, f"{role} must be refused ({status})"
        else:
            assert status not in (401, 403), f"{role} must be let through ({status})"
            assert status < 500, f"{role}: server error {status}"


def test_public_routes_need_no_token(env: tuple[TestClient, dict[str, str], list[tuple[str, str]]]) -> None:
    client, tokens, _ = env
    for method, path in PUBLIC:
        assert client.request(method, path).status_code == 200
    assert client.get("/monailabel/auth/").json() == {"enabled": True, "client_id": "dualseg", "realm": None}
    r = client.post("/monailabel/auth/token", data={"username": "u", "password": tokens["viewer"]})
    assert r.status_code == 200 and r.json() == {"access_token": tokens["viewer"], "token_type": "Bearer"}
    r = client.post("/monailabel/auth/token", data={"username": "u", "password": "dsg_wrong"})
    assert r.status_code == 401 and r.json() == {"detail": "invalid token"}
    r = client.get("/monailabel/info/")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]


def test_token_routes_create_list_revoke(
    env: tuple[TestClient, dict[str, str], list[tuple[str, str]]],
) -> None:
    client, tokens, _ = env
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    r = client.post(
        "/api/v1/tokens", json={"name": "scanner-1", "role": "viewer", "expires_days": 1}, headers=admin
    )
    assert r.status_code == 201, r.text
    created = r.json()
    new = {"Authorization": f"Bearer {created['token']}"}
    assert created["token"].startswith(created["prefix"]) and created["role"] == "viewer"
    assert client.get("/api/v1/cases", headers=new).status_code == 200
    listed = client.get("/api/v1/tokens", headers=admin).json()
    row = next(t for t in listed if t["id"] == created["id"])
    assert "token" not in row and row["revoked_at"] is None
    assert all(created["token"] not in str(v) for t in listed for v in t.values())
    assert client.post("/api/v1/tokens", json={"name": "x", "role": "root"}, headers=admin).status_code == 422
    r = client.delete(f"/api/v1/tokens/{created['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = client.get("/api/v1/cases", headers=new)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert client.delete("/api/v1/tokens/nope", headers=admin).status_code == 404
    actions = [
        e["action"]
        for e in client.get("/api/v1/audit", params={"resource_type": "token"}, headers=admin).json()["items"]
    ]
    assert actions[:2] == ["token.revoke", "token.create"]


def test_auth_disabled_lets_everything_through(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, auth_enabled=False)
    run_migrations(s.resolved_database_url)
    client = TestClient(create_app(s))
    assert client.get("/api/v1/tokens").status_code == 200
    assert client.delete("/api/v1/cases/does-not-exist").status_code == 404
