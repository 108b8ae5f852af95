"""De-identification on ingest (``DUALSEG_DEIDENTIFY_ON_INGEST``) and the private identity mapping.

The policy itself is ``backend.imaging.deid``. Here: the keys, derived by HKDF-SHA256 from
``DUALSEG_SECRET_KEY`` (one for pseudonyms, one for the mapping), the rewriting of staged files before a
case stores them, and the ``case_identities`` rows that keep the original identifiers encrypted with
Fernet. Nothing here logs an identifier or puts one in an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import BadInput, Conflict, NotFound
from backend.imaging.deid import deidentify, identity_of, pseudonym_source, scrub_nifti
from backend.imaging.volume import ImageVolume
from backend.tables import CaseIdentity

KDF_SALT = b"dualseg de-identification v1"
PSEUDONYM_PREFIX = "DSG-"


@dataclass(frozen=True)
class Identity:
    """A de-identified series: its pseudonym and the original identifiers (never logged)."""

    pseudonym: str
    identifiers: dict[str, str]

    def __repr__(self) -> str:
        return f"Identity(pseudonym={self.pseudonym!r}, identifiers=<{len(self.identifiers)} hidden>)"


def derive_key(secret: str, purpose: bytes) -> bytes:
    """32 bytes for one ``purpose``, derived from the server secret (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=KDF_SALT, info=purpose).derive(secret.encode())


def pseudonym_for(secret: str, ds: Dataset) -> str:
    """``DSG-`` + 16 base32 characters of HMAC-SHA256(PatientID): the same patient always gets the
    same pseudonym under the same secret."""
    key = derive_key(secret, b"pseudonym")
    digest = hmac.new(key, pseudonym_source(ds).encode(), hashlib.sha256).digest()
    return PSEUDONYM_PREFIX + base64.b32encode(digest[:10]).decode()


def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret, b"identity mapping")))


def deidentify_file(path: Path, pseudonym: str) -> None:
    """Rewrite the DICOM file at ``path`` de-identified."""
    try:
        ds = pydicom.dcmread(path)
        deidentify(ds, pseudonym)
        ds.save_as(path, enforce_file_format=True)
    except Exception as exc:  # a file we cannot rewrite is refused, never stored as is
        raise BadInput(f"an uploaded DICOM file could not be de-identified ({type(exc).__name__})") from exc


def deidentify_staged(settings: Settings, volume: ImageVolume, files: list[Path]) -> Identity | None:
    """De-identify the files a case is about to store, in place. DICOM: returns the series' identity
    (from its first instance). NIfTI: clears the header's free text; returns None (no identifiers)."""
    if volume.dicom is None:
        try:
            scrub_nifti(files[0])
        except Exception as exc:  # refused rather than stored with its header text
            raise BadInput(f"the NIfTI header could not be cleared ({type(exc).__name__})") from exc
        return None
    first = volume.dicom.datasets[0]
    identity = Identity(pseudonym_for(settings.secret_key, first), identity_of(first))
    for path in files:
        deidentify_file(path, identity.pseudonym)
    return identity


def deidentify_correction(settings: Settings, case_meta: dict[str, object], path: Path) -> None:
    """A DICOM SEG correction carries the patient module too: give it the case's pseudonym."""
    pseudonym = case_meta.get("pseudonym")
    if not isinstance(pseudonym, str):
        pseudonym = pseudonym_for(settings.secret_key, pydicom.dcmread(path, stop_before_pixels=True))
    deidentify_file(path, pseudonym)


def mapping_row(settings: Settings, case_id: str, identity: Identity) -> CaseIdentity:
    """The private mapping of a case: pseudonym in clear, the original identifiers encrypted."""
    token = _fernet(settings.secret_key).encrypt(json.dumps(identity.identifiers).encode())
    return CaseIdentity(case_id=case_id, pseudonym=identity.pseudonym, identifiers=token.decode())


def read_identity(session: Session, settings: Settings, case_id: str) -> tuple[CaseIdentity, dict[str, str]]:
    """The mapping row of a case and its decrypted original identifiers."""
    row = session.get(CaseIdentity, case_id)
    if row is None:
        raise NotFound(
            f"case {case_id} has no identity mapping (it does not exist, was not de-identified, "
            "or was a NIfTI upload)"
        )
    try:
        plain = _fernet(settings.secret_key).decrypt(row.identifiers.encode())
    except InvalidToken as exc:
        raise Conflict(
            "the identity mapping of this case cannot be decrypted with the current "
            "DUALSEG_SECRET_KEY (it was written under another secret)"
        ) from exc
    return row, dict(json.loads(plain))
