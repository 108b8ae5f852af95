"""Training runs (torch-free part): create / list / cancel, the fixed validation split, the data a run
uses, the promotion gate, and the triggers (schedule, N new corrections). One run at a time."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import Conflict, NotFound
from backend.tables import Case, Correction, RunState, TrainingRun, utcnow

ACTIVE_STATES = (RunState.queued, RunState.running)
SPLIT_LOCK_KEY = 0x64736700  # "dsg\0": the advisory lock of the split assignment


def in_validation(case_id: str, percent: int) -> bool:
    """The hash split used before revision 0003 (kept for the migration of old rows and for tests)."""
    return int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) % 100 < percent


def validation_target(n_assigned: int, percent: int) -> int:
    """How many of ``n_assigned`` corrected cases belong in validation.

    ``percent`` of them rounded half up, but at least 1 from the second case on (so that 1 train +
    1 validation is enough for a first run) and never all of them: 1 → 0, 2 → 1, and with 20 %:
    3–7 → 1, 8–12 → 2, 13–17 → 3 …
    """
    if n_assigned < 2:
        return 0
    return min(n_assigned - 1, max(1, math.floor(n_assigned * percent / 100 + 0.5)))


def next_side(n_train: int, n_validation: int, percent: int) -> str:
    """The side of the next corrected case, given the sides already stored."""
    n = n_train + n_validation + 1
    return "validation" if n_validation < validation_target(n, percent) else "train"


def _assign_next(n_train: int, n_validation: int, percent: int) -> tuple[int, int]:
    """The counts after one more corrected case is assigned by ``next_side``."""
    if next_side(n_train, n_validation, percent) == "validation":
        return n_train, n_validation + 1
    return n_train + 1, n_validation


def split_counts(session: Session) -> tuple[int, int]:
    rows = dict(session.execute(select(Case.split, func.count()).where(Case.split.is_not(None))
                                .group_by(Case.split)).all())
    return int(rows.get("train", 0)), int(rows.get("validation", 0))


def assign_split(session: Session, settings: Settings, case: Case) -> str:
    """Decide a case's side at its first correction and store it; a stored side never changes.

    Runs in the correction's transaction. On PostgreSQL a transaction-scoped advisory lock serialises
    concurrent first corrections (two of them would otherwise read the same counts); SQLite serialises
    writers by itself.
    """
    if case.split is not None:
        return case.split
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SPLIT_LOCK_KEY})
        session.refresh(case)
        if case.split is not None:
            return case.split
    n_train, n_val = split_counts(session)
    case.split = next_side(n_train, n_val, settings.retrain_val_percent)
    case.split_at = utcnow()
    return case.split


@dataclass
class RunData:
    """Storage keys of the images/labels a run uses (the newest correction of each corrected case)."""

    train_labeled: list[tuple[str, str, str]] = field(default_factory=list)  # (case_id, image_key, label_key)
    validation: list[tuple[str, str, str]] = field(default_factory=list)
    unlabeled: list[tuple[str, str]] = field(default_factory=list)  # (case_id, image_key)

    def summary(self) -> dict[str, Any]:
        return {"labeled": len(self.train_labeled), "validation": len(self.validation),
                "unlabeled": len(self.unlabeled),
                "validation_cases": sorted(c for c, _, _ in self.validation)}


def gather_data(session: Session, settings: Settings) -> RunData:
    """Corrected cases by their stored side; every uncorrected case is unlabeled data.

    A corrected case without a stored side (written by a path that bypassed ``assign_split``) is
    assigned here, once, so no case is ever left out.
    """
    latest: dict[str, Correction] = {
        c.case_id: c for c in session.scalars(select(Correction).order_by(Correction.created_at))}
    data = RunData()
    for case in session.scalars(select(Case).order_by(Case.created_at)):
        corr = latest.get(case.id)
        if corr is None:
            data.unlabeled.append((case.id, case.image_key))
            continue
        side = case.split or assign_split(session, settings, case)
        (data.validation if side == "validation" else data.train_labeled).append(
            (case.id, case.image_key, corr.key))
    return data


def corrections_needed(n_train: int, n_validation: int, settings: Settings, seed_labeled: int = 0) -> int:
    """How many more corrected cases (assigned by ``next_side``) until a run can start."""
    need = 0
    while n_train + seed_labeled < settings.retrain_min_labeled or n_validation < 1:
        n_train, n_validation = _assign_next(n_train, n_validation, settings.retrain_val_percent)
        need += 1
    return need


def skip_reason(data: RunData, settings: Settings, seed_labeled: int = 0) -> str | None:
    return _missing(len(data.train_labeled), len(data.validation), settings, seed_labeled)


def _missing(n_train: int, n_val: int, settings: Settings, seed_labeled: int) -> str | None:
    need = corrections_needed(n_train, n_val, settings, seed_labeled)
    if need == 0:
        return None
    missing = []
    if n_train + seed_labeled < settings.retrain_min_labeled:
        missing.append(f"{n_train} corrected case(s) in the training split (+{seed_labeled} seed), "
                       f"{settings.retrain_min_labeled} needed")
    if n_val < 1:
        missing.append("no corrected case in the validation split yet")
    return (f"not enough corrections yet: {'; '.join(missing)}; correct {need} more case(s) "
            f"({settings.retrain_val_percent}% of corrected cases go to validation, the second one always)")


def readiness(session: Session, settings: Settings, seed_labeled: int = 0) -> dict[str, Any]:
    """Whether a run can start now and, if not, how many more corrections it needs (read-only)."""
    n_train, n_val = split_counts(session)
    pending = session.scalars(select(Case.id).where(
        Case.split.is_(None), Case.id.in_(select(Correction.case_id)))).all()
    for _ in pending:  # corrected before a side was stored: counted as they will be assigned
        n_train, n_val = _assign_next(n_train, n_val, settings.retrain_val_percent)
    corrected = n_train + n_val
    unlabeled = int(session.scalar(select(func.count()).select_from(Case)) or 0) - corrected
    need = corrections_needed(n_train, n_val, settings, seed_labeled)
    reason = _missing(n_train, n_val, settings, seed_labeled)
    return {"ready": need == 0, "corrections_needed": need, "reason": reason,
            "train": n_train, "validation": n_val, "unlabeled": unlabeled, "seed_labeled": seed_labeled,
            "min_labeled": settings.retrain_min_labeled, "validation_percent": settings.retrain_val_percent,
            "next_side": next_side(n_train, n_val, settings.retrain_val_percent)}


def gate(candidate: dict[str, float], active: dict[str, float] | None, dice_tol: float,
         hd95_tol_mm: float) -> dict[str, Any]:
    """Promote only if the candidate's Dice ≥ active − tol and its HD95 ≤ active + tol (mm)."""
    reasons: list[str] = []
    if active is None:
        return {"promote": True, "reasons": ["no active model to compare with"], "candidate": candidate,
                "active": None}
    cd, ad = candidate["dice"], active["dice"]
    ok_dice = cd >= ad - dice_tol
    reasons.append(f"Dice {cd:.4f} vs active {ad:.4f} (tolerance {dice_tol}): {'ok' if ok_dice else 'worse'}")
    ch, ah = candidate["hd95_mm"], active["hd95_mm"]
    if math.isnan(ch) and not math.isnan(ah):
        ok_hd = False
        reasons.append("HD95 undefined for the candidate (empty prediction) but defined for the active model")
    elif math.isnan(ah) or math.isnan(ch):
        ok_hd = True
        reasons.append("HD95 undefined for the active model; not compared")
    else:
        ok_hd = ch <= ah + hd95_tol_mm
        reasons.append(f"HD95 {ch:.2f} mm vs active {ah:.2f} mm (tolerance {hd95_tol_mm} mm): "
                       f"{'ok' if ok_hd else 'worse'}")
    return {"promote": ok_dice and ok_hd, "reasons": reasons, "candidate": candidate, "active": active}


def create_run(session: Session, trigger: str, preset: str | None, overrides: dict[str, Any],
               iterations: int | None) -> TrainingRun:
    busy = session.scalars(select(TrainingRun).where(TrainingRun.state.in_(ACTIVE_STATES))).first()
    if busy is not None:
        raise Conflict(f"training run {busy.id} is already {busy.state.value}; one run at a time",
                       details={"run_id": busy.id})
    merged = dict(overrides)
    if iterations is not None:
        merged["iterations"] = iterations
    run = TrainingRun(trigger=trigger, preset=preset, overrides=merged, state=RunState.queued)
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: str) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"training run {run_id} does not exist")
    return run


def list_runs(session: Session, limit: int = 50) -> list[TrainingRun]:
    return list(session.scalars(select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)))


def cancel_run(session: Session, run_id: str) -> TrainingRun:
    run = get_run(session, run_id)
    if run.state not in ACTIVE_STATES:
        raise Conflict(f"training run {run_id} is already {run.state.value}")
    run.cancel_requested = True
    if run.state == RunState.queued:
        run.state, run.finished_at, run.error = RunState.cancelled, utcnow(), "cancelled before it started"
    return run


def eta_seconds(run: TrainingRun, now: datetime | None = None) -> float | None:
    started = run.started_at
    if run.state != RunState.running or started is None or not run.total_iterations or run.iteration <= 0:
        return None
    done_it = run.iteration - int((run.losses or {}).get("resumed_at", 0))
    elapsed = ((now or utcnow()) - started).total_seconds()
    if done_it <= 0:
        return None
    return max(0.0, elapsed / done_it * (run.total_iterations - run.iteration))


def claim_run(session: Session, run_id: str, lease_s: int,
              worker_id: str | None = None) -> TrainingRun | None:
    """Mark the run running (or resumed after a crash); None if there is nothing to do."""
    run = session.get(TrainingRun, run_id, with_for_update=True)
    if run is None or run.state not in ACTIVE_STATES:
        return None
    if run.cancel_requested:
        run.state, run.finished_at, run.error = RunState.cancelled, utcnow(), "cancelled"
        return None
    lease = run.lease_expires_at
    if run.state == RunState.running and lease is not None and lease > utcnow():
        return None
    other = session.scalars(select(TrainingRun).where(TrainingRun.state == RunState.running,
                                                      TrainingRun.id != run.id)).first()
    if other is not None:
        return None
    run.state = RunState.running
    run.attempts += 1
    run.started_at = run.started_at or utcnow()
    run.lease_expires_at = utcnow() + timedelta(seconds=lease_s)
    run.worker_id = worker_id
    return run


def sweep_runs(session: Session, now: datetime | None = None) -> list[str]:
    """Running runs whose worker went silent: back to queued (they resume from their checkpoint)."""
    now = now or utcnow()
    out = []
    for run in session.scalars(select(TrainingRun).where(TrainingRun.state == RunState.running)):
        lease = run.lease_expires_at
        if lease is None or lease < now:
            run.state = RunState.queued
            run.lease_expires_at, run.worker_id = None, None
            out.append(run.id)
    return out


def corrections_since_last_run(session: Session) -> int:
    last = session.scalar(select(func.max(TrainingRun.created_at)))
    query = select(func.count()).select_from(Correction)
    if last is not None:
        query = query.where(Correction.created_at > last)
    return int(session.scalar(query) or 0)
