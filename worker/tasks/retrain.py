"""Celery task `dualseg.retrain(run_id)` on queue `training`: fine-tune the active model with the
dual-network trainer on corrected (labeled) and other (unlabeled) cases, evaluate candidate and active
model on the same fixed validation cases, register the candidate and promote it only if it passes the gate.
A run killed mid-way is re-sent by the sweeper and resumes from its checkpoint."""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from backend.config import Settings
from backend.db import session_scope
from backend.imaging.nifti import load_image
from backend.services import registry, training
from backend.storage import ArtifactStore
from backend.tables import ModelState, RunState, TrainingRun, utcnow
from worker.liveness import current_worker_id

log = logging.getLogger("dualseg.worker.retrain")


def _load(store: ArtifactStore, key: str) -> tuple[np.ndarray, np.ndarray]:
    img = load_image(store.path(key))
    return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=float)


class DbProgress:
    """Trainer hook: iteration, per-term losses and lease renewal in the run's row; cancel check."""

    def __init__(self, settings: Settings, run_id: str, start_iteration: int, every_s: float = 2.0) -> None:
        self.settings, self.run_id, self.every_s = settings, run_id, every_s
        self.start_iteration = start_iteration
        self._last = 0.0
        self.cancelled = False

    def on_iteration(self, trainer: Any, it: int, losses: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s and it < trainer.config.iterations:
            return
        self._last = now
        with session_scope(self.settings.resolved_database_url) as s:
            run = s.get(TrainingRun, self.run_id)
            if run is None:
                self.cancelled = True
                return
            run.iteration = int(it)
            run.losses = {k: float(v) for k, v in losses.items() if isinstance(v, int | float)} | {
                "resumed_at": self.start_iteration}
            run.lease_expires_at = utcnow() + timedelta(seconds=self.settings.training_lease_s)
            self.cancelled = bool(run.cancel_requested)

    def on_checkpoint(self, trainer: Any, path: Path) -> None:  # noqa: D102
        pass

    def on_end(self, trainer: Any, summary: dict[str, Any]) -> None:  # noqa: D102
        pass


def evaluate(predictor: Any, items: list[tuple[str, str, str]], store: ArtifactStore,
             num_classes: int) -> dict[str, Any]:
    """Mean foreground Dice / HD95 (mm) over validation cases, on each case's own grid."""
    from models.metrics import evaluate_case

    per_case: dict[str, dict[str, float]] = {}
    for case_id, image_key, label_key in items:
        image, affine = _load(store, image_key)
        label = np.asarray(load_image(store.path(label_key)).dataobj).astype(np.uint8)
        pred = predictor.predict(image, affine)
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        res = evaluate_case(pred.mask, label, spacing, num_classes)
        dices = [m["dice"] for m in res.values()]
        hds = [m["hd95_mm"] for m in res.values() if not math.isnan(m["hd95_mm"])]
        per_case[case_id] = {"dice": float(np.mean(dices)),
                             "hd95_mm": float(np.mean(hds)) if hds else math.nan}
    dice = float(np.mean([v["dice"] for v in per_case.values()]))
    hds = [v["hd95_mm"] for v in per_case.values() if not math.isnan(v["hd95_mm"])]
    return {"dice": dice, "hd95_mm": float(np.mean(hds)) if hds else math.nan, "cases": len(per_case),
            "per_case": per_case}


def _finish(settings: Settings, run_id: str, state: RunState, **fields: Any) -> None:
    with session_scope(settings.resolved_database_url) as s:
        run = s.get(TrainingRun, run_id)
        if run is None:
            return
        run.state = state
        run.finished_at = utcnow()
        run.lease_expires_at = None
        for k, v in fields.items():
            setattr(run, k, v)


def _config_for(preset: str, overrides: dict[str, Any], card: dict[str, Any]) -> Any:
    """The preset's hyperparameters with the architecture and preprocessing of the model being tuned."""
    from models.training.config import load_config

    arch = card["architecture"]
    pre = card["preprocessing"]
    fixed = {
        "num_classes": arch["num_classes"], "in_channels": arch["in_channels"],
        "patch_size": card["patch_size"],
        "networks.net_a.name": arch["net_a"]["name"], "networks.net_a.width": arch["net_a"]["width"],
        "networks.net_b.name": arch["net_b"]["name"], "networks.net_b.width": arch["net_b"]["width"],
        "preprocessing.spacing": pre["spacing"], "preprocessing.intensity": pre["intensity"],
    }
    return load_config(preset).with_overrides({**fixed, **overrides})


def run_retrain(settings: Settings, store: ArtifactStore, run_id: str) -> str:
    url = settings.resolved_database_url
    with session_scope(url) as s:
        run = training.claim_run(s, run_id, settings.training_lease_s, current_worker_id())
        if run is None:
            return "skipped"
        active = registry.active_version(s)
        if active is None:
            run.state, run.finished_at = RunState.skipped, utcnow()
            run.decision = {"promote": False,
                            "reasons": ["no active model to fine-tune; import or train one"]}
            return "skipped"
        data = training.gather_data(s, settings)
        run.data_summary = data.summary()
        run.base_version = run.base_version or active.version
        run.preset = run.preset or settings.retrain_preset
        reason = training.skip_reason(data, settings)
        if reason is not None:
            run.state, run.finished_at, run.lease_expires_at = RunState.skipped, utcnow(), None
            run.decision = {"promote": False, "reasons": [reason]}
            return "skipped"
        base = {"version": active.version, "path": active.path, "card": dict(active.card)}
        preset, overrides = run.preset, dict(run.overrides or {})
        if settings.retrain_iterations and "iterations" not in overrides:
            overrides["iterations"] = settings.retrain_iterations
    try:
        return _train_and_gate(settings, store, run_id, base, preset, overrides, data)
    except SoftTimeLimitExceeded:
        _finish(settings, run_id, RunState.failed, error=f"the run took longer than its time limit "
                f"({settings.training_time_limit_s} s, DUALSEG_TRAINING_TIME_LIMIT_S)")
        return "failed"
    except Exception as exc:  # noqa: BLE001 - the run records a message a person can act on
        log.exception("training run %s failed", run_id)
        _finish(settings, run_id, RunState.failed, error=f"{type(exc).__name__}: {exc}")
        return "failed"


def _train_and_gate(settings: Settings, store: ArtifactStore, run_id: str, base: dict[str, Any], preset: str,
                    overrides: dict[str, Any], data: training.RunData) -> str:
    import torch

    from models.data.transforms import preprocess, preprocess_label
    from models.inference.predictor import Predictor
    from models.package import ModelCard, ModelPackage, load_package, save_package
    from models.runtime import resolve_device
    from models.training.pipeline import training_reference
    from models.training.trainer import CHECKPOINT_NAME, Trainer

    device = resolve_device(settings.device, require_available=False)
    card = base["card"]
    config = _config_for(preset, overrides, card)
    spec = card["preprocessing"]
    labeled, unlabeled = [], []
    for _, image_key, label_key in data.train_labeled:
        image, affine = _load(store, image_key)
        arr, record = preprocess(image, affine, spec)
        label = np.asarray(load_image(store.path(label_key)).dataobj).astype(np.uint8)
        labeled.append((arr, preprocess_label(label, record)))
    for _, image_key in data.unlabeled:
        image, affine = _load(store, image_key)
        unlabeled.append(preprocess(image, affine, spec)[0])
    out_dir = store.path(f"training/{run_id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    package = load_package(base["path"], device)  # fine-tune from the active model's weights
    net_a, net_b = package.net_a.train(), package.net_b.train()
    resume = (out_dir / CHECKPOINT_NAME).is_file()
    start_it = 0
    if resume:
        start_it = int(torch.load(out_dir / CHECKPOINT_NAME, map_location="cpu",
                                  weights_only=True)["iteration"])
    hook = DbProgress(settings, run_id, start_it)
    with session_scope(settings.resolved_database_url) as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None
        run.total_iterations = config.iterations
        run.checkpoint_key = f"training/{run_id}/{CHECKPOINT_NAME}"
    trainer = Trainer(config, net_a, net_b, labeled, unlabeled, device, out_dir, [hook],
                      stop_requested=lambda: hook.cancelled)
    summary = trainer.resume() if resume else trainer.train()
    if summary.get("stopped"):
        _finish(settings, run_id, RunState.cancelled, error="cancelled by a user",
                iteration=summary["iterations"])
        return "cancelled"
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    version = f"{card['name']}-r{stamp}"
    new_card = ModelCard.from_dict({**{k: card[k] for k in ModelCard.REQUIRED_KEYS if k in card},
                                    "version": version, "parent_version": base["version"],
                                    "training": {"kind": "retraining", "run_id": run_id, "preset": preset,
                                                 "data": data.summary(), "iterations": summary["iterations"],
                                                 "seconds": summary["seconds"], "device": str(device),
                                                 "config": summary["config"]},
                                    "metrics": {}})
    pkg_dir = out_dir / "package"
    # the OOD reference grows by the cases this run learned from (models/inference/ood.py)
    learned = ModelPackage(card=new_card, net_a=net_a, net_b=net_b, path=pkg_dir)
    new_card.training["ood_reference"] = training_reference(
        learned, [x for x, _ in labeled] + unlabeled, device,
        parent=card.get("training", {}).get("ood_reference"))
    save_package(pkg_dir, net_a.eval(), net_b.eval(), new_card)
    num_classes = int(card["architecture"]["num_classes"])
    cand = evaluate(Predictor(load_package(pkg_dir, device), device), data.validation, store, num_classes)
    act = evaluate(Predictor(load_package(base["path"], device), device), data.validation, store, num_classes)
    decision = training.gate({"dice": cand["dice"], "hd95_mm": cand["hd95_mm"]},
                             {"dice": act["dice"], "hd95_mm": act["hd95_mm"]},
                             settings.retrain_gate_dice_tol, settings.retrain_gate_hd95_tol_mm)
    promote = bool(decision["promote"]) and settings.retrain_auto_promote
    if decision["promote"] and not settings.retrain_auto_promote:
        decision["reasons"].append("passed the gate; automatic promotion is off (promote it by hand)")
    with session_scope(settings.resolved_database_url) as s:
        state = ModelState.candidate if decision["promote"] else ModelState.rejected
        mv = registry.import_package(s, settings, pkg_dir, training_run_id=run_id, state=state)
        mv.metrics = {"validation": _clean(cand), "active_on_same_cases": _clean(act)}
        if promote:
            registry.promote(s, version)
        run = s.get(TrainingRun, run_id)
        assert run is not None
        run.state, run.finished_at, run.lease_expires_at = RunState.succeeded, utcnow(), None
        run.candidate_version = version
        run.iteration = summary["iterations"]
        run.metrics = {"candidate": _clean(cand), "active": _clean(act)}
        run.decision = _clean({**decision, "promoted": promote})
    log.info("training run %s: candidate %s %s", run_id, version, "promoted" if promote else "not promoted")
    return "succeeded"


def _clean(value: Any) -> Any:
    """JSON-safe copy (NaN -> None)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def scheduled_run(settings: Settings, enqueue: Any) -> str | None:
    """Beat: start a run when corrections arrived since the last run (nothing to learn otherwise)."""
    from backend.broker import RETRAIN_TASK
    from backend.errors import Conflict

    with session_scope(settings.resolved_database_url) as s:
        if training.corrections_since_last_run(s) == 0:
            return None
        try:
            run = training.create_run(s, "schedule", None, {}, None)
        except Conflict:
            return None
        run_id = run.id
    enqueue(RETRAIN_TASK, run_id, settings.queue_training)
    return run_id
