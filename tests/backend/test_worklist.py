"""The worklist's "most uncertain first": out-of-distribution cases lead, whatever their entropy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from backend.config import Settings
from backend.db import session_scope
from backend.migrations import run_migrations
from backend.services import cases
from backend.tables import Case, utcnow


def test_flagged_cases_sort_first(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var")
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    t0 = utcnow()
    rows = {  # id: (uncertainty score, out_of_distribution)
        "a" * 32: (0.33, False), "b" * 32: (0.12, True), "c" * 32: (0.32, None), "d" * 32: (0.11, True),
        "e" * 32: (None, None),
    }
    with session_scope(s.resolved_database_url) as session:
        for n, (cid, (score, ood)) in enumerate(rows.items()):
            session.add(Case(id=cid, created_at=t0 + timedelta(seconds=n), source_format="nifti", sha256="x",
                             image_key="k", shape=[1], spacing=[1], affine=[1], uncertainty_score=score,
                             out_of_distribution=ood, ood_score=0.7 if ood else 0.2))
    with session_scope(s.resolved_database_url) as session:
        listed, total = cases.list_cases(session, sort="uncertainty")
        order = [c.id[0] for c, _ in listed]
        newest, _ = cases.list_cases(session, sort="created")
    assert total == 5
    assert order == ["b", "d", "a", "c", "e"]  # flagged (by score), then the rest by score, no result last
    assert [c.id[0] for c, _ in newest] == ["e", "d", "c", "b", "a"]
