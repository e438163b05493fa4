"""Durable file operations: fsync'd writes, atomic replace, checksums, the writer lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IndexCorruptError, IndexLockedError

if TYPE_CHECKING:
    import pyarrow as pa

_CHUNK = 8 << 20


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new or renamed files) to stable storage."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write an Arrow ``table`` as Parquet or CSV (by ``path``'s suffix), atomically and fsync'd."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sink)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class WriterLock:
    """An exclusive advisory lock on ``DIR/.writer.lock``; released when the process dies."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".writer.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:  # O_NOFOLLOW: a planted symlink must not create or lock a file outside the index
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            raise IndexCorruptError(f"{self.path} cannot be used as the lock file ({e.strerror}): "
                                    f"it must be a regular file, not a symlink") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IndexCorruptError(f"{self.path} is not a regular file: it cannot be the lock file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexLockedError(
                f"index {self.path.parent} is open for writing by another process or handle"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
