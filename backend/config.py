"""One Settings object for every dualseg process (env prefix ``DUALSEG_``).

The defaults are the *embedded* mode: a SQLite file, a filesystem Celery broker and artifacts under
``DUALSEG_DATA_DIR`` — no external service. Production sets ``DUALSEG_ENV=production`` with PostgreSQL,
Redis and a shared artifact volume; validators refuse unsafe production values.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "dualseg-development-secret-change-me"


class Settings(BaseSettings):
    """All configuration. Every field can be set as ``DUALSEG_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DUALSEG_", env_file=None, extra="ignore")

    env: Literal["development", "production"] = Field(
        "development", description="`production` turns on the safety validators"
    )
    host: str = Field("127.0.0.1", description="address the API binds to")
    port: int = Field(8000, ge=1, le=65535, description="port the API binds to")
    data_dir: Path = Field(Path("var"), description="root for the embedded database, broker and artifacts")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite file in data_dir")
    broker_url: str | None = Field(
        None, description="Celery broker URL; default a filesystem broker in data_dir/broker"
    )
    storage_dir: Path | None = Field(None, description="artifact store; default data_dir/artifacts")
    model_dir: Path | None = Field(None, description="model packages; default data_dir/models")
    queue_inference: str = Field("inference", description="Celery queue for segmentation jobs")
    queue_training: str = Field("training", description="Celery queue for retraining runs")
    max_upload_bytes: int = Field(2 * 1024**3, gt=0, description="cap on one upload request, bytes")
    max_upload_files: int = Field(5000, gt=0, description="cap on files in one upload (zip entries too)")
    max_voxels: int = Field(512 * 512 * 1024, gt=0, description="cap on voxels of one volume")
    auth_enabled: bool = Field(True, description="require bearer tokens on /api routes")
    secret_key: str = Field(DEFAULT_SECRET, description="server secret (token peppering)")
    job_time_limit_s: int = Field(
        1800, gt=0, description="time limit of one segmentation job (Celery soft limit; the hard limit is "
        "60 s later), independent of the lease")
    job_lease_s: int = Field(
        120, gt=0, description="lease of a running job, renewed by its worker's heartbeat: a job whose "
        "worker stopped beating this long ago is re-queued by the sweeper; also how long a silent worker "
        "counts as alive")
    heartbeat_s: float = Field(
        20.0, gt=0, description="period of every worker's heartbeat thread (its liveness row and the leases "
        "of the jobs and training runs it holds); at most a third of job_lease_s and training_lease_s")
    job_queued_grace_s: int = Field(600, gt=0, description="a job queued this long is re-sent to the broker")
    job_max_attempts: int = Field(3, ge=1, description="attempts before a job is marked failed")
    monailabel_infer_wait_s: int = Field(
        300, gt=0, le=3600, description="how long MONAI Label's POST /infer waits for the segmentation job")
    sweep_interval_s: int = Field(60, gt=0, description="period of the stuck-job sweeper (beat)")
    device: str = Field("auto", description="inference/training device: auto, cpu, cuda, cuda:N")
    inference_amp: bool = Field(False, description="bf16/fp16 autocast in inference where supported")
    inference_overlap: float = Field(0.5, ge=0.0, lt=1.0, description="sliding-window overlap")
    worker_threads: int = Field(
        0, ge=0, le=1024, description="CPU threads of one worker process: torch's intra-op threads for "
        "inference and the NIfTI writer threads; 0 = torch's default (OMP_NUM_THREADS, else every core; "
        "two writer threads). The tests run with OMP_NUM_THREADS=1")
    retrain_cron: str = Field("0 2 * * *", description="cron of the scheduled retraining (beat)")
    retrain_after_corrections: int = Field(
        0, ge=0, description="start a run after this many new corrections (0: off)")
    retrain_preset: str = Field("starter", description="training config preset used when a run names none")
    retrain_iterations: int | None = Field(
        None, ge=1, description="iterations of a run (default: the preset's)")
    retrain_val_percent: int = Field(
        20, ge=1, le=90, description="share of corrected cases held out for validation (each case's side "
        "is fixed at its first correction; the second corrected case always validates)")
    retrain_min_labeled: int = Field(
        1, ge=1, description="labeled training cases needed, else the run is skipped")
    retrain_seed_dataset: Path | None = Field(
        None, description="optional MSD-layout folder of extra labeled cases")
    retrain_auto_promote: bool = Field(True, description="promote a candidate that passes the gate")
    retrain_gate_dice_tol: float = Field(
        0.005, ge=0, description="candidate Dice may be this much below the active's")
    retrain_gate_hd95_tol_mm: float = Field(
        0.0, ge=0, description="candidate HD95 may be this much above the active's")
    training_lease_s: int = Field(
        120, gt=0, description="lease of a running training run, renewed by its worker's heartbeat: a run "
        "whose worker stopped beating this long ago is re-queued and resumes from its checkpoint")
    training_time_limit_s: int = Field(
        86400, gt=0, description="time limit of one training run (Celery soft limit; the hard limit is "
        "300 s later)")
    log_level: str = Field("INFO", description="log level of every process")
    # PACS (docs/pacs.md) -----------------------------------------------------------------------
    pacs_dicomweb_url: str | None = Field(
        None, description="DICOMweb service root of the PACS (e.g. http://orthanc:8042/dicom-web); "
        "unset = no DICOMweb PACS (pull, push and correction polling are off)")
    pacs_qido_url: str | None = Field(None, description="QIDO-RS root if it differs from pacs_dicomweb_url")
    pacs_wado_url: str | None = Field(None, description="WADO-RS root if it differs from pacs_dicomweb_url")
    pacs_stow_url: str | None = Field(None, description="STOW-RS root if it differs from pacs_dicomweb_url")
    pacs_auth: Literal["none", "basic", "bearer"] = Field(
        "none", description="how dualseg authenticates to the DICOMweb PACS")
    pacs_username: str | None = Field(None, description="pacs_auth=basic: user name")
    pacs_password: str | None = Field(None, description="pacs_auth=basic: password")
    pacs_token: str | None = Field(None, description="pacs_auth=bearer: the bearer token")
    pacs_timeout_s: float = Field(30.0, gt=0, description="timeout of one DICOMweb request, seconds")
    pacs_verify_tls: bool = Field(True, description="verify the PACS's TLS certificate (https roots)")
    pacs_ca_bundle: Path | None = Field(None, description="CA bundle for the PACS's TLS certificate")
    pacs_push: Literal["never", "after-segmentation", "after-correction"] = Field(
        "after-segmentation", description="when results go back to the PACS (STOW-RS for pulled series, "
        "C-STORE to scp_forward_* for series received by the SCP): after every segmentation, only once a "
        "correction exists (SEG marked SEMIAUTOMATIC/MANUAL), or never (manual push only)")
    pacs_poll_interval_s: int = Field(
        0, ge=0, description="period of the QIDO-RS poll for corrected SEGs in the PACS (beat); 0 = off")
    pacs_poll_lookback_days: int = Field(
        14, gt=0, description="the poll looks at the studies of DICOM cases created this many days back")
    pacs_pull_grace_s: int = Field(
        600, gt=0, description="a PACS pull queued or running this long without finishing is re-sent")
    scp_ae_title: str = Field("DUALSEG", min_length=1, max_length=16, description="AE title of `dualseg scp`")
    scp_host: str = Field("127.0.0.1", description="address `dualseg scp` listens on")
    scp_port: int = Field(11112, ge=1, le=65535, description="port `dualseg scp` listens on")
    scp_allowed_calling_aes: str = Field(
        "", description="comma-separated calling AE titles allowed to C-STORE/C-ECHO; empty = any")
    scp_stable_s: float = Field(
        10.0, gt=0, description="a received series is segmented once no instance arrived for this long")
    scp_spool_dir: Path | None = Field(None, description="where received instances wait; "
                                       "default data_dir/scp")
    scp_forward_ae: str | None = Field(None, description="AE title that receives the results (SEG + PM) "
                                       "of series received by the SCP; unset = no forward")
    scp_forward_host: str | None = Field(None, description="host of scp_forward_ae")
    scp_forward_port: int | None = Field(None, ge=1, le=65535, description="port of scp_forward_ae")
    # Security (docs/security.md) ---------------------------------------------------------------
    cors_allowed_origins: str = Field(
        "", description="comma-separated origins allowed to call the API from a browser (CORS), e.g. "
        "https://viewer.example.org; empty = no cross-origin access")
    oidc_issuer: str | None = Field(
        None, description="OIDC: accept JWT bearer tokens from this issuer (the `iss` claim); unset = off")
    oidc_audience: str | None = Field(None, description="OIDC: required `aud` claim (the API's client id)")
    oidc_jwks_file: Path | None = Field(None, description="OIDC: JSON Web Key Set of the issuer, from a file")
    oidc_jwks_url: str | None = Field(None, description="OIDC: JSON Web Key Set URL (when no file is set)")
    oidc_jwks_cache_s: int = Field(300, gt=0, description="OIDC: how long a fetched key set is reused (s)")
    oidc_algorithms: str = Field("RS256", description="OIDC: comma-separated accepted signature algorithms")
    oidc_role_claim: str = Field(
        "dualseg_role", description="OIDC: claim holding the role (dotted path, e.g. realm_access.roles); "
        "a string or a list: the highest known role wins")
    oidc_role_map: str = Field(
        "", description="OIDC: comma-separated claim-value=role pairs (e.g. radiologists=annotator); "
        "values that are already role names need no entry")
    oidc_name_claim: str = Field("preferred_username", description="OIDC: claim used as the audit actor "
                                 "(falls back to `sub`)")
    oidc_leeway_s: int = Field(30, ge=0, description="OIDC: clock skew allowed on exp/nbf/iat, seconds")
    max_concurrent_uploads: int = Field(
        4, ge=1, description="uploads (multipart requests) processed at once per API process; more wait "
        "(unread) for a slot, so reads stay fast and the database pool is not exhausted")
    max_concurrent_requests: int = Field(
        12, ge=1, description="/api requests served at once per API process (keep it below the database "
        "pool of 15 connections); more wait for a slot")
    request_wait_s: float = Field(
        120.0, gt=0, description="a request or upload waiting longer than this for a slot is answered 503")
    deidentify_on_ingest: bool = Field(
        False, description="de-identify every input (uploads, PACS pulls, SCP series, DICOM SEG "
        "corrections) before it is stored (DICOM: PS3.15 Basic Profile with Retain UIDs, PatientName/ID "
        "replaced by a stable keyed pseudonym; NIfTI: header free text cleared); the original identifiers go "
        "encrypted to an admin-only mapping (docs/security.md)")
    orphan_max_age_s: int = Field(
        3600, gt=0, description="the sweeper removes upload folders and case folders without a database row "
        "(left by a killed API) once they are this old, seconds")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        problems: list[str] = []
        if self.env == "production":
            if self.secret_key == DEFAULT_SECRET or len(self.secret_key) < 16:
                problems.append("DUALSEG_SECRET_KEY must be set to a random value of 16+ characters")
            if not self.auth_enabled:
                problems.append("DUALSEG_AUTH_ENABLED must be true in production")
            if self.resolved_database_url.startswith("sqlite"):
                problems.append("DUALSEG_DATABASE_URL must point to PostgreSQL in production")
        if not self.auth_enabled and self.host not in ("127.0.0.1", "localhost", "::1"):
            problems.append(
                f"refusing to listen on {self.host} with authentication off: "
                "set DUALSEG_AUTH_ENABLED=true or DUALSEG_HOST=127.0.0.1"
            )
        for name in ("job_lease_s", "training_lease_s"):
            if self.heartbeat_s > getattr(self, name) / 3:
                problems.append(f"DUALSEG_HEARTBEAT_S ({self.heartbeat_s:g}) must be at most a third of "
                                f"DUALSEG_{name.upper()} ({getattr(self, name)}) so that one late beat "
                                "does not lose a lease")
        if self.oidc_issuer and not (self.oidc_audience and (self.oidc_jwks_file or self.oidc_jwks_url)):
            problems.append("DUALSEG_OIDC_ISSUER needs DUALSEG_OIDC_AUDIENCE and DUALSEG_OIDC_JWKS_FILE "
                            "or DUALSEG_OIDC_JWKS_URL")
        if problems:
            raise ValueError("unsafe settings: " + "; ".join(problems))
        return self

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in self.cors_allowed_origins.split(",") if o.strip()]

    # Derived locations -------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return self.data_dir.resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_path / 'dualseg.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return self.data_path / "broker"

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_path / "artifacts").resolve()

    @property
    def resolved_model_dir(self) -> Path:
        return (self.model_dir or self.data_path / "models").resolve()

    @property
    def upload_tmp_dir(self) -> Path:
        return self.resolved_storage_dir / ".incoming"

    def ensure_dirs(self) -> None:
        """Create every local folder the embedded mode writes to."""
        for p in (self.data_path, self.resolved_storage_dir, self.resolved_model_dir, self.upload_tmp_dir):
            p.mkdir(parents=True, exist_ok=True)
        if self.resolved_broker_url.startswith("filesystem"):
            for sub in ("in", "processed"):
                (self.broker_dir / sub).mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment once)."""
    return Settings()
