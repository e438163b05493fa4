"""Deletion files: which stored rows a snapshot no longer has (tombstones).

Shards are immutable, so a delete does not rewrite them: the snapshot's manifest
names one deletion file listing every deleted row (global row numbers of that
snapshot, sorted, int64). Rows are stable across commits because commits only
append shards. Each commit that deletes writes a new, complete file (old rows
plus new) and swaps it in with the manifest, so a crash leaves the previous
snapshot's file, and therefore its rows, untouched.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from ..errors import IndexCorruptError
from .arrays import read_arrays, write_arrays
from .fsutil import fsync_dir, fsync_file, sha256_file
from .manifest import FileEntry
from .paths import index_file, own_dir

DELETIONS_DIR = "deletions"


def write_deletions(directory: Path, rows: np.ndarray, *, tag: str) -> FileEntry:
    """Write the sorted deleted ``rows: (d,)`` int64 as a new deletion file; fsync'd."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    rel = f"{DELETIONS_DIR}/{tag}-{uuid.uuid4().hex[:12]}.rows"
    path = own_dir(Path(directory), DELETIONS_DIR, create=True) / rel.split("/", 1)[1]
    write_arrays(path, {"rows": rows}, {"count": int(len(rows))})
    fsync_file(path)
    fsync_dir(path.parent)
    return FileEntry(file=rel, rows=int(len(rows)), bytes=path.stat().st_size, sha256=sha256_file(path))


def read_deletions(directory: Path, entry: FileEntry, stored_rows: int) -> np.ndarray:
    """Deleted-row mask ``(stored_rows,)`` bool of the file ``entry`` names."""
    arrays, _ = read_arrays(index_file(Path(directory), entry.file, "deletion file"))
    rows = arrays.get("rows")
    if rows is None or rows.dtype != np.int64 or rows.ndim != 1 or len(rows) != entry.rows:
        raise IndexCorruptError(f"deletion file {entry.file}: expected {entry.rows} rows")
    if len(rows) and (rows[0] < 0 or rows[-1] >= stored_rows or (np.diff(rows) <= 0).any()):
        raise IndexCorruptError(f"deletion file {entry.file}: rows out of range or unsorted")
    mask = np.zeros(stored_rows, dtype=np.bool_)
    mask[rows] = True
    return mask
