"""Optional OIDC: validate JWT bearer tokens issued by a site's identity provider.

On when ``DUALSEG_OIDC_ISSUER`` is set. A token is accepted when its signature verifies with a key of
the issuer's JSON Web Key Set (a file, or a URL fetched and cached), ``iss`` and ``aud`` match, and
``exp``/``nbf``/``iat`` hold (with a small leeway). The role comes from a configurable claim (a string
or a list, dotted paths such as ``realm_access.roles`` allowed; the highest known role wins), the
actor name from ``preferred_username`` (or ``sub``). Tokens without a known role are refused (403).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import jwt

from backend.config import Settings
from backend.errors import Forbidden, Unauthorized, Unavailable
from backend.security import ROLE_RANK, Principal
from backend.tables import Role


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _role_map(spec: str) -> dict[str, Role]:
    out: dict[str, Role] = {}
    for pair in spec.split(","):
        if "=" in pair:
            key, role = (p.strip() for p in pair.split("=", 1))
            out[key] = Role(role)
    return out


class OidcValidator:
    """Validates JWTs for one issuer/audience; the key set is reloaded after ``oidc_jwks_cache_s``
    (and at once, at most every 10 s, when a token names an unknown key id: key rotation)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_audience
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.jwks_file = settings.oidc_jwks_file
        self.jwks_url = settings.oidc_jwks_url
        self.cache_s = settings.oidc_jwks_cache_s
        self.algorithms = [a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()]
        self.role_claim = settings.oidc_role_claim
        self.role_map = _role_map(settings.oidc_role_map)
        self.name_claim = settings.oidc_name_claim
        self.leeway = settings.oidc_leeway_s
        self._lock = threading.Lock()
        self._keys: jwt.PyJWKSet | None = None
        self._loaded_at = 0.0

    def _load(self) -> jwt.PyJWKSet:
        try:
            if self.jwks_file is not None:
                data = json.loads(self.jwks_file.read_text())
            else:
                import httpx

                assert self.jwks_url
                resp = httpx.get(self.jwks_url, timeout=5.0)
                resp.raise_for_status()
                data = resp.json()
            return jwt.PyJWKSet.from_dict(data)
        except Exception as exc:  # any failure to get keys means "cannot check tokens now"
            raise Unavailable(
                f"the identity provider's key set could not be loaded ({type(exc).__name__})"
            ) from exc

    def _keyset(self, refresh: bool = False) -> jwt.PyJWKSet:
        with self._lock:
            age = time.monotonic() - self._loaded_at
            if self._keys is None or age > self.cache_s or (refresh and age > 10):
                self._keys = self._load()
                self._loaded_at = time.monotonic()
            return self._keys

    def _key_for(self, token: str) -> Any:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token") from exc
        if header.get("alg") not in self.algorithms:
            raise Unauthorized(f"token algorithm {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        for refresh in (False, True):
            keys = self._keyset(refresh=refresh)
            matches = [k for k in keys.keys if kid is None or k.key_id == kid]
            if matches:
                return matches[0].key
        raise Unauthorized("token signed with an unknown key")

    def principal(self, token: str) -> Principal:
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("this token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token ({type(exc).__name__})") from exc
        raw = _claim(claims, self.role_claim)
        values = raw if isinstance(raw, list) else [raw] if raw is not None else []
        roles = [self.role_map.get(str(v)) or (Role(v) if v in Role.__members__ else None) for v in values]
        known = [r for r in roles if r is not None]
        name = str(claims.get(self.name_claim) or claims.get("sub") or "oidc")[:120]
        if not known:
            raise Forbidden(f"the token carries no dualseg role in claim {self.role_claim!r}")
        role = max(known, key=lambda r: ROLE_RANK[r])
        return Principal(name=f"oidc:{name}", role=role)
