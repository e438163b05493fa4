"""Arrow IPC shards: immutable files of rows ``id, space, time, radius, <metadata...>``.

Each shard holds one record batch, uncompressed, so that a memory-mapped read
hands out its ``space`` column as an ``(n, dim)`` float32 array without a copy.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import IndexCorruptError
from .fsutil import fsync_file, sha256_file
from .manifest import FileEntry
from .paths import index_file, own_dir

SHARD_DIR = "shards"
#: Columns every shard has; metadata columns may not use these names.
CORE_COLUMNS = ("id", "space", "time", "radius")
#: Columns an index built with safety bounds adds to every row (reserved names too).
SAFETY_COLUMNS = ("unsafe_score", "unsafe_label")
RESERVED_COLUMNS = CORE_COLUMNS + SAFETY_COLUMNS


def shard_schema(dim: int, metadata: pa.Schema | None = None) -> pa.Schema:
    """Arrow schema of a shard: the core columns, then the metadata columns."""
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("space", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("time", pa.float32(), nullable=False),
        pa.field("radius", pa.float32(), nullable=False),
    ]
    if metadata is not None:
        fields.extend(metadata)
    return pa.schema(fields)


def build_table(
    ids: np.ndarray,
    space: np.ndarray,
    time: np.ndarray,
    radius: np.ndarray,
    metadata: pa.Table | None,
    schema_metadata: dict[str, str],
) -> pa.Table:
    """One shard's table. ``space: (n, dim)`` float32; ``ids, time, radius: (n,)``."""
    n, dim = space.shape
    space_col = pa.FixedSizeListArray.from_arrays(pa.array(space.reshape(-1), pa.float32()), dim)
    cols = [pa.array(ids, pa.int64()), space_col, pa.array(time, pa.float32()), pa.array(radius, pa.float32())]
    schema = shard_schema(dim, metadata.schema if metadata is not None else None)
    if metadata is not None:
        cols.extend(metadata.columns)
    return pa.Table.from_arrays(cols, schema=schema.with_metadata(schema_metadata))


def write_shard(directory: Path, table: pa.Table, *, tag: str) -> FileEntry:
    """Write ``table`` as a new immutable shard under ``directory/shards``; fsync'd."""
    rel = f"{SHARD_DIR}/{tag}-{uuid.uuid4().hex[:12]}.arrow"
    path = own_dir(Path(directory), SHARD_DIR, create=True) / rel.split("/", 1)[1]
    batch = table.combine_chunks().to_batches(max_chunksize=max(1, table.num_rows))
    with pa.OSFile(str(path), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            for b in batch:
                writer.write_batch(b)
    fsync_file(path)
    return FileEntry(file=rel, rows=table.num_rows, bytes=os.path.getsize(path), sha256=sha256_file(path))


@dataclass(frozen=True)
class Shard:
    """A memory-mapped, read-only shard with zero-copy NumPy views of its core columns."""

    entry: FileEntry
    table: pa.Table
    ids: np.ndarray  # shape: (n,) int64
    space: np.ndarray  # shape: (n, dim) float32
    time: np.ndarray  # shape: (n,) float32
    radius: np.ndarray  # shape: (n,) float32

    @classmethod
    def open(cls, directory: Path, entry: FileEntry, dim: int) -> Shard:
        path = index_file(Path(directory), entry.file, "shard")
        try:
            source = pa.memory_map(str(path), "r")
            reader = pa.ipc.open_file(source)
            table = reader.read_all()
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowInvalid) as e:
            raise IndexCorruptError(f"shard {entry.file} is unreadable: {e}") from e
        if table.num_rows != entry.rows:
            raise IndexCorruptError(
                f"shard {entry.file} has {table.num_rows} rows, the manifest says {entry.rows}"
            )
        if reader.num_record_batches > 1:
            table = table.combine_chunks()  # only shards from foreign writers; costs a copy
        return cls(
            entry=entry,
            table=table,
            ids=_column(table, "id", np.int64),
            space=_space(table, dim),
            time=_column(table, "time", np.float32),
            radius=_column(table, "radius", np.float32),
        )

    def __len__(self) -> int:
        return self.entry.rows


def _column(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    col = table.column(name)
    if col.num_chunks == 0:
        return np.zeros(0, dtype=dtype)
    return col.chunk(0).to_numpy(zero_copy_only=True).astype(dtype, copy=False)


def _space(table: pa.Table, dim: int) -> np.ndarray:
    col = table.column("space")
    if col.num_chunks == 0:
        return np.zeros((0, dim), dtype=np.float32)
    chunk = col.chunk(0)
    flat = chunk.values.slice(chunk.offset * dim, len(chunk) * dim)
    return flat.to_numpy(zero_copy_only=True).reshape(len(chunk), dim)
