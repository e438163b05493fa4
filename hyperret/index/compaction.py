"""Compaction: shards rewritten without deleted rows, small shards merged, the segments made one.

Like a commit it only adds files and then swaps the manifest in, so a crash at
any instant leaves the previous version whole, and searches read the previous
snapshot until the swap. The previous version's files go when versions are
cleaned up (``keep_versions`` after each commit, or :meth:`Index.cleanup`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..search.candidates import CandidateStage
from ..search.presets import Preset
from ..storage.fsutil import fsync_dir
from ..storage.manifest import FileEntry
from ..storage.shards import SHARD_DIR, Shard, write_shard
from ..storage.shardset import ShardSet
from .base import Progress

#: Bytes of vectors in a shard compaction writes (as many as a spill of pending rows).
SHARD_BYTES = 256 << 20


def compaction_shard_rows(dim: int) -> int:
    """Rows per shard compaction writes: ``SHARD_BYTES`` of ``dim``-float32 vectors, at least 1,024."""
    return max(1024, SHARD_BYTES // (4 * dim))


@dataclass
class CompactionPlan:
    """Which shards stay as they are and which rows are rewritten, in row order."""

    #: Per output shard, in order: an old shard kept as is (its index), or the rows
    #: ``(shard index, local rows)`` merged into one new shard.
    outputs: list[int | list[tuple[int, np.ndarray]]] = field(default_factory=list)
    dropped: int = 0  # deleted rows left out

    @property
    def rewrites(self) -> bool:
        return any(not isinstance(o, int) for o in self.outputs)


def plan_compaction(shards: list[Shard], deleted: np.ndarray | None, shard_rows: int) -> CompactionPlan:
    """Keep every shard with no deleted row and at least ``shard_rows / 2`` rows; merge the rest.

    ``deleted: (rows,)`` bool or ``None``. Consecutive rewritten rows are packed
    into new shards of at most ``shard_rows`` rows; the row order is kept.
    """
    plan = CompactionPlan()
    group: list[tuple[int, np.ndarray]] = []
    in_group = 0
    start = 0
    clean: set[int] = set()  # shards without a deleted row

    def flush() -> None:
        nonlocal group, in_group
        if len(group) == 1 and group[0][0] in clean and len(group[0][1]) == len(shards[group[0][0]].ids):
            plan.outputs.append(group[0][0])  # one whole, clean shard: rewriting it would change nothing
        elif group:
            plan.outputs.append(group)
        group, in_group = [], 0

    for i, s in enumerate(shards):
        n = len(s.ids)
        gone = deleted[start : start + n] if deleted is not None else np.zeros(n, dtype=bool)
        start += n
        dead = int(gone.sum())
        if dead == 0:
            clean.add(i)
            if n >= shard_rows // 2:
                flush()
                plan.outputs.append(i)
                continue
        plan.dropped += dead
        live = np.flatnonzero(~gone)
        while len(live):
            take = min(len(live), shard_rows - in_group)
            group.append((i, live[:take]))
            in_group += take
            live = live[take:]
            if in_group >= shard_rows:
                flush()
    flush()
    return plan


def write_compacted(path: Path, shards: list[Shard], plan: CompactionPlan, tag: str) -> list[Shard]:
    """The shards of the compacted snapshot: kept ones as they are, merged ones written (fsync'd)."""
    out: list[Shard] = []
    dim = shards[0].space.shape[1] if shards else 0
    wrote = False
    for o in plan.outputs:
        if isinstance(o, int):
            out.append(shards[o])
            continue
        parts = [shards[i].table.take(pa.array(rows)) for i, rows in o]
        table = pa.concat_tables(parts, promote_options="permissive").combine_chunks()
        table = table.replace_schema_metadata(shards[o[0][0]].table.schema.metadata)
        entry: FileEntry = write_shard(path, table, tag=tag)
        out.append(Shard.open(path, entry, dim))
        wrote = True
    if wrote:
        fsync_dir(path / SHARD_DIR)
    return out


def merged_structure(preset: Preset, first: CandidateStage | None, shards: ShardSet, curv: float,
                     rows_changed: bool, progress: Progress | None) -> CandidateStage:
    """One structure over every row of ``shards``.

    ``first``: the old first segment. Where no row changed its number, it grows
    with the rows after it (only those are indexed); otherwise the structure is
    built anew.
    """
    if rows_changed or first is None:
        return CandidateStage.build(preset, shards.arrays, shards.dim, curv, progress)
    head, tail = shards.window(0, first.rows), shards.window(first.rows, shards.rows - first.rows)
    return first.grown(head.arrays, tail.arrays, progress)
