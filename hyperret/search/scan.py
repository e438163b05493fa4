"""The exhaustive candidate scan: every (allowed) row, by a float32 matrix product, no structure.

The gap ``-<q, x>_L - 1/c = (|q - x|^2 - (q_t - x_t)^2) / 2`` is evaluated for a
block of rows at a time as ``(|q|^2 + |x|^2 - 2 q.x - ((|q|^2 - |x|^2) / (q_t + x_t))^2) / 2``:
one BLAS product per block, the rest per pair. Unlike the inner-product reduction
``q_t x_t - q.x`` it never subtracts two values of size ``1/c``, so a small curvature
(``1/c = 10^4``) costs no precision. A Numba pass per block
turns the products into gaps and keeps each query's ``kc`` smallest in a heap:
the exact rerank decides among them. Used for small indexes (where it beats a graph),
filters that match few rows, and the recall measurements' ground truth.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..kernels import parallel
from ..kernels.heap import keep_smallest
from ..kernels.rows import FASTMATH
from ..storage.shardset import ShardSet

#: Rows per matrix product: (queries x block) float32 products stay a few tens of MB.
_BLOCK = 16384


def scan(queries: np.ndarray, shards: ShardSet, curv: float, kc: int, *, rows: np.ndarray | None = None,
         skip: np.ndarray | None = None) -> np.ndarray:
    """Candidate rows ``(m, kc)`` int64 (``-1`` padded) nearest ``queries: (m, dim)`` among all rows.

    ``rows: (r,)`` sorted global rows: scan only these (a filter's matches).
    ``skip: (n,)`` nonzero rows are left out.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = q.shape[0]
    if m == 0 or kc == 0:
        return np.full((m, kc), -1, dtype=np.int64)
    q64 = q.astype(np.float64)
    nq = np.einsum("ij,ij->i", q64, q64)
    qt = np.sqrt(1.0 / curv + nq)
    norms = shards.sqnorms()
    times = np.sqrt(1.0 / curv + norms)
    heap_d = np.full((m, kc), np.inf, dtype=np.float64)
    heap_i = np.full((m, kc), -1, dtype=np.int64)
    sizes = np.zeros(m, dtype=np.int64)
    for ids, block in _blocks(shards, rows, skip):
        dot = q @ block.T  # float32 BLAS, (m, b)
        parallel.run(_select_serial, _select_parallel, m, dot, nq, qt, norms[ids], times[ids], ids, heap_d, heap_i,
                     sizes)
    order = np.argsort(heap_d, axis=1, kind="stable")
    return np.take_along_axis(heap_i, order, 1)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def _select_one(i, dot, nq, qt, nx, xt, ids, heap_d, heap_i, sizes):
    """Gaps of query ``i`` to a block (``dot[i] = q.x``) offered to its heap of the ``kc`` smallest.

    Two passes: the gaps of the whole block (vectorised), then only those below the
    heap's current worst are pushed (few, once the heap is full).
    """
    hd, hi, size = heap_d[i], heap_i[i], sizes[i]
    a, t0 = nq[i], qt[i]
    b = dot.shape[1]
    g = np.empty(b, dtype=np.float64)
    for j in range(b):
        r = (a - nx[j]) / (t0 + xt[j])
        g[j] = 0.5 * (a + nx[j] - r * r) - np.float64(dot[i, j])
    worst = hd[0] if size == hd.shape[0] else np.inf
    for j in range(b):
        if g[j] < worst:
            size = keep_smallest(hd, hi, size, g[j], ids[j])
            worst = hd[0] if size == hd.shape[0] else np.inf
    sizes[i] = size


@njit(cache=True, parallel=True, nogil=True)
def _select_parallel(dot, nq, qt, nx, xt, ids, heap_d, heap_i, sizes):
    for i in prange(dot.shape[0]):
        _select_one(i, dot, nq, qt, nx, xt, ids, heap_d, heap_i, sizes)


@njit(cache=True, nogil=True)
def _select_serial(dot, nq, qt, nx, xt, ids, heap_d, heap_i, sizes):
    for i in range(dot.shape[0]):
        _select_one(i, dot, nq, qt, nx, xt, ids, heap_d, heap_i, sizes)


def _blocks(shards: ShardSet, rows: np.ndarray | None, skip: np.ndarray | None):
    """``(global rows (b,), space (b, D) float32)`` blocks of the rows to scan."""
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if skip is not None:
            rows = rows[np.asarray(skip)[rows] == 0]
        for s in range(0, len(rows), _BLOCK):
            ids = rows[s : s + _BLOCK]
            yield ids, shards.gather(ids)
        return
    for a, lo in zip(shards.arrays, shards.offsets[:-1]):
        for s in range(0, a.shape[0], _BLOCK):
            block = a[s : s + _BLOCK]
            ids = np.arange(int(lo) + s, int(lo) + s + len(block), dtype=np.int64)
            if skip is not None:
                keep = np.asarray(skip)[ids] == 0
                if not keep.all():
                    ids, block = ids[keep], block[keep]
            if len(ids):
                yield ids, block
