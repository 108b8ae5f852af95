"""Model registry: versions, cards and metrics, correction statistics, promote and roll back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from backend.api.deps import SessionDep, require_role
from backend.schemas.models import ModelVersionPublic
from backend.services import audit, corrections, registry
from backend.tables import ModelVersion

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_role("viewer"))])
ADMIN = [Depends(require_role("admin"))]


def model_public(m: ModelVersion, card: bool = False) -> ModelVersionPublic:
    return ModelVersionPublic(version=m.version, state=m.state.value, name=m.card.get("name"),
                              parent_version=m.parent_version, created_at=m.created_at,
                              promoted_at=m.promoted_at, content_hash=m.content_hash,
                              metrics=m.metrics or {}, card=m.card if card else None)


@router.get("", response_model=list[ModelVersionPublic], summary="Every registered version, newest first")
def list_models(session: SessionDep) -> list[ModelVersionPublic]:
    return [model_public(m) for m in registry.list_versions(session)]


@router.post("/rollback", response_model=ModelVersionPublic, dependencies=ADMIN,
             summary="Re-activate the previously active version")
def rollback(request: Request, session: SessionDep) -> ModelVersionPublic:
    active, _ = registry.rollback(session)
    audit.record_request(session, request, "model.rollback", "model", active.version)
    return model_public(active)


@router.get("/{version}", response_model=ModelVersionPublic, summary="One version with its model card")
def get_model(version: str, session: SessionDep) -> ModelVersionPublic:
    return model_public(registry.get_version(session, version), card=True)


@router.get("/{version}/stats",
            summary="Correction statistics of a version (does the heatmap point at errors?)")
def model_stats(version: str, session: SessionDep) -> dict[str, Any]:
    registry.get_version(session, version)
    return corrections.model_stats(session, version)


@router.post("/{version}/promote", response_model=ModelVersionPublic, dependencies=ADMIN,
             summary="Make this version the active one (the current one is retired)")
def promote(version: str, request: Request, session: SessionDep) -> ModelVersionPublic:
    promoted = registry.promote(session, version)
    audit.record_request(session, request, "model.promote", "model", promoted.version)
    return model_public(promoted)
