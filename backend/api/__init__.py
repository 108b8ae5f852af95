"""HTTP layer: dependencies and one router per resource."""

from __future__ import annotations

from fastapi import FastAPI


def register_routes(app: FastAPI) -> None:
    """Attach every /api/v1 router, and the MONAI Label protocol under /monailabel."""
    from backend.api.routes import ROUTERS, monailabel

    for router in ROUTERS:
        app.include_router(router, prefix="/api/v1")
    app.include_router(monailabel.router)
