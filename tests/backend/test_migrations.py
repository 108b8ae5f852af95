"""Migrations go up and down on SQLite and PostgreSQL, and match the ORM tables exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from alembic import command
from backend.migrations import alembic_config
from backend.tables import Base

EXPECTED = {"cases", "jobs", "artifacts", "corrections", "model_versions", "training_runs",
            "api_tokens", "audit_events", "case_identities", "workers"}


def _roundtrip(url: str) -> None:
    cfg = alembic_config(url)
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


def test_0003_keeps_the_side_of_cases_corrected_before_it(tmp_path: Path) -> None:
    """Cases corrected under the old hash split keep that side; uncorrected cases get none."""
    from sqlalchemy import text

    from backend.services.training import in_validation

    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0002")
    engine = create_engine(url)
    ids = [f"{i:032x}" for i in range(12)]
    try:
        with engine.begin() as conn:
            for i in ids:
                conn.execute(text(
                    "INSERT INTO cases (id, created_at, updated_at, source_format, sha256, size_bytes, "
                    "num_files, image_key, shape, spacing, affine, meta) VALUES (:i, '2026-01-01', "
                    "'2026-01-01', 'nifti', 'x', 1, 1, 'k', '[1]', '[1]', '[1]', '{}')"), {"i": i})
            for n, i in enumerate(ids[:10]):
                conn.execute(text(
                    "INSERT INTO corrections (id, case_id, created_at, source_format, key, sha256, stats) "
                    "VALUES (:c, :i, :t, 'nifti', 'k', 'x', '{}')"),
                    {"c": f"c{n}", "i": i, "t": "2026-02-01"})
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            got = dict(conn.execute(text("SELECT id, split FROM cases")).all())
    finally:
        engine.dispose()
    expected = {i: ("validation" if in_validation(i, 20) else "train") for i in ids[:10]}
    assert {i: got[i] for i in ids[:10]} == expected and got[ids[10]] is None and got[ids[11]] is None
    assert "validation" in expected.values() and "train" in expected.values()
