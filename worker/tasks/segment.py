"""Celery task `dualseg.segment(job_id)`: thin — load the job, run the predictor, write and record
the results. Idempotent: a redelivered message for a finished job does nothing, and re-running a job
rewrites the same artifact keys atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from backend.broker import SEGMENT_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.imaging.errors import ImagingError
from backend.imaging.min_shape import check_min_shape
from backend.imaging.nifti import read_nifti
from backend.imaging.volume import ImageVolume
from backend.services import artifacts, jobs, registry, results
from backend.storage import ArtifactStore
from backend.tables import Case, JobState
from worker.liveness import current_worker_id
from worker.model_cache import ModelCache

log = logging.getLogger("dualseg.worker.segment")

TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
# share of job progress (0-100) given to each stage
P_LOADED, P_INFERRED, P_WRITTEN = 5.0, 85.0, 98.0


class Heartbeat:
    """Throttled progress writer; raises JobCancelled when the user cancelled, LeaseLost when the job was
    re-queued away from this worker. (The lease itself is renewed by the worker's heartbeat thread,
    worker/liveness.py, also while one long step gives no progress.)"""

    def __init__(self, settings: Settings, job_id: str, min_interval_s: float = 1.0,
                 worker_id: str | None = None) -> None:
        self.settings, self.job_id, self.min_interval_s = settings, job_id, min_interval_s
        self.worker_id = worker_id
        self._last = 0.0

    def __call__(self, progress: float, stage: str | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        with session_scope(self.settings.resolved_database_url) as s:
            jobs.heartbeat(s, self.job_id, progress, stage, self.settings.job_lease_s, self.worker_id)


def run_segment(
    settings: Settings,
    store: ArtifactStore,
    cache: ModelCache,
    job_id: str,
    worker_name: str,
    enqueue: jobs.Enqueue,
) -> str:
    url = settings.resolved_database_url
    worker_id = current_worker_id()
    with session_scope(url) as s:
        job = jobs.claim(s, job_id, worker_name, settings.job_lease_s, worker_id)
        if job is None:
            return "skipped"
        case = s.get(Case, job.case_id)
        assert case is not None
        active = registry.active_version(s)
        version = job.model_version or (active.version if active else None)
        if version is None:
            jobs.finish(
                s,
                job_id,
                JobState.failed,
                error="no model is active: import and promote one (dualseg models import), then re-run",
            )
            return "failed"
        mv = registry.get_version(s, version)
        job.model_version = version
        job.stage = "loading model"
        case_id, image_key = case.id, case.image_key
        model_path, model_hash, card = mv.path, mv.content_hash, dict(mv.card)
    beat = Heartbeat(settings, job_id, worker_id=worker_id)
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        predictor = cache.get(version, model_hash, Path(model_path))
        timings["model_load"] = cache.last_load_seconds
        t1 = time.perf_counter()
        volume = read_nifti(store.path(image_key))
        timings["read"] = time.perf_counter() - t1
        check_min_shape(volume.shape, volume.affine, card)  # cases stored before the rule, or segment=false
        beat(P_LOADED, "inference", force=True)
        pred = predictor.predict(
            volume.array,
            volume.affine,
            progress=lambda f: beat(P_LOADED + (P_INFERRED - P_LOADED) * f, "inference"),
        )
        timings.update({f"predict_{k}": float(v) for k, v in pred.timings.items()})
        beat(P_INFERRED, "writing results", force=True)
        t2 = time.perf_counter()
        out = results.Outputs(
            mask=pred.mask,
            entropy=pred.entropy,
            disagreement=pred.disagreement,
            regions=pred.regions,
            affine=volume.affine,
            ood=pred.ood,
        )
        model_info = {"version": version, "name": card.get("name"), "content_hash": model_hash}
        # NIfTI + JSON in a second thread (gzip and file writes release the GIL) while this one builds
        # the DICOM objects (Python-bound); the files are independent
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-nifti") as pool:
            nifti = pool.submit(
                _timed,
                timings,
                "write_nifti",
                lambda: results.write_volume_outputs(store, case_id, job_id, out, model_info,
                                                     threads=settings.worker_threads or 2),
            )
            dicom = _timed(
                timings,
                "write_dicom",
                lambda: _write_dicom_outputs(settings, store, case_id, job_id, out, card, version, volume),
            )
            kinds = nifti.result() + dicom
        timings["write"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
        summary = out.summary
        with session_scope(url) as s:
            for kind in kinds:
                artifacts.record(s, store, case_id, job_id, kind)
            case = s.get(Case, case_id)
            if case is not None and case.latest_job_id == job_id:
                case.model_version = version
                case.mean_entropy = summary["mean_entropy"]
                case.uncertainty_score = summary["uncertainty_score"]
                case.region_count = summary["region_count"]
                case.out_of_distribution = summary["out_of_distribution"]
                case.ood_score = summary["ood_score"]
                case.ood_reason = summary["ood_reason"]
            jobs.finish(s, job_id, JobState.succeeded, timings=timings)
        log.info("job %s succeeded in %.2f s", job_id, timings["total"])
        try:  # results back to the PACS (docs/pacs.md); a PACS problem never fails the job
            from worker.tasks.pacs import after_segment

            after_segment(settings, case_id, job_id, enqueue)
        except Exception:  # noqa: BLE001
            log.exception("job %s: could not queue the PACS push", job_id)
        return "succeeded"
    except jobs.JobCancelled:
        with session_scope(url) as s:
            jobs.finish(s, job_id, JobState.cancelled, error="cancelled by a user", timings=timings)
        return "cancelled"
    except jobs.LeaseLost as exc:
        log.warning("%s; stopping this run of it", exc)
        return "lease-lost"
    except SoftTimeLimitExceeded:
        return _fail(url, job_id, f"the job ran longer than its time limit ({settings.job_time_limit_s} s, "
                     "DUALSEG_JOB_TIME_LIMIT_S)", timings)
    except TRANSIENT as exc:
        log.warning("job %s: transient failure %s", job_id, type(exc).__name__)
        return _retry_later(settings, job_id, f"temporary failure: {type(exc).__name__}: {exc}", enqueue)
    except (ImagingError, ValueError) as exc:
        return _fail(url, job_id, f"the volume could not be segmented: {exc}", timings)
    except MemoryError:
        return _fail(
            url,
            job_id,
            "out of memory: the volume is too large for this worker; "
            "resample it or use a worker with more memory",
            timings,
        )
    except Exception as exc:  # noqa: BLE001 - a last failure is recorded, never lost
        log.exception("job %s failed", job_id)
        return _fail(
            url, job_id, f"internal error ({type(exc).__name__}: {exc}); see the worker log", timings
        )


def _timed(timings: dict[str, float], name: str, fn: Callable[[], list[str]]) -> list[str]:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        timings[name] = time.perf_counter() - t0


def _fail(url: str, job_id: str, message: str, timings: dict[str, float]) -> str:
    with session_scope(url) as s:
        jobs.finish(s, job_id, JobState.failed, error=message, timings=timings)
    return "failed"


def _retry_later(settings: Settings, job_id: str, reason: str, enqueue: jobs.Enqueue) -> str:
    for delay in (1.0, 4.0, 15.0):  # the database itself may be the thing that is down
        try:
            with session_scope(settings.resolved_database_url) as s:
                job = jobs.get_job(s, job_id)
                again = jobs.requeue_or_fail(s, job, reason)
                attempts, queue = job.attempts, job.queue
            break
        except TRANSIENT:
            time.sleep(delay)
    else:
        return "lost-contact"  # the sweeper re-sends it once its lease expires
    if again:
        time.sleep(min(30.0, 2.0**attempts))
        enqueue(SEGMENT_TASK, job_id, queue)
        return "retrying"
    return "failed"


def _write_dicom_outputs(
    settings: Settings,
    store: ArtifactStore,
    case_id: str,
    job_id: str,
    out: results.Outputs,
    card: dict[str, Any],
    version: str,
    image: ImageVolume,
) -> list[str]:
    from backend.services.dicom_outputs import write_dicom_outputs

    return write_dicom_outputs(settings, store, case_id, job_id, out, card, version, image)


def register_segment_task(app: Celery, settings: Settings, enqueue: Callable[[str, str, str], None]) -> None:
    store = ArtifactStore(settings.resolved_storage_dir)
    cache = ModelCache(settings.device, settings.inference_amp, settings.inference_overlap,
                       threads=settings.worker_threads)

    @app.task(
        name=SEGMENT_TASK,
        bind=True,
        acks_late=True,
        ignore_result=True,
        soft_time_limit=settings.job_time_limit_s,
        time_limit=settings.job_time_limit_s + 60,
    )
    def segment(self: Any, job_id: str) -> str:
        return run_segment(settings, store, cache, job_id, self.request.hostname or "worker", enqueue)
