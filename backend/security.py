"""Bearer tokens and roles (viewer < annotator < admin). Only an HMAC of each token is stored.

Valid token lookups are cached in-process for ``CACHE_TTL_S`` seconds (at most ``CACHE_MAX`` entries,
keyed by the HMAC), so a client polling a job does not query the token table on every request. Expiry is
checked on every request against the cached ``expires_at``. A revocation takes effect within
``CACHE_TTL_S`` everywhere (another API process, the database edited directly); through this process
(``revoke``) it drops the entry at once and again when it commits. Invalid, revoked and expired tokens are
never cached; ``last_used_at`` is still written at most once a minute per token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from backend.errors import Forbidden, NotFound, Unauthorized
from backend.tables import ApiToken, Role, utcnow

TOKEN_PREFIX = "dsg_"
ROLE_RANK = {Role.viewer: 0, Role.annotator: 1, Role.admin: 2}
CACHE_TTL_S = 5.0
CACHE_MAX = 1024


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name (never a patient identifier) and role."""

    name: str
    role: Role
    token_id: str | None = None

    def allows(self, needed: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[needed]


ANONYMOUS_ADMIN = Principal(name="anonymous (auth disabled)", role=Role.admin)


def hash_token(token: str, secret: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def create_token(
    session: Session, secret: str, name: str, role: Role, expires_in: timedelta | None = None
) -> tuple[str, ApiToken]:
    """A new token; the plain value is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        role=role,
        token_hash=hash_token(token, secret),
        prefix=token[:10],
        expires_at=utcnow() + expires_in if expires_in else None,
    )
    session.add(row)
    session.flush()
    return token, row


# token HMAC -> (monotonic deadline of the entry, the token's expires_at, principal)
_CACHE: dict[str, tuple[float, datetime | None, Principal]] = {}


def _cached(token_hash: str) -> Principal | None:
    entry = _CACHE.get(token_hash)
    if entry is None:
        return None
    deadline, expires, principal = entry
    if time.monotonic() >= deadline:
        _CACHE.pop(token_hash, None)
        return None
    _check_expiry(expires, utcnow())
    return principal


def _check_expiry(expires: datetime | None, now: datetime) -> None:
    if expires is not None and expires <= now:
        raise Unauthorized("this token has expired")


def authenticate(session: Session, secret: str, token: str) -> Principal:
    if not token.startswith(TOKEN_PREFIX):
        raise Unauthorized("invalid token")
    token_hash = hash_token(token, secret)
    principal = _cached(token_hash)
    if principal is not None:
        return principal
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if row is None:
        raise Unauthorized("invalid token")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthorized("this token was revoked")
    expires = row.expires_at
    _check_expiry(expires, now)
    last = row.last_used_at
    if last is None or now - last > timedelta(minutes=1):
        _touch(session, row.id, now)
    principal = Principal(name=row.name, role=row.role, token_id=row.id)
    if len(_CACHE) >= CACHE_MAX:
        _CACHE.clear()
    _CACHE[token_hash] = (time.monotonic() + CACHE_TTL_S, expires, principal)
    return principal


def cached_principal(secret: str, token: str) -> Principal | None:
    """The principal of a dualseg token from the in-process cache, without a database query; None when it
    is not cached (or not a dualseg token). Raises Unauthorized when the cached token has expired."""
    return _cached(hash_token(token, secret)) if token.startswith(TOKEN_PREFIX) else None


def _touch(session: Session, token_id: str, now: datetime) -> None:
    """Record last use (at most once a minute per token) and commit at once: authentication is the
    first thing a request does, so nothing else is in this transaction. Left pending, the write would
    hold SQLite's lock for the whole request and queue every other request behind it; done on a second
    connection, a burst of requests could take the whole pool and wait on itself (both seen under load)."""
    try:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
        session.commit()
    except OperationalError:  # busy: last_used_at is informative only; never fail a request for it
        session.rollback()


def require(principal: Principal, needed: Role) -> Principal:
    if not principal.allows(needed):
        raise Forbidden(f"this needs the {needed.value} role; your token has {principal.role.value}")
    return principal


def revoke(session: Session, token_id: str) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")
    row.revoked_at = row.revoked_at or utcnow()
    token_hash = row.token_hash
    _CACHE.pop(token_hash, None)
    # and again once it is committed: a request between now and then may have cached the row again
    event.listen(session, "after_commit", lambda _s: _CACHE.pop(token_hash, None), once=True)
    return row
