"""The audit trail (admin): who did what to which resource, and when."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from backend.api.deps import OffsetQuery, SessionDep, require_role
from backend.services import audit

router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[Depends(require_role("admin"))])


class AuditEventPublic(BaseModel):
    id: int
    at: datetime
    actor: str | None
    action: str
    resource_type: str
    resource_id: str | None
    details: dict[str, Any]
    client: str | None


class AuditPage(BaseModel):
    items: list[AuditEventPublic]
    total: int
    limit: int
    offset: int


@router.get("", response_model=AuditPage, summary="Audit events, newest first, filtered and paginated")
def list_audit(
    session: SessionDep,
    actor: Annotated[str | None, Query(max_length=128, description="token or identity name")] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="e.g. case.upload, or case.* for a family")
    ] = None,
    resource_type: Annotated[
        str | None, Query(max_length=32, description="case, job, model, token …")
    ] = None,
    resource_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: OffsetQuery = 0,
) -> AuditPage:
    rows, total = audit.list_events(
        session,
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    items = [
        AuditEventPublic(
            id=r.id,
            at=r.at,
            actor=r.actor,
            action=r.action,
            resource_type=r.resource_type,
            resource_id=r.resource_id,
            details=r.details or {},
            client=r.client,
        )
        for r in rows
    ]
    return AuditPage(items=items, total=total, limit=limit, offset=offset)
