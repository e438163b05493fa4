"""A snapshot's shard space columns as one row-addressable set, the way the kernels read them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ShardSet:
    """The space columns of a snapshot's shards as the kernels see them.

    Zero-copy: the kernels get each shard's base address and the row offsets, and
    this object keeps the (memory-mapped) arrays alive for as long as it lives.
    """

    def __init__(self, spaces: Sequence[np.ndarray], dim: int):
        self.dim = dim
        self.arrays = [np.ascontiguousarray(s, dtype=np.float32) for s in spaces]
        for a in self.arrays:
            if a.ndim != 2 or a.shape[1] != dim:
                raise ValueError(f"shard array of shape {a.shape} in a set of dimension {dim}")
        counts = np.array([a.shape[0] for a in self.arrays], dtype=np.int64)
        self.offsets = np.zeros(len(self.arrays) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.bases = np.array([a.ctypes.data for a in self.arrays], dtype=np.int64)
        self._sqnorms: np.ndarray | None = None

    def sqnorms(self) -> np.ndarray:
        """``|x|^2`` of every row -> ``(rows,)`` float64, computed once per set (the scan reads it per query)."""
        if self._sqnorms is None:
            parts = [np.einsum("ij,ij->i", a, a, dtype=np.float64) for a in self.arrays]
            self._sqnorms = np.concatenate(parts) if parts else np.zeros(0, np.float64)
        return self._sqnorms

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Space components of global ``rows: (m,)`` (all valid) -> ``(m, dim)`` float32 (a copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        s = np.searchsorted(self.offsets, rows, side="right") - 1
        for i in np.unique(s):
            sel = s == i
            out[sel] = self.arrays[i][rows[sel] - self.offsets[i]]
        return out

    def row(self, g: int) -> np.ndarray:
        """Space components of global row ``g`` -> ``(dim,)`` float32 (a view)."""
        s = int(np.searchsorted(self.offsets, g, side="right") - 1)
        return self.arrays[s][g - self.offsets[s]]

    def window(self, start: int, rows: int) -> ShardSet:
        """Rows ``start .. start + rows`` as a set of their own (row ``start`` becomes row 0); views, no copy."""
        if start == 0 and rows == self.rows:
            return self
        end = start + rows
        parts = []
        for a, lo in zip(self.arrays, self.offsets[:-1]):
            hi = int(lo) + a.shape[0]
            if hi > start and lo < end:
                parts.append(a[max(start - int(lo), 0) : min(end, hi) - int(lo)])
        return ShardSet(parts, self.dim)
