"""The candidate stage of a snapshot: one structure per segment of rows, their candidates merged.

A commit indexes only the rows it adds (a new segment, or a bounded tail
segment grown on a copy); compaction rebuilds one segment over every row.
A query asks every segment and keeps the ``kc`` candidates nearest in the exact
distance, so callers see one stage proposing ``(m, kc)`` rows whatever the
number of segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..storage.shardset import ShardSet
from .candidates import CandidateStage
from .presets import Preset
from .rerank import rerank

#: Segments after the first are flat scans only below this many rows (or the preset's
#: ``min_rows``, if smaller): a small index is exact, but a small tail of a large one
#: gets the preset's structure early, so growing it never means one large rebuild.
TAIL_MIN_ROWS = 1024


def tail_min_rows(preset: Preset) -> int:
    """The ``min_rows`` of a segment that is not the first."""
    return min(preset.min_rows, TAIL_MIN_ROWS)


@dataclass
class Segment:
    """A structure over the stored rows ``start .. start + rows`` (its node ``i`` is row ``start + i``)."""

    start: int
    stage: CandidateStage

    @property
    def rows(self) -> int:
        return self.stage.rows

    @property
    def end(self) -> int:
        return self.start + self.rows


class Segments:
    """Every segment of a snapshot, searched as one candidate stage over the global row numbers."""

    def __init__(self, stages: Sequence[CandidateStage], shards: ShardSet, curv: float):
        self.parts: list[Segment] = []
        start = 0
        for st in stages:
            self.parts.append(Segment(start, st))
            start += st.rows
        if start != shards.rows:
            raise ValueError(f"segments cover {start} rows, the shards hold {shards.rows}")
        self.shards = shards
        self.curv = curv
        self._windows = [shards.window(p.start, p.rows) for p in self.parts]

    # ------------------------------------------------------------- summary
    @property
    def preset(self) -> Preset:
        return self.parts[0].stage.preset

    @property
    def rows(self) -> int:
        return self.shards.rows

    @property
    def factory(self) -> str:
        """The structure of the largest segment (what most rows are searched through)."""
        return max(self.parts, key=lambda p: p.rows).stage.factory

    @property
    def is_exhaustive(self) -> bool:
        """True when every segment is a flat scan (candidates exact up to rounding)."""
        return all(p.stage.is_exhaustive for p in self.parts)

    @property
    def navigates_lorentz(self) -> bool:
        return any(p.stage.navigates_lorentz for p in self.parts)

    # --------------------------------------------------------------- search
    def search(self, queries: np.ndarray, kc: int, shards: ShardSet | None = None, *, ef: int | None = None,
               nprobe: int | None = None, skip: np.ndarray | None = None,
               evals: np.ndarray | None = None) -> np.ndarray:
        """Candidate rows ``(m, kc)`` int64 for ``queries: (m, dim)``; ``-1`` where fewer exist.

        ``ef`` / ``nprobe``: the search knob of each segment (default the preset's);
        ``skip: (rows,)`` nonzero rows are never proposed; ``evals: (m,)`` receives
        the graph walks' distance evaluations (summed over segments).
        """
        if len(self.parts) == 1:
            return self.parts[0].stage.search(queries, kc, self.shards, ef=ef, nprobe=nprobe, skip=skip,
                                              evals=evals)
        cols = []
        for p, w in self._pairs():
            part_evals = None if evals is None else np.zeros(len(queries), dtype=np.int64)
            local = p.stage.search(queries, min(kc, p.rows), w, ef=ef, nprobe=nprobe,
                                   skip=None if skip is None else skip[p.start : p.end], evals=part_evals)
            if evals is not None and part_evals is not None:
                evals += part_evals
            cols.append(self._global(p, local))
        return self._merge(queries, cols, kc)

    @property
    def knob(self) -> str | None:
        """``ef``, ``nprobe`` or None: the search knob of the largest segment."""
        return max(self.parts, key=lambda p: p.rows).stage.knob

    def near_rows(self, rows: np.ndarray, kc: int, shards: ShardSet | None = None,
                  ef: int | None = None) -> np.ndarray:
        """Candidate rows ``(m, kc)`` near stored ``rows: (m,)``: a graph segment walks from the row's node."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.parts) == 1:
            return self.parts[0].stage.near_rows(rows, kc, self.shards, ef)
        vecs = self.shards.gather(rows)
        cols = []
        for p, w in self._pairs():
            kp = min(kc, p.rows)
            inside = (rows >= p.start) & (rows < p.end)
            local = np.full((len(rows), kp), -1, dtype=np.int64)
            if inside.any():
                local[inside] = p.stage.near_rows(rows[inside] - p.start, kp, w, ef)
            if not inside.all():
                local[~inside] = p.stage.search(vecs[~inside], kp, w)
            cols.append(self._global(p, local))
        return self._merge(vecs, cols, kc)

    def _pairs(self) -> list[tuple[Segment, ShardSet]]:
        return list(zip(self.parts, self._windows))

    @staticmethod
    def _global(p: Segment, local: np.ndarray) -> np.ndarray:
        return np.where(local >= 0, local + p.start, -1)

    def _merge(self, queries: np.ndarray, cols: list[np.ndarray], kc: int) -> np.ndarray:
        """The ``kc`` candidates of ``cols`` (each ``(m, k_i)``) nearest each query in the exact distance."""
        rows, _ = rerank(queries, np.concatenate(cols, axis=1), self.shards, self.curv, kc)
        return rows
