"""Upload staging: stream request files to a private folder, unpack zips safely, classify the input.

Nothing here touches the database: a case only appears once `cases.create_case` has validated the
staged files completely (DESIGN §7: "a case appears only when its files are complete and valid").
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from backend.errors import BadInput, TooLarge

CHUNK = 1024 * 1024
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_ZIP_RATIO = 200  # uncompressed / compressed, per entry and in total


@dataclass
class StagedUpload:
    """Files of one upload, on disk in ``folder`` (which the caller deletes)."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    total_bytes: int = 0
    sha256: str = ""
    original_name: str | None = None
    kind: Literal["nifti", "dicom"] = "dicom"


def safe_name(name: str | None, index: int) -> str:
    """A file name without any folder part, control characters or leading dots."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    cleaned = "".join(c for c in base if c.isprintable() and c not in "/\0").lstrip(".")
    return cleaned[:200] or f"file{index:05d}"


def _is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def copy_stream(src: BinaryIO, dest: Path, budget: int, hasher: hashlib._Hash) -> int:
    """Copy ``src`` to ``dest`` in chunks; raise TooLarge past ``budget`` bytes. Returns bytes copied."""
    written = 0
    with open(dest, "wb") as out:
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            written += len(block)
            if written > budget:
                raise TooLarge(f"the upload exceeds the limit of {budget} bytes")
            hasher.update(block)
            out.write(block)
    return written


def extract_zip(path: Path, dest: Path, max_files: int, max_bytes: int) -> list[Path]:
    """Unpack a zip of a series/study with the usual guards: entry count, total size, compression
    ratio (zip bombs), absolute paths, '..' traversal, symlinks and device files. Returns the files."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInput(f"{path.name} is not a readable zip archive ({exc})") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > max_files:
            raise TooLarge(f"the zip holds {len(infos)} files; the limit is {max_files}")
        total = sum(i.file_size for i in infos)
        compressed = sum(max(i.compress_size, 1) for i in infos)
        if total > max_bytes:
            raise TooLarge(f"the zip unpacks to {total} bytes; the limit is {max_bytes}")
        if total > 10 * CHUNK and total / compressed > MAX_ZIP_RATIO:
            raise BadInput("the zip's compression ratio is implausibly high (zip bomb?); refused")
        out: list[Path] = []
        for n, info in enumerate(infos):
            pure = PurePosixPath(info.filename.replace("\\", "/"))
            if pure.is_absolute() or ".." in pure.parts or info.filename.startswith("/"):
                raise BadInput(f"the zip contains an unsafe path: {info.filename!r}")
            mode = (info.external_attr >> 16) & 0xFFFF
            if mode and (stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or mode & 0o170000 == 0)):
                raise BadInput(f"the zip contains a link or special file: {info.filename!r}")
            if pure.name.startswith(".") or pure.parts[0] == "__MACOSX" or pure.name in ("DICOMDIR",):
                continue
            target = dest / f"{n:06d}_{safe_name(pure.name, n)}"
            written = 0
            with zf.open(info) as fin, open(target, "wb") as fout:
                while True:
                    block = fin.read(CHUNK)
                    if not block:
                        break
                    written += len(block)
                    if written > info.file_size or written > max_bytes:
                        raise BadInput(f"zip entry {info.filename!r} is larger than its header says")
                    fout.write(block)
            out.append(target)
    return out


def classify(files: list[Path]) -> Literal["nifti", "dicom"]:
    """NIfTI when exactly one .nii/.nii.gz file is given; DICOM otherwise (validated later)."""
    niftis = [f for f in files if _is_nifti_name(f.name)]
    if niftis:
        if len(files) != 1:
            raise BadInput("send one NIfTI file per case (got "
                           f"{len(niftis)} NIfTI file(s) among {len(files)} file(s))")
        return "nifti"
    return "dicom"


def stage_files(
    items: list[tuple[str | None, BinaryIO]], folder: Path, max_bytes: int, max_files: int
) -> StagedUpload:
    """Write the uploaded parts to ``folder``; unpack zips; decide NIfTI vs DICOM."""
    if not items:
        raise BadInput("no file was uploaded: send one or more parts named 'files'")
    if len(items) > max_files:
        raise TooLarge(f"{len(items)} files were sent; the limit is {max_files}")
    raw = folder / "raw"
    raw.mkdir(parents=True)
    hasher = hashlib.sha256()
    staged = StagedUpload(folder=folder)
    budget = max_bytes
    saved: list[Path] = []
    for n, (name, stream) in enumerate(items):
        dest = raw / f"{n:06d}_{safe_name(name, n)}"
        written = copy_stream(stream, dest, budget, hasher)
        budget -= written
        staged.total_bytes += written
        if written == 0:
            raise BadInput(f"file {safe_name(name, n)!r} is empty")
        saved.append(dest)
    staged.sha256 = hasher.hexdigest()
    staged.original_name = safe_name(items[0][0], 0) if len(items) == 1 else None
    files: list[Path] = []
    for path in saved:
        if zipfile.is_zipfile(path) and not _is_nifti_name(path.name):
            unpacked = folder / f"zip_{path.stem}"
            unpacked.mkdir()
            files.extend(extract_zip(path, unpacked, max_files, max_bytes))
            path.unlink()
        else:
            files.append(path)
    if not files:
        raise BadInput("the upload holds no image files")
    staged.files = files
    staged.kind = classify(files)
    return staged


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
