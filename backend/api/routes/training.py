"""Training runs: start, watch (iteration, losses, ETA, metrics, promotion decision), cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from backend.api.deps import CeleryDep, SessionDep, SettingsDep, require_role
from backend.broker import RETRAIN_TASK, queue_for, send_job
from backend.schemas.models import TrainingReadiness, TrainingRunCreate, TrainingRunPublic
from backend.services import training
from backend.tables import TrainingRun

router = APIRouter(prefix="/training-runs", tags=["training"], dependencies=[Depends(require_role("viewer"))])
ADMIN = [Depends(require_role("admin"))]


def run_public(run: TrainingRun) -> TrainingRunPublic:
    return TrainingRunPublic(
        id=run.id, state=run.state.value, trigger=run.trigger, preset=run.preset,
        base_version=run.base_version, candidate_version=run.candidate_version,
        iteration=run.iteration, total_iterations=run.total_iterations,
        losses=run.losses or {}, metrics=run.metrics or {}, decision=run.decision or {},
        data_summary=run.data_summary or {}, eta_seconds=training.eta_seconds(run), error=run.error,
        created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at,
    )


@router.post("", status_code=202, response_model=TrainingRunPublic, dependencies=ADMIN,
             summary="Start a semi-supervised retraining run (409 while another one is queued or running)")
def create_run(session: SessionDep, settings: SettingsDep, celery: CeleryDep,
               body: TrainingRunCreate | None = None) -> JSONResponse:
    body = body or TrainingRunCreate()
    if body.preset is not None:
        from backend.services.presets import check_preset

        check_preset(body.preset)
    run = training.create_run(session, "api", body.preset, body.overrides, body.iterations)
    session.commit()
    send_job(celery, RETRAIN_TASK, run.id, queue_for(settings, RETRAIN_TASK))
    return JSONResponse(run_public(run).model_dump(mode="json"), status_code=202)


@router.get("", response_model=list[TrainingRunPublic], summary="Recent runs, newest first")
def list_runs(session: SessionDep) -> list[TrainingRunPublic]:
    return [run_public(r) for r in training.list_runs(session)]


@router.get("/readiness", response_model=TrainingReadiness,
            summary="Can a run start now? If not, how many more corrections it needs")
def get_readiness(session: SessionDep, settings: SettingsDep) -> TrainingReadiness:
    return TrainingReadiness(**training.readiness(session, settings))


@router.get("/{run_id}", response_model=TrainingRunPublic, summary="One run")
def get_run(run_id: str, session: SessionDep) -> TrainingRunPublic:
    return run_public(training.get_run(session, run_id))


@router.delete("/{run_id}", response_model=TrainingRunPublic, dependencies=ADMIN, summary="Cancel a run")
def cancel_run(run_id: str, session: SessionDep) -> TrainingRunPublic:
    return run_public(training.cancel_run(session, run_id))
