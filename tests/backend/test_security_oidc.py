"""Optional OIDC: JWTs from a site's identity provider, checked against a JWKS (file or URL), with the
role taken from a configurable claim. Keys are generated here; nothing leaves the machine."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import session_scope
from backend.main import create_app
from backend.migrations import run_migrations
from backend.security import create_token
from backend.tables import Role

ISS, AUD = "https://idp.example.test/realms/radiology", "dualseg-api"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(*keys: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    out = []
    for kid, key in keys:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
        out.append(jwk)
    return {"keys": out}


def _token(key: rsa.RSAPrivateKey, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "u-123",
        "preferred_username": "dr.house",
        "iat": now,
        "exp": now + 300,
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {"good": _key(), "other": _key()}


def _client(tmp_path: Path, **settings: Any) -> TestClient:
    s = Settings(
        data_dir=tmp_path, secret_key="oidc-secret-0123456789", oidc_issuer=ISS, oidc_audience=AUD, **settings
    )
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    return TestClient(create_app(s))


@pytest.fixture
def client(tmp_path: Path, keys: dict[str, rsa.RSAPrivateKey]) -> TestClient:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks(("k1", keys["good"]))))
    return _client(
        tmp_path,
        oidc_jwks_file=jwks,
        oidc_role_claim="realm_access.roles",
        oidc_role_map="radiologists=annotator,pacs-admins=admin",
    )


def _get(client: TestClient, token: str, path: str = "/api/v1/cases") -> Any:
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


def test_valid_tokens_get_their_role(client: TestClient, keys: dict[str, rsa.RSAPrivateKey]) -> None:
    viewer = _token(keys["good"], realm_access={"roles": ["offline_access", "viewer"]})
    assert _get(client, viewer).status_code == 200
    assert _get(client, viewer, "/api/v1/tokens").status_code == 403
    r = client.post(
        "/api/v1/cases", headers={"Authorization": f"Bearer {viewer}"}, files=[("files", ("a.nii.gz", b"x"))]
    )
    assert r.status_code == 403  # refused by the early guard, before the body is parsed
    annotator = _token(keys["good"], realm_access={"roles": ["radiologists"]})
    r = client.post(
        "/api/v1/cases",
        headers={"Authorization": f"Bearer {annotator}"},
        files=[("files", ("a.nii.gz", b"not a nifti"))],
        data={"segment": "false"},
    )
    assert r.status_code == 422  # let through: the file itself is what is wrong
    admin = _token(keys["good"], realm_access={"roles": ["radiologists", "pacs-admins"]})
    assert _get(client, admin, "/api/v1/tokens").status_code == 200  # the highest role wins
    r = client.post(
        "/api/v1/tokens",
        json={"name": "from-oidc", "role": "viewer"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 201
    events = _get(client, admin, "/api/v1/audit").json()["items"]
    assert events[0]["actor"] == "oidc:dr.house"


@pytest.mark.parametrize(
    "case",
    [
        "wrong_audience",
        "wrong_issuer",
        "expired",
        "other_key",
        "unknown_kid",
        "no_exp",
        "hs256",
        "garbage",
        "none_alg",
    ],
)
def test_bad_tokens_are_401(client: TestClient, keys: dict[str, rsa.RSAPrivateKey], case: str) -> None:
    roles = {"realm_access": {"roles": ["admin"]}}
    token = {
        "wrong_audience": lambda: _token(keys["good"], aud="another-app", **roles),
        "wrong_issuer": lambda: _token(keys["good"], iss="https://evil.example", **roles),
        "expired": lambda: _token(keys["good"], exp=int(time.time()) - 3600, **roles),
        "other_key": lambda: _token(keys["other"], **roles),
        "unknown_kid": lambda: _token(keys["good"], kid="k9", **roles),
        "no_exp": lambda: _token(keys["good"], exp=None, **roles),
        "hs256": lambda: jwt.encode(
            {"iss": ISS, "aud": AUD, "exp": int(time.time()) + 60, **roles},
            "secret",
            algorithm="HS256",
            headers={"kid": "k1"},
        ),
        "garbage": lambda: "eyJhbGciOiJSUzI1NiJ9.eyJmb28iOjF9.c2ln",
        "none_alg": lambda: jwt.encode(
            {"iss": ISS, "aud": AUD, "exp": int(time.time()) + 60, **roles}, None, algorithm="none"
        ),
    }[case]()
    r = _get(client, token)
    assert r.status_code == 401, (case, r.text)
    assert (
        client.post(
            "/api/v1/tokens", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 401
    )


def test_token_without_a_role_is_403(client: TestClient, keys: dict[str, rsa.RSAPrivateKey]) -> None:
    r = _get(client, _token(keys["good"], realm_access={"roles": ["offline_access"]}))
    assert r.status_code == 403 and "role" in r.json()["error"]["message"]


def test_dualseg_tokens_keep_working_next_to_oidc(client: TestClient) -> None:
    s: Settings = client.app.state.settings  # type: ignore[attr-defined]
    with session_scope(s.resolved_database_url) as session:
        token, _ = create_token(session, s.secret_key, "script", Role.viewer)
    assert _get(client, token).status_code == 200


class _JwksHandler(BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_server(keys: dict[str, rsa.RSAPrivateKey]) -> Iterator[str]:
    _JwksHandler.body = json.dumps(_jwks(("k1", keys["good"]))).encode()
    _JwksHandler.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    server.shutdown()


def test_jwks_from_url_cached_and_rotated(
    tmp_path: Path, keys: dict[str, rsa.RSAPrivateKey], jwks_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(tmp_path, oidc_jwks_url=jwks_server)  # default claim: dualseg_role
    good = _token(keys["good"], dualseg_role="viewer")
    for _ in range(3):
        assert _get(client, good).status_code == 200
    assert _JwksHandler.hits == 1  # cached
    # key rotation: a token with a new kid makes the validator fetch the set again
    _JwksHandler.body = json.dumps(_jwks(("k1", keys["good"]), ("k2", keys["other"]))).encode()
    validator = client.app.state.oidc  # type: ignore[attr-defined]
    monkeypatch.setattr(validator, "_loaded_at", validator._loaded_at - 11)
    assert _get(client, _token(keys["other"], kid="k2", dualseg_role="annotator")).status_code == 200
    assert _JwksHandler.hits == 2


def test_unreachable_jwks_is_503_not_500(tmp_path: Path, keys: dict[str, rsa.RSAPrivateKey]) -> None:
    from tests.helpers import free_port

    client = _client(tmp_path, oidc_jwks_url=f"http://127.0.0.1:{free_port()}/certs")
    r = _get(client, _token(keys["good"], dualseg_role="viewer"))
    assert r.status_code == 503 and r.json()["error"]["message"]


def test_settings_refuse_half_configured_oidc(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OIDC"):
        Settings(data_dir=tmp_path, oidc_issuer=ISS)
