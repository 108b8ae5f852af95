"""Training runs (torch-free part): create / list / cancel, the fixed validation split, the data a run
uses, the promotion gate, and the triggers (schedule, N new corrections). One run at a time."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import Conflict, NotFound
from backend.services.jobs import _aware
from backend.tables import Case, Correction, RunState, TrainingRun, utcnow

ACTIVE_STATES = (RunState.queued, RunState.running)


def in_validation(case_id: str, percent: int) -> bool:
    """Stable split: a case's side never changes, whatever other cases come and go."""
    return int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) % 100 < percent


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
    latest: dict[str, Correction] = {
        c.case_id: c for c in session.scalars(select(Correction).order_by(Correction.created_at))}
    data = RunData()
    for case in session.scalars(select(Case).order_by(Case.created_at)):
        val = in_validation(case.id, settings.retrain_val_percent)
        corr = latest.get(case.id)
        if corr is not None:
            (data.validation if val else data.train_labeled).append((case.id, case.image_key, corr.key))
        elif not val:
            data.unlabeled.append((case.id, case.image_key))
    return data


def skip_reason(data: RunData, settings: Settings, seed_labeled: int = 0) -> str | None:
    if len(data.train_labeled) + seed_labeled < settings.retrain_min_labeled:
        return (f"too little labeled data: {len(data.train_labeled)} corrected case(s) in the training split "
                f"(+{seed_labeled} seed), {settings.retrain_min_labeled} needed")
    if not data.validation:
        return ("no corrected case falls in the validation split yet "
                f"({settings.retrain_val_percent}% of cases, fixed by case id); correct more cases")
    return None


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
    started = _aware(run.started_at)
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
    lease = _aware(run.lease_expires_at)
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
        lease = _aware(run.lease_expires_at)
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
