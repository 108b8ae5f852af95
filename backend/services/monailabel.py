"""The MONAI Label protocol mapped onto dualseg's own rows (no second datastore).

- an *image* is a case (its id; the name a client gave at upload also finds it, newest first);
- a *label* with tag ``final`` is the case's newest correction, with tag ``original`` the model's mask;
- *inference* is the case's segmentation job (created when the case has none that can still succeed);
  model ``dualseg`` answers the mask, ``dualseg_uncertainty`` the normalised entropy as round(255 · H);
- the strategies read the worklist: ``uncertainty`` = the most uncertain case without a correction
  (out-of-distribution first, as the worklist sorts), ``random`` = any case without a correction;
- *training* is a retraining run.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import numpy as np
from sqlalchemy import case as sql_case
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import __version__
from backend.config import Settings
from backend.db import session_scope
from backend.errors import BadInput, Conflict, DomainError, NotFound
from backend.imaging.nifti import load_image
from backend.services import artifacts as art
from backend.services import intake, registry, training
from backend.storage import ArtifactStore
from backend.tables import Case, Correction, Job, JobState, RunState, TrainingRun

SEGMENTATION = "dualseg"
UNCERTAINTY = "dualseg_uncertainty"
MODELS = (SEGMENTATION, UNCERTAINTY)
STRATEGIES = ("uncertainty", "random")
TAGS = ("final", "original")
RUN_STATUS = {RunState.queued: "RUNNING", RunState.running: "RUNNING", RunState.succeeded: "DONE",
              RunState.failed: "ERROR", RunState.cancelled: "STOPPED", RunState.skipped: "DONE"}
MAX_LISTED = 10_000  # GET /datastore/?output=all lists at most this many (newest) cases


class InferTimeout(DomainError):
    status = 504
    code = "timeout"


def parse_params(raw: str | None) -> dict[str, Any]:
    """The ``params`` form field: a JSON object (``{}`` when empty)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInput(f"'params' is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise BadInput("'params' must be a JSON object")
    return value


def classes(session: Session) -> dict[str, int]:
    active = registry.active_version(session)
    classes = (active.card.get("classes") if active else None) or []
    return {str(c["name"]): int(c["index"]) for c in classes if int(c.get("index", 0)) > 0}


def info(session: Session) -> dict[str, Any]:
    """GET /info/ (no top-level ``config``: Slicer refuses it)."""
    labels = classes(session)
    active = registry.active_version(session)
    version = active.version if active else None
    models = {
        SEGMENTATION: {"type": "segmentation", "labels": labels, "dimension": 3,
                       "description": f"dualseg dual-network segmentation (active model: {version})"},
        UNCERTAINTY: {"type": "segmentation", "labels": {"uncertainty": 255}, "dimension": 3,
                      "description": "voxelwise normalised entropy of the same result as round(255 x H), "
                                     "0 = certain, 255 = maximally uncertain"},
    }
    return {"name": "dualseg", "description": "annotation assist with voxelwise uncertainty",
            "version": __version__, "labels": list(labels), "models": models,
            "trainers": {SEGMENTATION: {"description": "semi-supervised retraining run (promotion gated)"}},
            "strategies": {"uncertainty": {"description": "most uncertain case without a correction"},
                           "random": {"description": "a random case without a correction"}},
            "scoring": {}, "train_stats": {}, "datastore": datastore_stats(session)}


def find_case(session: Session, image: str) -> Case:
    """A case by id, else the newest case uploaded under that MONAI Label image name."""
    if not image:
        raise BadInput("the 'image' query parameter is required")
    case = session.get(Case, image)
    if case is not None:
        return case
    for row in session.scalars(select(Case).where(Case.source_format == "nifti")
                               .order_by(Case.created_at.desc())):
        if ((row.meta or {}).get("monailabel") or {}).get("image") == image:
            return row
    raise NotFound(f"image {image} does not exist")


def upload(session: Session, settings: Settings, store: ArtifactStore, image: str | None,
           filename: str | None, stream: Any, created_by: str) -> intake.Intake:
    """PUT /datastore/: one volume becomes a case, segmented at once when a model is active."""
    segment = intake.resolve_model(session, None) is not None
    meta = {"monailabel": {"image": image[:200]}} if image and not settings.deidentify_on_ingest else None
    return intake.intake(session, settings, store, [(filename, stream)], segment=segment,
                         created_by=created_by[:64], meta=meta)


def datastore_stats(session: Session) -> dict[str, Any]:
    total = int(session.scalar(select(func.count()).select_from(Case)) or 0)
    completed = int(session.scalar(select(func.count(func.distinct(Correction.case_id)))) or 0)
    return {"total": total, "completed": completed, "label_tags": {"final": completed}}


def datastore_all(session: Session) -> dict[str, Any]:
    latest: dict[str, Correction] = {c.case_id: c for c in session.scalars(
        select(Correction).order_by(Correction.created_at))}
    objects: dict[str, Any] = {}
    for case in session.scalars(select(Case).order_by(Case.created_at.desc()).limit(MAX_LISTED)):
        labels: dict[str, Any] = {}
        if case.latest_job_id:
            labels["original"] = {"ext": ".nii.gz", "info": {"job_id": case.latest_job_id,
                                                           "model_version": case.model_version}}
        corr = latest.get(case.id)
        if corr is not None:
            labels["final"] = {"ext": ".nii.gz", "info": {"correction_id": corr.id, "split": case.split,
                                                        "ts": int(corr.created_at.timestamp())}}
        objects[case.id] = {"image": {"ext": ".nii.gz", "info": {
            "shape": case.shape, "spacing": case.spacing, "modality": case.modality,
            "uncertainty_score": case.uncertainty_score, "out_of_distribution": case.out_of_distribution,
            "ts": int(case.created_at.timestamp())}}, "labels": labels}
    return {"name": "dualseg", "description": "dualseg cases", "objects": objects}


def label_key(session: Session, case: Case, tag: str) -> str:
    """Storage key of a label: ``final`` = newest correction, ``original`` = the model's mask."""
    if tag not in TAGS:
        raise BadInput(f"tag must be one of {list(TAGS)}")
    if tag == "final":
        corr = session.scalars(select(Correction).where(Correction.case_id == case.id)
                               .order_by(Correction.created_at.desc())).first()
        if corr is None:
            raise NotFound(f"image {case.id} has no final label (no correction yet)")
        return corr.key
    return art.get_artifact(session, art.result_job(session, case), "mask_nifti").key


def job_to_wait_for(session: Session, settings: Settings, case: Case) -> tuple[Job, bool]:
    """The case's newest job when it succeeded or can still succeed; else a new one (True: send it)."""
    job = session.get(Job, case.latest_job_id) if case.latest_job_id else None
    if job is not None and job.state in (JobState.succeeded, JobState.queued, JobState.running):
        return job, False
    return intake.queue_segmentation(session, settings, case, intake.require_model(session, None)), True


def wait_for_job(settings: Settings, job_id: str, timeout_s: float, poll_s: float = 0.5) -> None:
    """Block (in the thread pool) until the job finished; 504 past ``timeout_s``, 422 when it failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(settings.resolved_database_url) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} vanished (was the case deleted?)")
            state, error, progress = job.state, job.error, job.progress
        if state == JobState.succeeded:
            return
        if state in (JobState.failed, JobState.cancelled):
            raise BadInput(f"the segmentation job {job_id} {state.value}: {error or 'no reason recorded'}")
        if time.monotonic() >= deadline:
            raise InferTimeout(f"the segmentation job {job_id} is still {state.value} "
                               f"(progress {progress or 0:.0f} %) after {timeout_s:.0f} s; ask again later "
                               "with the same image (the job keeps running)")
        time.sleep(poll_s)


def result_volume(session: Session, store: ArtifactStore, job: Job,
                  model: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 volume, RAS affine) of a succeeded job: the mask, or the entropy as round(255 · H)."""
    kind = "mask_nifti" if model == SEGMENTATION else "entropy_nifti"
    img = load_image(store.path(art.get_artifact(session, job, kind).key))
    data = np.asarray(img.dataobj)
    if model == UNCERTAINTY:
        data = np.rint(np.clip(data.astype(np.float32), 0.0, 1.0) * 255.0)
    return data.astype(np.uint8), np.asarray(img.affine, dtype=float)


def infer_params(case: Case, job: Job, model: str, labels: dict[str, int]) -> dict[str, Any]:
    return {"model": model, "image": case.id, "job_id": job.id, "model_version": job.model_version,
            "label_names": labels if model == SEGMENTATION else {"uncertainty": 255},
            "uncertainty": {"score": case.uncertainty_score, "mean_entropy": case.mean_entropy,
                            "region_count": case.region_count, "ood_score": case.ood_score,
                            "out_of_distribution": case.out_of_distribution},
            "regions": f"/api/v1/cases/{case.id}/regions",
            "latencies": {"total": (job.timings or {}).get("total_s")}}


def check_model(model: str) -> None:
    if model not in MODELS:
        raise NotFound(f"model {model} is not served here; models: {list(MODELS)}")


def next_sample(session: Session, strategy: str) -> dict[str, Any]:
    """POST /activelearning/{strategy}: ``{}`` when every case has a correction."""
    if strategy not in STRATEGIES:
        raise NotFound(f"strategy {strategy} does not exist; strategies: {list(STRATEGIES)}")
    query = select(Case).where(Case.id.not_in(select(Correction.case_id)))
    if strategy == "uncertainty":
        flagged = sql_case((Case.out_of_distribution.is_(True), 0), else_=1)
        case = session.scalars(query.order_by(Case.uncertainty_score.is_(None), flagged,
                                              Case.uncertainty_score.desc(), Case.created_at.desc())).first()
    else:
        ids = session.scalars(query.with_only_columns(Case.id)).all()
        case = session.get(Case, random.SystemRandom().choice(ids)) if ids else None
    if case is None:
        return {}
    return {"id": case.id, "name": f"{case.id}.nii.gz", "strategy": strategy,
            "uncertainty_score": case.uncertainty_score, "out_of_distribution": case.out_of_distribution,
            "url": f"/datastore/image?image={case.id}"}


def run_status(run: TrainingRun) -> dict[str, Any]:
    """A run in the shape of a MONAI Label train task."""
    details = [f"iteration {run.iteration}/{run.total_iterations or '?'}"]
    if run.error:
        details.append(run.error)
    return {"id": run.id, "name": "train", "status": RUN_STATUS[run.state], "state": run.state.value,
            "start_ts": int(run.created_at.timestamp()),
            "end_ts": int(run.finished_at.timestamp()) if run.finished_at else None,
            "result": {"decision": run.decision or {}, "metrics": run.metrics or {},
                       "candidate_version": run.candidate_version},
            "details": details, "iteration": run.iteration, "total_iterations": run.total_iterations,
            "eta_seconds": training.eta_seconds(run)}


def latest_run(session: Session) -> TrainingRun | None:
    return session.scalars(select(TrainingRun).order_by(TrainingRun.created_at.desc())).first()


def active_run(session: Session) -> TrainingRun | None:
    return session.scalars(select(TrainingRun).where(TrainingRun.state.in_(training.ACTIVE_STATES))
                           .order_by(TrainingRun.created_at.desc())).first()


def start_training(session: Session, model: str, params: dict[str, Any]) -> TrainingRun:
    """POST /train/{model}: a retraining run (409 while one runs); ``params`` may carry ``iterations``."""
    if model not in (SEGMENTATION, ""):
        raise NotFound(f"trainer {model} does not exist; trainers: ['{SEGMENTATION}']")
    own = params.get(SEGMENTATION, params)
    iterations = own.get("iterations") if isinstance(own, dict) else None
    if iterations is not None and (not isinstance(iterations, int) or not 1 <= iterations <= 1_000_000):
        raise BadInput("'iterations' must be an integer in 1..1000000")
    return training.create_run(session, "monailabel", None, {}, iterations)


def stop_training(session: Session) -> dict[str, Any]:
    """DELETE /train/: cancel the queued or running run; ``{}`` when none is."""
    run = active_run(session)
    if run is None:
        return {}
    try:
        return run_status(training.cancel_run(session, run.id))
    except Conflict:  # finished between the two reads
        return {}
