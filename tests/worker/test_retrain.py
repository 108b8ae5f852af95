"""Retraining run logic in-process (SQLite): data split, skip, the promotion gate both ways, resume
after a killed run. The real Celery path is exercised by tests/e2e/test_retraining_loop.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.config import Settings
from backend.db import session_scope
from backend.migrations import run_migrations
from backend.services import cases, corrections, registry, training
from backend.services.uploads import stage_files
from backend.storage import ArtifactStore
from backend.tables import ModelState, RunState, TrainingRun, utcnow
from tests.helpers import blob_volume, make_tiny_package, oblique_affine, write_nifti
from worker.tasks import retrain


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, ArtifactStore]:
    s = Settings(data_dir=tmp_path / "var", retrain_preset="tiny", retrain_iterations=3,
                 retrain_val_percent=50, device="cpu")
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    store = ArtifactStore(s.resolved_storage_dir)
    pkg = make_tiny_package(tmp_path / "pkg", version="tiny-base")
    with session_scope(s.resolved_database_url) as session:
        registry.import_package(session, s, pkg, activate=True)
    return s, store


def _add_case(s: Settings, store: ArtifactStore, tmp: Path, seed: int, correct: bool) -> str:
    image, label = blob_volume((40, 36, 24), seed=seed)
    src = write_nifti(tmp / f"c{seed}.nii.gz", image, oblique_affine())
    folder = store.tmp_dir()
    with open(src, "rb") as f, session_scope(s.resolved_database_url) as session:
        staged = stage_files([(src.name, f)], folder, 10**9, 10)
        case = cases.create_case(session, s, store, staged).case
        if correct:
            lab = write_nifti(tmp / f"l{seed}.nii.gz", label, oblique_affine())
            corrections.create_correction(session, s, store, case, lab, "nifti", author="test")
        return case.id


def _cases_in_both_splits(s: Settings, store: ArtifactStore, tmp: Path) -> list[str]:
    """Two corrected cases (the first goes to training, the second to validation) and one unlabeled."""
    ids = [_add_case(s, store, tmp, seed, correct=True) for seed in (0, 1)]
    ids.append(_add_case(s, store, tmp, 100, correct=False))  # unlabeled
    with session_scope(s.resolved_database_url) as session:
        assert [cases.get_case(session, i).split for i in ids] == ["train", "validation", None]
    return ids


def _new_run(s: Settings) -> str:
    with session_scope(s.resolved_database_url) as session:
        return training.create_run(session, "api", None, {}, None).id


def _run(s: Settings, run_id: str) -> TrainingRun:
    with session_scope(s.resolved_database_url) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def test_old_hash_split_is_stable_and_balanced() -> None:
    """The pre-0003 split (kept for migrating old rows)."""
    ids = [f"{i:032x}" for i in range(2000)]
    share = np.mean([training.in_validation(i, 20) for i in ids])
    assert 0.17 < share < 0.23
    first = [training.in_validation(i, 20) for i in ids[:50]]
    assert first == [training.in_validation(i, 20) for i in ids[:50]]


def test_split_assignment_sequence() -> None:
    targets = [training.validation_target(n, 20) for n in range(1, 14)]
    assert targets == [0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    assert [training.validation_target(n, 50) for n in range(1, 7)] == [0, 1, 2, 2, 3, 3]
    assert training.validation_target(3, 90) == 2  # never every case
    t = v = 0
    sides = []
    for _ in range(20):
        side = training.next_side(t, v, 20)
        sides.append(side)
        t, v = (t, v + 1) if side == "validation" else (t + 1, v)
    assert [i + 1 for i, x in enumerate(sides) if x == "validation"] == [2, 8, 13, 18]
    assert v == 4 and t == 16


def test_corrections_needed() -> None:
    s = Settings(retrain_val_percent=20, retrain_min_labeled=1)
    assert training.corrections_needed(0, 0, s) == 2
    assert training.corrections_needed(1, 0, s) == 1
    assert training.corrections_needed(0, 1, s) == 1  # a migrated row: only a training case is missing
    assert training.corrections_needed(1, 1, s) == 0
    s3 = Settings(retrain_val_percent=20, retrain_min_labeled=3)
    assert training.corrections_needed(1, 1, s3) == 2
    assert training.corrections_needed(0, 0, s3) == 4  # train, validation, train, train


def test_sides_are_stored_and_never_change(env: tuple[Settings, ArtifactStore], tmp_path: Path) -> None:
    s, store = env
    with session_scope(s.resolved_database_url) as session:
        r0 = training.readiness(session, s)
    assert r0["ready"] is False and r0["corrections_needed"] == 2 and "correct 2 more" in r0["reason"]
    ids = [_add_case(s, store, tmp_path, seed, correct=seed < 2) for seed in range(4)]
    with session_scope(s.resolved_database_url) as session:
        r = training.readiness(session, s)
        assert (r["ready"], r["train"], r["validation"], r["unlabeled"]) == (True, 1, 1, 2)
        first = [cases.get_case(session, i).split for i in ids]
    assert first == ["train", "validation", None, None]
    lab = write_nifti(tmp_path / "again.nii.gz", blob_volume((40, 36, 24), seed=9)[1], oblique_affine())
    with session_scope(s.resolved_database_url) as session:  # a second correction of each + two new cases
        for i in ids:
            corrections.create_correction(session, s, store, cases.get_case(session, i), lab, "nifti", "t")
    with session_scope(s.resolved_database_url) as session:
        now = [cases.get_case(session, i).split for i in ids]
        data = training.gather_data(session, s)
    assert now[:2] == first[:2]  # stored sides never change
    assert now[2:] == ["validation", "train"]  # 50 %: the 3rd corrected case validates, the 4th trains
    assert sorted(c for c, _, _ in data.validation) == sorted([ids[1], ids[2]])
    assert data.unlabeled == []


def test_gate_decisions() -> None:
    better = training.gate({"dice": 0.80, "hd95_mm": 5.0}, {"dice": 0.78, "hd95_mm": 6.0}, 0.005, 0.0)
    assert better["promote"] is True
    worse_dice = training.gate({"dice": 0.70, "hd95_mm": 5.0}, {"dice": 0.78, "hd95_mm": 6.0}, 0.005, 0.0)
    assert worse_dice["promote"] is False and "worse" in worse_dice["reasons"][0]
    within_tol = training.gate({"dice": 0.776, "hd95_mm": 6.0}, {"dice": 0.78, "hd95_mm": 6.0}, 0.005, 0.0)
    assert within_tol["promote"] is True
    worse_hd = training.gate({"dice": 0.80, "hd95_mm": 7.5}, {"dice": 0.78, "hd95_mm": 6.0}, 0.005, 1.0)
    assert worse_hd["promote"] is False and "worse" in worse_hd["reasons"][1]
    empty = training.gate({"dice": 0.0, "hd95_mm": float("nan")}, {"dice": 0.0, "hd95_mm": 3.0}, 0.005, 0.0)
    assert empty["promote"] is False


def test_skipped_without_enough_data(env: tuple[Settings, ArtifactStore], tmp_path: Path) -> None:
    s, store = env
    _add_case(s, store, tmp_path, 0, correct=False)
    run_id = _new_run(s)
    assert retrain.run_retrain(s, store, run_id) == "skipped"
    run = _run(s, run_id)
    reason = run.decision["reasons"][0]
    assert run.state == RunState.skipped and "not enough corrections" in reason and "correct 2 more" in reason


@pytest.mark.parametrize("better", [True, False])
def test_gate_promotes_or_rejects(env: tuple[Settings, ArtifactStore], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, better: bool) -> None:
    s, store = env
    _cases_in_both_splits(s, store, tmp_path)
    calls: list[str] = []

    def fake_evaluate(predictor: Any, items: list[Any], store_: Any, num_classes: int) -> dict[str, Any]:
        is_candidate = predictor.card.version != "tiny-base"
        calls.append("candidate" if is_candidate else "active")
        dice = (0.9 if better else 0.5) if is_candidate else 0.7
        return {"dice": dice, "hd95_mm": 4.0, "cases": len(items), "per_case": {}}

    monkeypatch.setattr(retrain, "evaluate", fake_evaluate)
    run_id = _new_run(s)
    assert retrain.run_retrain(s, store, run_id) == "succeeded"
    assert calls == ["candidate", "active"]
    run = _run(s, run_id)
    assert run.state == RunState.succeeded and run.iteration == 3 and run.total_iterations == 3
    assert run.decision["promote"] is better and run.decision["promoted"] is better
    assert run.data_summary["validation"] >= 1 and run.data_summary["labeled"] >= 1
    assert run.data_summary["unlabeled"] == 1
    with session_scope(s.resolved_database_url) as session:
        cand = registry.get_version(session, run.candidate_version)
        active = registry.active_version(session)
        assert active is not None
        assert cand.parent_version == "tiny-base"
        assert cand.card["training"]["run_id"] == run_id
        if better:
            assert active.version == run.candidate_version and cand.state == ModelState.active
        else:
            assert active.version == "tiny-base" and cand.state == ModelState.rejected


def test_killed_run_resumes_from_checkpoint(env: tuple[Settings, ArtifactStore], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s, store = env
    _cases_in_both_splits(s, store, tmp_path)
    monkeypatch.setattr(retrain, "evaluate",
                        lambda p, i, st, k: {"dice": 0.5, "hd95_mm": 1.0, "per_case": {}})
    run_id = _new_run(s)
    original = retrain.DbProgress.on_iteration

    def die_at_4(self: Any, trainer: Any, it: int, losses: dict[str, float]) -> None:
        original(self, trainer, it, losses)
        if it == 4:
            raise SystemExit("worker killed")  # like SIGKILL: nothing after this runs

    s6 = s.model_copy(update={"retrain_iterations": 6})
    monkeypatch.setattr(retrain.DbProgress, "on_iteration", die_at_4)
    with pytest.raises(SystemExit):
        retrain.run_retrain(s6, store, run_id)
    assert _run(s, run_id).state == RunState.running
    monkeypatch.setattr(retrain.DbProgress, "on_iteration", original)
    with session_scope(s.resolved_database_url) as session:  # the lease runs out; the sweeper re-queues
        assert training.sweep_runs(session, now=utcnow() + timedelta(hours=2)) == [run_id]
    assert retrain.run_retrain(s6, store, run_id) == "succeeded"
    run = _run(s, run_id)
    assert run.iteration == 6 and run.attempts == 2
    # tiny.yaml checkpoints every 2 iterations; the kill came before the iteration-4 checkpoint was written
    assert run.losses["resumed_at"] == 2
