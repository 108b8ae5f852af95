"""Annotated dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend.broker import make_celery
from backend.config import Settings
from backend.db import session_scope
from backend.errors import Unauthorized
from backend.oidc import OidcValidator, looks_like_jwt
from backend.security import ANONYMOUS_ADMIN, Principal, authenticate, cached_principal, require
from backend.storage import ArtifactStore
from backend.tables import Role


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    settings: Settings = request.app.state.settings
    with session_scope(settings.resolved_database_url) as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        store = ArtifactStore(request.app.state.settings.resolved_storage_dir)
        request.app.state.store = store
    return store


def get_celery(request: Request) -> Celery:
    client = getattr(request.app.state, "celery", None)
    if client is None:
        client = make_celery(request.app.state.settings, name="dualseg-api")
        request.app.state.celery = client
    return client


_bearer = HTTPBearer(auto_error=False, description="a token from `dualseg tokens create`")


MISSING_TOKEN = "send 'Authorization: Bearer <token>' (create one with: dualseg tokens create)"


def resolve_principal(
    session: Session, settings: Settings, token: str, oidc: OidcValidator | None
) -> Principal:
    """A dualseg API token (``dsg_…``, checked against the database) or, when OIDC is configured, a JWT
    of the site's identity provider."""
    if oidc is not None and looks_like_jwt(token):
        return oidc.principal(token)
    return authenticate(session, settings.secret_key, token)


async def get_principal(
    request: Request,
    session: Annotated[Session, Depends(get_session, scope="function")],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Async, so that a cached token (backend.security) costs no trip through the thread pool; a lookup
    that needs the database or the identity provider runs in the pool."""
    settings: Settings = request.app.state.settings
    early: Principal | None = getattr(request.state, "principal", None)  # set by backend.middleware
    if not settings.auth_enabled:
        principal = ANONYMOUS_ADMIN
    elif early is not None:
        principal = early
    else:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized(MISSING_TOKEN)
        token = credentials.credentials
        cached = cached_principal(settings.secret_key, token)
        if cached is None:
            oidc = getattr(request.app.state, "oidc", None)
            cached = await run_in_threadpool(resolve_principal, session, settings, token, oidc)
        principal = cached
    request.state.principal = principal
    return principal


def require_role(role: str | Role):  # type: ignore[no-untyped-def]
    """Dependency factory: ``dependencies=[Depends(require_role("annotator"))]``."""
    needed = Role(role)

    async def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        return require(principal, needed)

    dependency.__name__ = f"require_{needed.value}"
    dependency.required_role = needed  # type: ignore[attr-defined] # read by backend.middleware
    return dependency


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": the session commits when the route function returns, *before* the answer is sent.
# With FastAPI's default ("request") it committed after the response: a client could read its own
# DELETE as not done yet, and a failed commit came after a success had already been answered.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
ViewerDep = Annotated[Principal, Depends(require_role(Role.viewer))]
AnnotatorDep = Annotated[Principal, Depends(require_role(Role.annotator))]
AdminDep = Annotated[Principal, Depends(require_role(Role.admin))]

#: Largest page offset a list endpoint accepts: far beyond any real list, well inside a database BIGINT
#: (a larger number is a 422, never an overflow inside the query).
MAX_OFFSET = 10_000_000
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]

