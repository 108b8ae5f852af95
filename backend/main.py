"""FastAPI app factory: routers, exception handlers (domain error -> 4xx), middleware.

This module and everything it imports stay free of torch, ``models`` and ``worker``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from backend import __version__
from backend.api.routes import health
from backend.config import Settings, get_settings
from backend.errors import DomainError

log = logging.getLogger("dualseg.api")


def _error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = FastAPI(
        title="dualseg",
        version=__version__,
        description=(
            "Annotation-assist server for 3D medical image segmentation: upload a CT/MR volume, get a "
            "mask, a voxelwise uncertainty (entropy) map and a ranked list of uncertain regions."
        ),
    )
    app.state.settings = settings

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()
        ]
        return _error(422, "invalid_request", "the request is not valid", details)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return _error(503, "database_unavailable", "the database is not reachable; try again shortly")

    app.include_router(health.router)
    from backend.api import register_routes

    register_routes(app)
    return app
