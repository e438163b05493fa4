"""Exact Lorentz rerank: Numba kernels over memory-mapped shards (torch-free).

The candidate stage hands over, for each query, a row list (global row numbers
into the snapshot's shards, ``-1`` for none). The kernel gathers each row's
float32 space components straight from the shard memory maps, computes the
cancellation-free geodesic distance in float64 (the same formula as
:func:`hyperret.geometry.lorentz.distance`, :mod:`hyperret.kernels.distance`) and
returns the ``k`` nearest, sorted by distance, ties broken by the lower row.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..kernels import parallel
from ..kernels.distance import distance_row, prepare_query
from ..kernels.rows import row_view
from ..storage.shardset import ShardSet

__all__ = ["ShardSet", "rerank"]


@njit(cache=True, nogil=True)
def _rerank_one(q, cand_row, offsets, bases, curv, skip, out_rows, out_dist):
    """Exact top ``len(out_rows)`` of one query among its candidate rows (in place).

    ``skip``: per global row, True to leave the row out (empty: keep every row).
    Returns how many distinct candidate rows with ``skip == 1`` were left out (a
    ``uint8`` mask may mark rows ``2``: left out, not counted).
    """
    kc = cand_row.shape[0]
    k = out_rows.shape[0]
    dim = q.shape[0]
    inv_c = 1.0 / curv
    total = offsets[offsets.shape[0] - 1]
    rq, tq = prepare_query(q, inv_c)
    rows = np.sort(cand_row)  # row order: better locality, deterministic ties
    dist = np.full(kc, np.inf, dtype=np.float64)
    valid = np.zeros(kc, dtype=np.bool_)
    skipped = 0
    for j in range(kc):
        g = rows[j]
        if g < 0 or g >= total or (j > 0 and rows[j - 1] == g):
            continue
        if skip.shape[0] > 0 and skip[g]:
            if skip[g] == 1:  # codes > 1 (deleted rows) are left out uncounted
                skipped += 1
            continue
        x = row_view(bases, offsets, g, dim)
        dist[j] = distance_row(x, q, rq, tq, inv_c, curv)
        valid[j] = True
    order = np.argsort(dist, kind="mergesort")  # stable: equal distances keep row order
    c = 0
    for j in range(kc):
        o = order[j]
        if not valid[o]:
            continue
        out_rows[c] = rows[o]
        out_dist[c] = dist[o]
        c += 1
        if c == k:
            break
    return skipped


@njit(cache=True, parallel=True, nogil=True)
def _rerank_parallel(queries, cand, offsets, bases, curv, skip, out_rows, out_dist, out_skipped):
    for i in prange(queries.shape[0]):
        out_skipped[i] = _rerank_one(queries[i], cand[i], offsets, bases, curv, skip, out_rows[i], out_dist[i])


@njit(cache=True, nogil=True)
def _rerank_serial(queries, cand, offsets, bases, curv, skip, out_rows, out_dist, out_skipped):
    for i in range(queries.shape[0]):
        out_skipped[i] = _rerank_one(queries[i], cand[i], offsets, bases, curv, skip, out_rows[i], out_dist[i])


_NO_SKIP = np.zeros(0, dtype=np.bool_)


def rerank(queries: np.ndarray, candidates: np.ndarray, shards: ShardSet, curv: float, k: int,
           skip: np.ndarray | None = None, skipped: np.ndarray | None = None):
    """Exact top ``k`` among ``candidates: (m, kc)`` rows for ``queries: (m, D)`` float32.

    Returns ``(rows (m, k) int64, distances (m, k) float64)``; ``-1`` / ``inf`` pad
    queries with fewer than ``k`` valid candidates. ``skip: (n,)`` bool or uint8 per
    global row leaves non-zero rows out (the safety filter, deleted rows);
    ``skipped: (m,)`` int64, if given, receives how many candidate rows marked
    ``True``/``1`` each query left out (``2``, a deleted row, is not counted).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    c = np.ascontiguousarray(candidates, dtype=np.int64)
    if q.shape[0] == 0 or k == 0:
        return np.full((q.shape[0], k), -1, np.int64), np.full((q.shape[0], k), np.inf)
    if q.shape[1] != shards.dim:
        raise ValueError(f"queries of dimension {q.shape[1]} against shards of dimension {shards.dim}")
    sk = _NO_SKIP if skip is None else np.ascontiguousarray(skip)
    if sk.dtype not in (np.bool_, np.uint8):
        sk = sk.astype(np.bool_)
    if len(sk) and len(sk) != shards.rows:
        raise ValueError(f"skip mask of {len(sk)} rows for {shards.rows} rows")
    out_rows = np.full((q.shape[0], k), -1, dtype=np.int64)
    out_dist = np.full((q.shape[0], k), np.inf, dtype=np.float64)
    out_skipped = np.zeros(q.shape[0], dtype=np.int64) if skipped is None else skipped
    parallel.run(_rerank_serial, _rerank_parallel, q.shape[0],
                 q, c, shards.offsets, shards.bases, float(curv), sk, out_rows, out_dist, out_skipped)
    return out_rows, out_dist
