"""Artifact store on a local folder (a shared volume in production). Writes are atomic: a temporary
file in the same folder, fsync, then rename — a crash never leaves a half-written artifact."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class ArtifactStore:
    """Keys are relative POSIX paths such as ``cases/<id>/image.nii.gz``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*pure.parts)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    @contextmanager
    def writer(self, key: str) -> Iterator[Path]:
        """Yield a temporary path to write; on success it atomically becomes ``key``."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Keep the final suffixes: writers such as nibabel choose the format from the name.
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix="".join(final.suffixes), dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> Path:
        with self.writer(key) as tmp:
            tmp.write_bytes(data)
        return self.path(key)

    def put_file(self, key: str, src: Path, move: bool = False) -> Path:
        if move:
            final = self.path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, final)
            return final
        with self.writer(key) as tmp:
            shutil.copyfile(src, tmp)
        return self.path(key)

    def write_with(self, key: str, fn: Callable[[Path], None]) -> Path:
        """Call ``fn(tmp_path)`` to produce the file, then publish it atomically."""
        with self.writer(key) as tmp:
            fn(tmp)
        return self.path(key)

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    def tmp_dir(self) -> Path:
        d = self.root / ".incoming"
        d.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="upload-", dir=d))
