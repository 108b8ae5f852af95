"""Retraining run logic in-process (SQLite): data split, skip, the promotion gate both ways, resume
after a killed run. The real Celery path is exercised by tests/e2e/test_retraining_loop.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.cli import run_migrations
from backend.config import Settings
from backend.db import session_scope
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
    ids: list[str] = []
    seed = 0
    while not ({training.in_validation(i, 50) for i in ids} >= {True, False}):
        ids.append(_add_case(s, store, tmp, seed, correct=True))
        seed += 1
    ids.append(_add_case(s, store, tmp, 100, correct=False))  # unlabeled
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


def test_split_is_stable_and_balanced() -> None:
    ids = [f"{i:032x}" for i in range(2000)]
    share = np.mean([training.in_validation(i, 20) for i in ids])
    assert 0.17 < share < 0.23
    first = [training.in_validation(i, 20) for i in ids[:50]]
    assert first == [training.in_validation(i, 20) for i in ids[:50]]


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
    assert run.state == RunState.skipped and "too little labeled data" in run.decision["reasons"][0]


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
    assert run.data_summary["unlabeled"] >= 1 or not training.in_validation("x", 50)
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
