"""Audit trail: who uploaded, downloaded, corrected, promoted, deleted what, and when.

Events are added to the caller's session, so they commit (or roll back) together with the action
they describe. They name people by their token or identity-provider name and resources by dualseg
IDs only: never a patient name, patient ID, file name or free text from an upload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.tables import AuditEvent

ALLOWED_DETAIL_TYPES = (str, int, float, bool, type(None))


def _clean(details: dict[str, Any]) -> dict[str, Any]:
    """Keep only scalar values (IDs, counts, kinds): nothing nested that could smuggle metadata in."""
    return {k: v for k, v in details.items() if isinstance(v, ALLOWED_DETAIL_TYPES)}


def record(
    session: Session,
    action: str,
    resource_type: str,
    resource_id: str | None,
    *,
    actor: str | None,
    client: str | None = None,
    **details: Any,
) -> AuditEvent:
    event = AuditEvent(
        actor=(actor or "unknown")[:128],
        action=action[:64],
        resource_type=resource_type[:32],
        resource_id=resource_id[:64] if resource_id else None,
        details=_clean(details),
        client=client[:64] if client else None,
    )
    session.add(event)
    return event


def record_request(
    session: Session,
    request: Request,
    action: str,
    resource_type: str,
    resource_id: str | None,
    **details: Any,
) -> AuditEvent:
    """An event for the current request's caller (set by the auth dependency)."""
    principal = getattr(request.state, "principal", None)
    client = request.client.host if request.client else None
    return record(
        session,
        action,
        resource_type,
        resource_id,
        actor=principal.name if principal is not None else None,
        client=client,
        **details,
    )


def list_events(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """Newest first, filtered; ``action`` may end with ``.*`` to match a family (``case.*``)."""
    query = select(AuditEvent)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(
            AuditEvent.action.startswith(action[:-1], autoescape=True)
            if action.endswith(".*")
            else AuditEvent.action == action
        )
    if resource_type:
        query = query.where(AuditEvent.resource_type == resource_type)
    if resource_id:
        query = query.where(AuditEvent.resource_id == resource_id)
    if since:
        query = query.where(AuditEvent.at >= since)
    if until:
        query = query.where(AuditEvent.at < until)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(
        query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit).offset(offset)
    )
    return list(rows), total
