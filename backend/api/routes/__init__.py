"""One module per resource; ROUTERS is what the app mounts under /api/v1."""

from fastapi import APIRouter

from backend.api.routes import artifacts, cases, jobs

ROUTERS: list[APIRouter] = [cases.router, jobs.router, artifacts.router]
