"""SQLAlchemy 2.0 typed ORM tables. The database row is the truth for every job and case."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that reads back aware UTC datetimes on every database.

    PostgreSQL stores ``timestamptz`` and returns aware values; SQLite stores no zone and returned naive
    ones, which every comparison with ``utcnow()`` had to patch up. Values are written in UTC (an aware
    value is converted; a naive one is taken as UTC, as before) and read back with ``tzinfo=UTC``. The
    migrations keep plain ``sa.DateTime(timezone=True)`` (the schema is the same; alembic/env.py renders
    this type that way).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


class JobType(str, enum.Enum):
    segment = "segment"


class ModelState(str, enum.Enum):
    candidate = "candidate"
    active = "active"
    retired = "retired"
    rejected = "rejected"


class RunState(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    skipped = "skipped"


class Role(str, enum.Enum):
    viewer = "viewer"
    annotator = "annotator"
    admin = "admin"


def _enum(e: type[enum.Enum], name: str) -> SAEnum:
    return SAEnum(e, name=name, native_enum=False, length=16, validate_strings=True)


class Case(Base):
    """An uploaded volume (NIfTI or one DICOM series) and where it is stored."""

    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    source_format: Mapped[str] = mapped_column(String(16))  # nifti | dicom
    original_name: Mapped[str | None] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    num_files: Mapped[int] = mapped_column(Integer, default=1)
    image_key: Mapped[str] = mapped_column(String(255))  # storage key of the canonical NIfTI copy
    source_key: Mapped[str | None] = mapped_column(String(255))  # storage key of the original files
    shape: Mapped[list[Any]] = mapped_column(JSON)
    spacing: Mapped[list[Any]] = mapped_column(JSON)
    affine: Mapped[list[Any]] = mapped_column(JSON)
    modality: Mapped[str | None] = mapped_column(String(16))
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    frame_of_reference_uid: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(255))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    latest_job_id: Mapped[str | None] = mapped_column(String(32))
    model_version: Mapped[str | None] = mapped_column(String(64))
    mean_entropy: Mapped[float | None] = mapped_column(Float)
    uncertainty_score: Mapped[float | None] = mapped_column(Float, index=True)
    region_count: Mapped[int | None] = mapped_column(Integer)
    # the case-level out-of-distribution flag of the latest segmentation (models/inference/ood.py)
    ood_score: Mapped[float | None] = mapped_column(Float)
    out_of_distribution: Mapped[bool | None] = mapped_column(Boolean)
    ood_reason: Mapped[str | None] = mapped_column(Text)
    # side of the retraining split ('train' | 'validation'): set at the first correction, never changed
    split: Mapped[str | None] = mapped_column(String(16), index=True)
    split_at: Mapped[datetime | None] = mapped_column()
    created_by: Mapped[str | None] = mapped_column(String(64))

    jobs: Mapped[list[Job]] = relationship(back_populates="case", cascade="all, delete-orphan")
    identity: Mapped[CaseIdentity | None] = relationship(cascade="all, delete-orphan")


class CaseIdentity(Base):
    """The private mapping of a de-identified case: its pseudonym and the original identifiers,
    encrypted (Fernet, key derived from the server secret). Read only through the admin endpoint."""

    __tablename__ = "case_identities"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    identifiers: Mapped[str] = mapped_column(Text)  # Fernet token of a JSON object
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One unit of queued work (today: segmentation of one case with one model version)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    type: Mapped[JobType] = mapped_column(_enum(JobType, "job_type"), default=JobType.segment)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.queued)
    queue: Mapped[str] = mapped_column(String(64), default="inference")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(255))  # Celery node name of the last claimer
    # the registered worker process (``workers.id``) holding the job while it runs
    worker_id: Mapped[str | None] = mapped_column(String(32), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    case: Mapped[Case] = relationship(back_populates="jobs")


class Artifact(Base):
    """A file a job produced (mask, entropy map, regions, SEG, PM ...)."""

    __tablename__ = "artifacts"
    __table_args__ = (Index("uq_artifacts_job_kind", "job_id", "kind", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Correction(Base):
    """A clinician's corrected label map; history is kept, never overwritten."""

    __tablename__ = "corrections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    model_version: Mapped[str | None] = mapped_column(String(64))
    author: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    source_format: Mapped[str] = mapped_column(String(16))  # nifti | dicom-seg
    key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelVersion(Base):
    """A model package in the registry."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[ModelState] = mapped_column(_enum(ModelState, "model_state"), default=ModelState.candidate)
    path: Mapped[str] = mapped_column(String(1024))
    content_hash: Mapped[str] = mapped_column(String(64))
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()
    training_run_id: Mapped[str | None] = mapped_column(String(32))


class TrainingRun(Base):
    """One retraining run (scheduled or requested)."""

    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    state: Mapped[RunState] = mapped_column(_enum(RunState, "run_state"), default=RunState.queued)
    trigger: Mapped[str] = mapped_column(String(32), default="api")  # api | schedule | corrections
    preset: Mapped[str | None] = mapped_column(String(64))
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    base_version: Mapped[str | None] = mapped_column(String(64))
    candidate_version: Mapped[str | None] = mapped_column(String(64))
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    total_iterations: Mapped[int | None] = mapped_column(Integer)
    losses: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decision: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(32), index=True)  # ``workers.id`` while running
    error: Mapped[str | None] = mapped_column(Text)
    checkpoint_key: Mapped[str | None] = mapped_column(String(255))


class Worker(Base):
    """A live (or recently live) worker process: its heartbeat thread refreshes ``last_seen_at``. A worker
    is gone when the row is missing, ``last_seen_at`` is older than the job lease, or — seen from the same
    host — its pid no longer runs; the jobs and training runs it holds are then re-queued at once."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(255))  # Celery node name, for people reading the table
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ApiToken(Base):
    """A bearer token; only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


class AuditEvent(Base):
    """Who did what to which resource (never patient names or IDs)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    client: Mapped[str | None] = mapped_column(String(64))
