"""Indexing embedding tables on Ray: workers read, check and write shards; the driver commits once.

The source is cut into parts (the files of a folder, or runs of a Parquet file's row
groups). A Ray task per part opens the index read-only, checks its rows as
:meth:`hyperret.Index.add` does (:meth:`~hyperret.Index.shard_rows`) and writes one
shard into the index's ``shards/`` (a shared filesystem on a cluster). The driver
adopts every shard (sizes, rows, ids and types checked again) and commits once:
one manifest swap. A failed or killed job leaves the previous version whole; the
shards it wrote are unreferenced and collected as garbage. Ray retries a task whose
worker died; a task that fails on the data stops the job with that error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InvalidInputError
from ..storage.folders import FolderSource
from ..storage.manifest import FileEntry
from ..storage.shards import write_shard
from ..storage.sources import ID, Source
from . import remote

#: parts per Ray CPU for a single Parquet file (cut along its row groups)
PARTS_PER_CPU = 2


def _index_part(index: str, file: str, row_groups: list[int] | None, id_start: int | None, batch_rows: int,
                tag: str, kill_once: str | None = None) -> FileEntry:
    """A Ray task: rows of ``file`` (``row_groups`` of it) as one shard of the index at ``index``.

    ``kill_once`` (tests): see :func:`hyperret.distributed.remote.die_once`.
    """
    from ..index import Index

    remote.die_once(kill_once)
    ix = Index.open(index)
    tables = []
    start = id_start
    for b in Source(file, batch_rows=batch_rows).batches(row_groups=row_groups):
        n = len(b.vectors)
        if b.ids is not None:
            ids = b.ids
        else:
            assert start is not None  # the driver numbers parts without an id column
            ids, start = np.arange(start, start + n, dtype=np.int64), start + n
        tables.append(ix.shard_rows(b.vectors, ids, b.metadata))
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return write_shard(Path(index), table, tag=tag)


def parts_of(src: Any) -> list[tuple[str, list[int] | None, int]]:
    """``(file, row groups or None, rows)`` per part of a folder of tables or a Parquet file."""
    import ray

    if isinstance(src, FolderSource):
        if any(s.rows is None for s in src.sources):
            raise InvalidInputError("--ray reads Parquet or Arrow files (not Arrow streams)")
        return [(str(s.path), None, int(s.rows or 0)) for s in src.sources]
    if isinstance(src, Source) and src.kind == "parquet":
        groups = src.row_groups
        n = max(1, min(len(groups), int(ray.cluster_resources().get("CPU", 1)) * PARTS_PER_CPU))
        cuts = np.array_split(np.arange(len(groups)), n)
        return [(str(src.path), [int(g) for g in c], int(sum(groups[g] for g in c))) for c in cuts if len(c)]
    raise InvalidInputError("--ray indexes a Parquet file or a folder of Parquet/Arrow files")


def index_on_ray(ix: Any, src: Any, *, ray_address: str | None = None, batch_rows: int = 65_536,
                 progress: Any = None, kill_once: str | None = None) -> int:
    """Write ``src``'s rows as shards of the writable ``ix`` from Ray tasks and adopt them; returns the rows.

    The caller commits. Rows without ids are numbered from the index's counter, part by part.
    ``kill_once`` (tests): the first part's first worker dies (see :func:`_index_part`).
    """
    import ray

    remote.init(ray_address)
    parts = parts_of(src)
    has_ids = ID in (src.sources[0].schema.names if isinstance(src, FolderSource) else src.schema.names)
    task = ray.remote(num_cpus=1)(_index_part)
    path = str(Path(ix.path).resolve())
    start = ix.manifest.next_id
    pending, rows_of, file_of = [], {}, {}
    for n, (file, groups, rows) in enumerate(parts):
        ref = task.remote(path, file, groups, None if has_ids else start, batch_rows,
                          f"v{ix.version + 1:06d}-ray{n:05d}", kill_once if n == 0 else None)  # type: ignore[call-arg]
        pending.append(ref)
        rows_of[ref], file_of[ref] = rows, file
        start += rows
    entries: dict[Any, FileEntry] = {}
    waiting = list(pending)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        entries[done[0]] = remote.get(done[0], where=f"{file_of[done[0]]}: ")
        if progress is not None:
            progress(rows_of[done[0]])
    return int(ix.adopt_shards([entries[r] for r in pending]))  # in part order: rows keep the source's order
