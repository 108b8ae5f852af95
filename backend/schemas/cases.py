"""Public request/response models for cases, jobs and artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class UncertaintySummary(BaseModel):
    score: float | None = Field(None, description="worklist sort key: mean normalised entropy in the "
                                "region of interest (predicted foreground ∪ entropy ≥ 0.05)")
    mean_entropy: float | None = None
    region_count: int | None = None
    out_of_distribution: bool | None = Field(
        None, description="the volume is unlike the model's training data (models/inference/ood.py): "
        "its voxel uncertainty and region ranking are not to be trusted")
    ood_score: float | None = Field(None, description="out-of-distribution score in [0, 1]; flagged at ≥ 0.5")
    ood_reason: str | None = Field(None, description="what made the score high, in words")


class JobPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "job_id": "3f2a…", "case_id": "9b1c…", "state": "running", "queue_position": None,
        "progress": 42.5, "stage": "inference", "model_version": "starter-1", "attempts": 1,
        "error": None, "timings": {"inference": 3.2}}})

    job_id: str
    case_id: str
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    queue_position: int | None = Field(None, description="1 = next to run; null unless queued")
    progress: float = Field(description="0–100")
    stage: str | None = None
    model_version: str | None = None
    attempts: int
    max_attempts: int
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    uncertainty: UncertaintySummary | None = Field(
        None, description="the result's uncertainty summary and out-of-distribution flag (succeeded jobs "
        "whose result is the case's latest)")


class CaseCreated(BaseModel):
    case_id: str
    job_id: str | None
    urls: dict[str, str]


class ArtifactPublic(BaseModel):
    kind: str
    media_type: str
    size_bytes: int
    sha256: str


class CasePublic(BaseModel):
    case_id: str
    created_at: datetime
    source_format: str
    original_name: str | None
    shape: list[int]
    spacing: list[float]
    modality: str | None
    study_uid: str | None
    series_uid: str | None
    frame_of_reference_uid: str | None
    series_description: str | None
    pseudonym: str | None = Field(None, description="the patient's pseudonym when the case was de-identified "
                                  "on ingest (DUALSEG_DEIDENTIFY_ON_INGEST)")
    sha256: str
    size_bytes: int
    num_files: int
    model_version: str | None
    split: str | None = Field(None, description="side of the retraining split (train | validation), "
                              "fixed at the case's first correction; null while uncorrected")
    uncertainty: UncertaintySummary
    latest_job: JobPublic | None
    artifacts: list[ArtifactPublic] = Field(default_factory=list)
    urls: dict[str, str]


class CaseIdentityPublic(BaseModel):
    """The original identifiers of a de-identified case (admin only; every read is audited)."""

    case_id: str
    pseudonym: str
    identifiers: dict[str, str] = Field(
        description="original DICOM attributes by keyword (PatientName, PatientID, PatientBirthDate, "
        "AccessionNumber, …) as found in the upload")
    created_at: datetime


class CaseList(BaseModel):
    items: list[CasePublic]
    total: int
    limit: int
    offset: int


class SegmentRequest(BaseModel):
    model_version: str | None = Field(None, description="a registered version; default the active one")


class ErrorBody(BaseModel):
    error: dict[str, Any]
