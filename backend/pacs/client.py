"""The DICOMweb client of the PACS: QIDO-RS / WADO-RS / STOW-RS roots and auth from Settings.

Built on ``dicomweb-client``. Network and HTTP failures become domain errors so that the API answers
4xx/5xx with a message and the worker can tell transient failures (``PacsUnavailable``: retry later)
from permanent ones (``PacsError``, ``NotFound``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydicom.dataset import Dataset

from backend.config import Settings
from backend.errors import Conflict, DomainError, NotFound, TooLarge

log = logging.getLogger("dualseg.pacs")

T = TypeVar("T")
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
RETRY_ATTEMPTS, RETRY_WAIT_MS = 3, 500


class PacsError(DomainError):
    """The PACS answered, but with an error that retrying will not fix."""

    status = 502
    code = "pacs_error"


class PacsUnavailable(PacsError):
    """The PACS could not be reached or answered 5xx / timed out: transient, retry later."""

    status = 503
    code = "pacs_unavailable"


class PacsNotConfigured(Conflict):
    code = "pacs_not_configured"


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, at most 64 characters); they also name ledger files."""
    if not isinstance(uid, str) or len(uid) > 64 or not UID_RE.match(uid):
        raise PacsError(f"invalid {what}: {uid!r}")
    return uid


@dataclass(frozen=True)
class DicomwebRoots:
    qido: str
    wado: str
    stow: str


def dicomweb_roots(settings: Settings) -> DicomwebRoots | None:
    """The three service roots, or None when no DICOMweb PACS is configured."""
    base = (settings.pacs_dicomweb_url or "").rstrip("/") or None
    qido = (settings.pacs_qido_url or "").rstrip("/") or base
    wado = (settings.pacs_wado_url or "").rstrip("/") or base
    stow = (settings.pacs_stow_url or "").rstrip("/") or base
    if not (qido and wado and stow):
        return None
    return DicomwebRoots(qido=qido, wado=wado, stow=stow)


def dicomweb_configured(settings: Settings) -> bool:
    return dicomweb_roots(settings) is not None


def make_session(settings: Settings) -> requests.Session:
    """A requests session with the configured auth and TLS verification."""
    session = requests.Session()
    if settings.pacs_auth == "basic":
        if not settings.pacs_username or settings.pacs_password is None:
            raise PacsNotConfigured("DUALSEG_PACS_AUTH=basic needs DUALSEG_PACS_USERNAME and "
                                    "DUALSEG_PACS_PASSWORD")
        session.auth = (settings.pacs_username, settings.pacs_password)
    elif settings.pacs_auth == "bearer":
        if not settings.pacs_token:
            raise PacsNotConfigured("DUALSEG_PACS_AUTH=bearer needs DUALSEG_PACS_TOKEN")
        session.headers["Authorization"] = f"Bearer {settings.pacs_token}"
    session.verify = str(settings.pacs_ca_bundle) if settings.pacs_ca_bundle else settings.pacs_verify_tls
    return session


def _first(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None = None


class PacsClient:
    """One PACS reached by DICOMweb. Create per task/request (holds an HTTP session)."""

    def __init__(self, settings: Settings) -> None:
        from dicomweb_client.api import DICOMwebClient

        roots = dicomweb_roots(settings)
        if roots is None:
            raise PacsNotConfigured("no DICOMweb PACS is configured: set DUALSEG_PACS_DICOMWEB_URL "
                                    "(or the QIDO/WADO/STOW roots), see docs/pacs.md")
        self.roots = roots
        self.session = make_session(settings)
        clients: dict[str, Any] = {}
        for root in {roots.qido, roots.wado, roots.stow}:
            client = DICOMwebClient(url=root, session=self.session, timeout=settings.pacs_timeout_s)
            # a few quick retries (connection errors, 408/429/503/504); the tasks retry with back-off too
            client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS,
                                         wait_exponential_multiplier=RETRY_WAIT_MS)
            clients[root] = client
        self._qido, self._wado, self._stow = clients[roots.qido], clients[roots.wado], clients[roots.stow]

    def close(self) -> None:
        self.session.close()

    # error translation -------------------------------------------------------------------------
    @staticmethod
    def _call(what: str, fn: Callable[[], T]) -> T:
        with translate_errors(what):
            return fn()

    # QIDO-RS -----------------------------------------------------------------------------------
    def ping(self) -> int:
        """QIDO-RS studies search with limit 1; returns how many studies came back (0 or 1)."""
        return len(self._call("QIDO-RS studies search", lambda: self._qido.search_for_studies(limit=1)))

    def search_series(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        filters = {"Modality": modality} if modality else None
        return self._call("QIDO-RS series search", lambda: self._qido.search_for_series(
            study_instance_uid=check_uid(study_uid, "study UID"), search_filters=filters, get_remaining=True))

    def search_instances(self, study_uid: str, series_uid: str) -> list[InstanceRef]:
        items = self._call("QIDO-RS instance search", lambda: self._qido.search_for_instances(
            study_instance_uid=check_uid(study_uid, "study UID"),
            series_instance_uid=check_uid(series_uid, "series UID"), get_remaining=True))
        return [ref for ref in (_instance_ref(i, study_uid, series_uid) for i in items) if ref is not None]

    def find_instance(self, sop_uid: str, study_uid: str | None = None,
                      series_uid: str | None = None) -> InstanceRef:
        """Locate an instance by its SOP Instance UID (study/series narrow the QIDO search)."""
        check_uid(sop_uid, "SOP instance UID")
        items = self._call("QIDO-RS instance search", lambda: self._qido.search_for_instances(
            study_instance_uid=check_uid(study_uid, "study UID") if study_uid else None,
            series_instance_uid=check_uid(series_uid, "series UID") if series_uid and study_uid else None,
            search_filters={"SOPInstanceUID": sop_uid}))
        for item in items:
            ref = _instance_ref(item, study_uid, series_uid)
            if ref is not None and ref.sop_uid == sop_uid:
                return ref
        raise NotFound(f"the PACS has no instance {sop_uid}")

    # WADO-RS -----------------------------------------------------------------------------------
    def retrieve_instance(self, ref: InstanceRef) -> Dataset:
        return self._call("WADO-RS instance retrieval", lambda: self._wado.retrieve_instance(
            ref.study_uid, ref.series_uid, ref.sop_uid))

    def download_series(self, study_uid: str, series_uid: str, dest: Path, max_files: int,
                        max_bytes: int) -> list[Path]:
        """Write every instance of the series to ``dest`` as a DICOM file; enforce the upload limits."""
        check_uid(study_uid, "study UID")
        check_uid(series_uid, "series UID")
        dest.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        total = 0

        def run() -> None:
            nonlocal total
            iterator: Iterator[Dataset] = self._wado.iter_series(study_uid, series_uid)
            for n, ds in enumerate(iterator):
                if n >= max_files:
                    raise TooLarge(f"the series has more than {max_files} instances "
                                   "(DUALSEG_MAX_UPLOAD_FILES)")
                path = dest / f"{n:06d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                total += path.stat().st_size
                if total > max_bytes:
                    raise TooLarge(f"the series exceeds {max_bytes} bytes (DUALSEG_MAX_UPLOAD_BYTES)")
                paths.append(path)

        self._call("WADO-RS series retrieval", run)
        if not paths:
            raise NotFound(f"the PACS returned no instance of series {series_uid} in study {study_uid}")
        return paths

    # STOW-RS -----------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset], study_uid: str) -> list[str]:
        """STOW-RS into the study; returns the stored SOP Instance UIDs; raises if any was refused."""
        check_uid(study_uid, "study UID")
        response = self._call("STOW-RS", lambda: self._stow.store_instances(list(datasets), study_uid))
        failed = [str(item.get("ReferencedSOPInstanceUID", "?")) for item in
                  (response.get("FailedSOPSequence") or [])] if response is not None else []
        if failed:
            raise PacsError(f"the PACS refused {len(failed)} instance(s) in STOW-RS: {', '.join(failed)}")
        stored = [str(item.ReferencedSOPInstanceUID) for item in
                  (response.get("ReferencedSOPSequence") or [])] if response is not None else []
        return stored or [str(ds.SOPInstanceUID) for ds in datasets]


def _instance_ref(item: dict[str, Any], study_uid: str | None, series_uid: str | None) -> InstanceRef | None:
    sop = _first(item, "00080018")
    study = _first(item, "0020000D") or study_uid
    series = _first(item, "0020000E") or series_uid
    if not (sop and study and series):
        return None
    return InstanceRef(study_uid=study, series_uid=series, sop_uid=sop,
                       sop_class_uid=_first(item, "00080016"))


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """requests/HTTP errors → PacsUnavailable (transient), NotFound (404) or PacsError."""
    try:
        yield
    except DomainError:
        raise
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 404:
            raise NotFound(f"{what}: the PACS answered 404 (not found)") from exc
        if status in (401, 403):
            raise PacsError(f"{what}: the PACS refused our credentials (HTTP {status}); "
                            "check DUALSEG_PACS_AUTH and its user/password/token") from exc
        if status >= 500 or status in (408, 429):
            raise PacsUnavailable(f"{what}: the PACS answered HTTP {status}") from exc
        raise PacsError(f"{what}: the PACS answered HTTP {status}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PacsUnavailable(f"{what}: the PACS is not reachable ({type(exc).__name__})") from exc
    except requests.RequestException as exc:
        raise PacsError(f"{what}: {type(exc).__name__}: {exc}") from exc
