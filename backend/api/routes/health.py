"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backend import db
from backend.broker import ping_broker
from backend.config import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up (no I/O)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database and broker reachable (503 otherwise)")
def readyz(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    checks: dict[str, Any] = {}
    ok = True
    for name, fn in (
        ("database", lambda: db.ping(settings.resolved_database_url)),
        ("broker", lambda: ping_broker(settings)),
    ):
        try:
            fn()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            ok = False
            checks[name] = f"unavailable: {type(exc).__name__}"
    return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503)
