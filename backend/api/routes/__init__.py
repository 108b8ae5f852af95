"""One module per resource; ROUTERS is what the app mounts under /api/v1."""

from fastapi import APIRouter

from backend.api.routes import artifacts, cases, corrections, jobs, models

ROUTERS: list[APIRouter] = [cases.router, jobs.router, artifacts.router, corrections.router, models.router]
