"""One module per resource; ROUTERS is what the app mounts under /api/v1."""

from fastapi import APIRouter

ROUTERS: list[APIRouter] = []
