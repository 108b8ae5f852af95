"""Migrations go up and down on SQLite and PostgreSQL, and match the ORM tables exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from alembic import command
from backend.cli import _alembic_config
from backend.tables import Base

EXPECTED = {"cases", "jobs", "artifacts", "corrections", "model_versions", "training_runs",
            "api_tokens", "audit_events", "case_identities", "workers"}


def _roundtrip(url: str) -> None:
    cfg = _alembic_config(url)
    command.upgrade(cfg, "head")
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert EXPECTED <= tables
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
        assert diffs == [], f"ORM tables and migrations differ: {diffs}"
        command.downgrade(cfg, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        assert EXPECTED <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_up_down(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_postgres_up_down(postgres_url: str) -> None:
    _roundtrip(postgres_url)
