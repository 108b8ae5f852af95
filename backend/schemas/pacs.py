"""Request/response models of the PACS routes (/api/v1/pacs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from backend.schemas.models import CorrectionPublic

Uid = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]


class PacsSegmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "study_uid": "1.2.826.0.1.3680043.8.498.1", "series_uid": "1.2.826.0.1.3680043.8.498.2"}})

    study_uid: Uid
    series_uid: Uid
    model_version: str | None = Field(default=None, max_length=64,
                                      description="default: the active model")
    reuse_case: bool = Field(default=False,
                             description="true: if a case of this series exists, segment it again "
                             "instead of fetching the series from the PACS")


class PacsSegmentAccepted(BaseModel):
    pull_id: str | None = Field(description="the pull that fetches the series; null when reuse_case "
                                "reused a case")
    state: str = Field(description="state of the pull: queued | running | succeeded | failed")
    case_id: str | None = Field(description="known once the series is fetched and valid (see urls.pull)")
    job_id: str | None = Field(description="the segmentation job, known with the case")
    deduplicated: bool = Field(default=False,
                               description="an unfinished pull of the same series was returned")
    urls: dict[str, str]


class PullPublic(BaseModel):
    pull_id: str
    state: str = Field(description="queued | running | succeeded | failed")
    study_uid: str
    series_uid: str
    model_version: str | None
    case_id: str | None
    job_id: str | None
    attempts: int
    error: str | None
    created_at: str
    updated_at: str
    urls: dict[str, str]


class ImportSegRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "sop_instance_uid": "1.2.826.0.1.3680043.8.498.3"}})

    sop_instance_uid: Uid
    study_uid: Uid | None = Field(default=None, description="optional: narrows the QIDO-RS search")
    series_uid: Uid | None = Field(default=None, description="optional (with study_uid): narrows the search")

    @model_validator(mode="after")
    def _series_needs_study(self) -> ImportSegRequest:
        if self.series_uid and not self.study_uid:
            raise ValueError("series_uid needs study_uid")
        return self


class ImportSegResult(BaseModel):
    created: bool = Field(description="false: this SEG had been imported before (same correction returned)")
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    correction: CorrectionPublic


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: Literal["result", "correction"] = Field(
        default="result", description="result: SEG + entropy map of a job; correction: a correction as SEG")
    job_id: str | None = Field(default=None, max_length=32,
                               description="result: default the newest succeeded job")
    correction_id: str | None = Field(default=None, max_length=32,
                                      description="correction: default the newest one")
    target: Literal["auto", "dicomweb", "forward"] = Field(
        default="auto",
        description="auto: back where the case came from, else the DICOMweb PACS, else the C-STORE peer")


class PushPublic(BaseModel):
    push_id: str
    kind: str
    ref_id: str
    case_id: str
    target: str
    state: str = Field(description="queued | running | succeeded | failed")
    attempts: int
    error: str | None
    sop_instance_uids: list[str]
    created_at: str
    updated_at: str


class PacsStatus(BaseModel):
    dicomweb: dict[str, Any] = Field(description="roots, auth mode (never the secret), reachability")
    push: str
    poll_interval_s: int
    scp: dict[str, Any]
