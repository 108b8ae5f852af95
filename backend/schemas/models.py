"""Public models for corrections, model versions and training runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class CorrectionPublic(BaseModel):
    correction_id: str
    case_id: str
    job_id: str | None
    model_version: str | None
    author: str | None
    created_at: datetime
    source_format: str
    sha256: str
    stats: dict[str, Any] = Field(description="dice, voxels_added/removed/relabelled/changed, "
                                  "changed_in_flagged_share (share of changed voxels with entropy ≥ 0.5), "
                                  "changed_in_region_boxes_share")
    split: str | None = Field(None, description="the case's side of the retraining split (train | "
                              "validation), fixed at its first correction")


class ModelVersionPublic(BaseModel):
    version: str
    state: str
    name: str | None
    parent_version: str | None
    created_at: datetime
    promoted_at: datetime | None
    content_hash: str
    metrics: dict[str, Any]
    card: dict[str, Any] | None = None


class TrainingRunCreate(BaseModel):
    preset: str | None = Field(None, description="a config preset (configs/<name>.yaml); default the "
                               "active model's preset or 'starter'")
    iterations: int | None = Field(None, ge=1, le=1_000_000)
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted config keys, e.g. "
                                      '{"loss.w_u": 0.5}')


class TrainingRunPublic(BaseModel):
    id: str
    state: str
    trigger: str
    preset: str | None
    base_version: str | None
    candidate_version: str | None
    iteration: int
    total_iterations: int | None
    losses: dict[str, Any]
    metrics: dict[str, Any]
    decision: dict[str, Any]
    data_summary: dict[str, Any]
    eta_seconds: float | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainingReadiness(BaseModel):
    """Whether a retraining run can start now, and what is missing if not."""

    ready: bool
    corrections_needed: int = Field(description="more corrected cases needed before a run can start")
    reason: str | None = Field(None, description="what is missing, in words (null when ready)")
    train: int = Field(description="corrected cases on the training side")
    validation: int = Field(description="corrected cases on the validation side")
    unlabeled: int = Field(description="uncorrected cases (the run's unlabeled data)")
    seed_labeled: int
    min_labeled: int
    validation_percent: int
    next_side: str = Field(description="the side the next newly corrected case will get")
