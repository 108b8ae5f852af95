"""HTTP layer: dependencies and one router per resource."""

from __future__ import annotations

from fastapi import FastAPI


def register_routes(app: FastAPI) -> None:
    """Attach every /api/v1 router."""
    from backend.api.routes import ROUTERS

    for router in ROUTERS:
        app.include_router(router, prefix="/api/v1")
