"""The exact kernels a search runs, as one argument: the exhaustive scan and the rerank.

A search asks an :class:`Exact` for both (as FAISS's contrib takes its kernels as
arguments): :class:`CpuExact` runs the Numba CPU kernels over the memory-mapped
shards, :class:`hyperret.cuda.CudaExact` the CUDA kernels over rows held on a GPU.
Both return the same rows and distances (within rounding), so the executor need not
know which one ran.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..storage.shardset import ShardSet
from .rerank import rerank
from .scan import scan


def scan_width(k: int) -> int:
    """Candidates the exhaustive scan hands the rerank: a margin for float32 near-ties (as the exact preset)."""
    return max(2 * k, k + 16)


class Exact(Protocol):
    """The scan and the rerank over one snapshot's rows."""

    def width(self, k: int) -> int:
        """Candidates the scan should hand the rerank for ``k`` exact hits (the margin its precision needs)."""
        ...

    def scan(self, queries: np.ndarray, kc: int, *, skip: np.ndarray | None = None) -> np.ndarray:
        """Candidate rows ``(m, kc)`` int64 (``-1`` padded) nearest ``queries: (m, D)``; ``skip`` rows left out."""
        ...

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int, *, skip: np.ndarray | None = None,
               skipped: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k``: ``(rows (m, k) int64, distances (m, k) float64)`` among ``candidates: (m, kc)``."""
        ...


class CpuExact:
    """The CPU kernels: :func:`hyperret.search.scan.scan` and :func:`hyperret.search.rerank.rerank`."""

    def __init__(self, shards: ShardSet, curv: float):
        self.shards, self.curv = shards, curv

    def width(self, k: int) -> int:
        return scan_width(k)

    def scan(self, queries: np.ndarray, kc: int, *, skip: np.ndarray | None = None) -> np.ndarray:
        return scan(queries, self.shards, self.curv, kc, skip=skip)

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int, *, skip: np.ndarray | None = None,
               skipped: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return rerank(queries, candidates, self.shards, self.curv, k, skip=skip, skipped=skipped)
