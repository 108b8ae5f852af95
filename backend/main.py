"""FastAPI app factory: routers, exception handlers (domain error -> 4xx), middleware.

This module and everything it imports stay free of torch, ``models`` and ``worker``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend import __version__
from backend.api.routes import health
from backend.config import Settings, get_settings
from backend.errors import DomainError
from backend.middleware import (
    MONAILABEL_PREFIX,
    EarlyGuardMiddleware,
    RequestContextMiddleware,
    install_log_context,
)

log = logging.getLogger("dualseg.api")

UI_DIR = Path(__file__).resolve().parent / "ui"
NIIVUE_DIST = UI_DIR / "node_modules" / "@niivue" / "niivue" / "dist"


def _error(status: int, code: str, message: str, details: Any = None, path: str = "") -> JSONResponse:
    """dualseg's error body; under /monailabel MONAI Label's own (FastAPI's ``{"detail": …}``)."""
    if path.startswith(MONAILABEL_PREFIX):
        return JSONResponse({"detail": details if code == "invalid_request" else message}, status_code=status)
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
    app.state.oidc = None
    if settings.oidc_issuer:
        from backend.oidc import OidcValidator

        app.state.oidc = OidcValidator(settings)
    install_log_context(settings.log_level)
    # Outermost last: request ID + security headers wrap CORS, which wraps the early auth/size guard.
    app.add_middleware(EarlyGuardMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "If-None-Match"],
            expose_headers=["X-Request-ID", "ETag", "Content-Disposition", "Location"], max_age=600,
        )
    app.add_middleware(RequestContextMiddleware)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.details, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()
        ]
        return _error(422, "invalid_request", "the request is not valid", details, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        resp = _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                      path=request.url.path)
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(PoolTimeout)
    async def _db_busy(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free in time (%s)", type(exc).__name__)
        resp = _error(503, "busy", "the server is busy; retry shortly")
        resp.headers["Retry-After"] = "2"
        return resp

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return _error(503, "database_unavailable", "the database is not reachable; try again shortly")

    app.include_router(health.router)
    from backend.api import register_routes

    register_routes(app)
    mount_ui(app)
    return app


def mount_ui(app: FastAPI) -> None:
    """The review page: static files at /ui/ (no auth: every API call it makes sends the token) and
    the NiiVue bundle from npm (``make ui``) at /ui/vendor/niivue/. ``/`` redirects to the page."""

    @app.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    # the vendor mount comes first: Starlette matches mounts in order
    app.mount("/ui/vendor/niivue", StaticFiles(directory=NIIVUE_DIST, check_dir=False), name="ui-niivue")
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True, check_dir=False), name="ui")
