"""Database migrations: the alembic configuration of this checkout and ``alembic upgrade``.

Used by ``dualseg migrate`` / ``serve``, by every CLI command that opens the database, and by the tests.
alembic is imported inside the functions (it takes about half a second), so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backend.config import get_settings

if TYPE_CHECKING:
    from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None) -> Config:
    """The alembic ``Config`` of this checkout, pointed at ``url`` (default: the configured database)."""
    from alembic.config import Config

    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().resolved_database_url).replace("%", "%%"))
    return cfg


def run_migrations(url: str | None = None, revision: str = "head") -> None:
    """`alembic upgrade <revision>` against the configured (or given) database."""
    from alembic import command

    get_settings().ensure_dirs()
    command.upgrade(alembic_config(url), revision)
