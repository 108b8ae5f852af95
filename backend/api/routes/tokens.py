"""API tokens over HTTP (admin): create (the value is shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from backend.api.deps import SessionDep, SettingsDep, require_role
from backend.security import create_token, revoke
from backend.services import audit
from backend.tables import ApiToken, Role

router = APIRouter(prefix="/tokens", tags=["tokens"], dependencies=[Depends(require_role("admin"))])


class TokenCreate(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[\w .@:+\-]+$",
        description="who or what uses it (a person's login or a system; no patient data)",
    )
    role: Literal["viewer", "annotator", "admin"] = "annotator"
    expires_days: float | None = Field(None, gt=0, le=3650, description="lifetime in days; default never")


class TokenPublic(BaseModel):
    id: str
    name: str
    role: str
    prefix: str = Field(description="the first characters of the token, to recognise it")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the bearer token: shown only in this answer, store it now")


def _public(row: ApiToken) -> TokenPublic:
    return TokenPublic(
        id=row.id,
        name=row.name,
        role=row.role.value,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    summary="Create a token; its value is returned once and only its hash is stored",
)
def create(body: TokenCreate, request: Request, session: SessionDep, settings: SettingsDep) -> TokenCreated:
    token, row = create_token(
        session,
        settings.secret_key,
        body.name,
        Role(body.role),
        timedelta(days=body.expires_days) if body.expires_days else None,
    )
    audit.record_request(session, request, "token.create", "token", row.id, role=body.role)
    return TokenCreated(**_public(row).model_dump(), token=token)


@router.get("", response_model=list[TokenPublic], summary="Every token (never its value), oldest first")
def list_tokens(session: SessionDep) -> list[TokenPublic]:
    return [_public(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.created_at))]


@router.delete("/{token_id}", response_model=TokenPublic, summary="Revoke a token (it stops working at once)")
def revoke_token(token_id: str, request: Request, session: SessionDep) -> TokenPublic:
    row = revoke(session, token_id)
    session.flush()
    audit.record_request(session, request, "token.revoke", "token", row.id)
    return _public(row)
