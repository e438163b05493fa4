"""``hyperret export``: an index's live rows back out as one Parquet table (ids, vectors, metadata).

The table is what ``hyperret index`` reads: ``id`` (int64), ``embedding``
(fixed-size list of float32: the space components, unit vectors for a cosine index)
and every metadata column, in row order, deleted rows left out. The schema
metadata records ``hyperret.curv`` and ``hyperret.geometry``, so re-indexing the
file needs no flags. Written to a temporary file beside ``out`` and renamed into
place when complete: a failed export leaves nothing half-written, and an existing
file is replaced only when asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InvalidInputError
from ..storage.snapshot import Snapshot
from ..storage.sources import CURV_KEY, GEOMETRY_KEY

#: rows per written row group
ROW_GROUP = 65_536


def export_parquet(snap: Snapshot, out: str | Path, *, force: bool = False, columns: list[str] | None = None,
                   progress: Any = None) -> dict[str, Any]:
    """Write the live rows of ``snap`` to ``out`` (Parquet); returns ``{"path", "rows", "columns"}``.

    ``columns``: the metadata columns to write (default: all). ``progress(n)`` is
    called with the rows just written.
    """
    out = Path(out)
    if out.exists() and not force:
        raise InvalidInputError(f"{out} exists (--force replaces it)")
    if out.is_dir():
        raise InvalidInputError(f"{out} is a directory, not a file to write")
    m = snap.manifest
    names = list(m.metadata_columns) if columns is None else list(columns)
    unknown = [c for c in names if c not in m.metadata_columns]
    if unknown:
        raise InvalidInputError(f"unknown metadata column(s): {', '.join(unknown)} "
                                f"(the index has: {', '.join(m.metadata_columns) or 'none'})")
    dim = m.dim
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("embedding", pa.list_(pa.float32(), dim))]
    fields += [pa.field(c, snap.column_type(c)) for c in names]
    meta = {CURV_KEY: repr(float(m.curv)).encode(), GEOMETRY_KEY: m.geometry.encode()}
    schema = pa.schema(fields, metadata=meta)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            start = 0
            for shard in snap.shards:
                n = len(shard)
                keep = np.ones(n, bool) if snap.deleted is None else ~snap.deleted[start : start + n]
                start += n
                for s in range(0, n, ROW_GROUP):
                    rows = np.flatnonzero(keep[s : s + ROW_GROUP]) + s
                    if not len(rows):
                        continue
                    t = shard.table.take(pa.array(rows))
                    cols = [t.column("id"), pa.FixedSizeListArray.from_arrays(
                        pa.array(np.ascontiguousarray(shard.space[rows]).ravel()), dim)]
                    cols += [t.column(c).cast(schema.field(c).type) if c in t.column_names
                             else pa.nulls(len(rows), schema.field(c).type) for c in names]
                    w.write_table(pa.table(cols, schema=schema))
                    written += len(rows)
                    if progress is not None:
                        progress(len(rows))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out), "rows": written, "columns": ["id", "embedding", *names]}
