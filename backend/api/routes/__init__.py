"""One module per resource; ROUTERS is what the app mounts under /api/v1."""

from fastapi import APIRouter

from backend.api.routes import artifacts, audit, cases, corrections, jobs, models, pacs, tokens, training

ROUTERS: list[APIRouter] = [
    cases.router, jobs.router, artifacts.router, corrections.router, models.router, training.router,
    pacs.router, tokens.router, audit.router,
]
