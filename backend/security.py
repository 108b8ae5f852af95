"""Bearer tokens and roles (viewer < annotator < admin). Only an HMAC of each token is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from backend.errors import Forbidden, NotFound, Unauthorized
from backend.tables import ApiToken, Role, utcnow

TOKEN_PREFIX = "dsg_"
ROLE_RANK = {Role.viewer: 0, Role.annotator: 1, Role.admin: 2}


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


def create_token(session: Session, secret: str, name: str, role: Role,
                 expires_in: timedelta | None = None) -> tuple[str, ApiToken]:
    """A new token; the plain value is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_hash=hash_token(token, secret), prefix=token[:10],
                   expires_at=utcnow() + expires_in if expires_in else None)
    session.add(row)
    session.flush()
    return token, row


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def authenticate(session: Session, secret: str, token: str) -> Principal:
    if not token.startswith(TOKEN_PREFIX):
        raise Unauthorized("invalid token")
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token, secret))).first()
    if row is None:
        raise Unauthorized("invalid token")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthorized("this token was revoked")
    expires = _aware(row.expires_at)
    if expires is not None and expires <= now:
        raise Unauthorized("this token has expired")
    last = _aware(row.last_used_at)
    if last is None or now - last > timedelta(minutes=1):
        _touch(session, row.id, now)
    return Principal(name=row.name, role=row.role, token_id=row.id)


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
    return row
