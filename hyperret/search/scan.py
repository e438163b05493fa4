"""The exhaustive candidate scan: every (allowed) row, by a float32 matrix product, no structure.

The gap ``-<q, x>_L - 1/c = (|q - x|^2 - (q_t - x_t)^2) / 2`` is evaluated for a
block of rows at a time as ``(|q|^2 + |x|^2 - 2 q.x - ((|q|^2 - |x|^2) / (q_t + x_t))^2) / 2``:
one BLAS product per block, the rest elementwise. Unlike the inner-product reduction
``q_t x_t - q.x`` it never subtracts two values of size ``1/c``, so a small curvature
(``1/c = 10^4``) costs no precision. The ``kc`` smallest per query are the candidates;
the exact rerank decides among them. Used for small indexes (where it beats a graph),
filters that match few rows, and the recall measurements' ground truth.
"""

from __future__ import annotations

import numpy as np

from ..storage.shardset import ShardSet

#: Rows per matrix product: (queries x block) float32 scores stay a few tens of MB.
_BLOCK = 8192


def scan(queries: np.ndarray, shards: ShardSet, curv: float, kc: int, *, rows: np.ndarray | None = None,
         skip: np.ndarray | None = None) -> np.ndarray:
    """Candidate rows ``(m, kc)`` int64 (``-1`` padded) nearest ``queries: (m, dim)`` among all rows.

    ``rows: (r,)`` sorted global rows: scan only these (a filter's matches).
    ``skip: (n,)`` nonzero rows are left out.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = q.shape[0]
    out = np.full((m, kc), -1, dtype=np.int64)
    if m == 0 or kc == 0:
        return out
    q64 = q.astype(np.float64)
    nq = np.einsum("ij,ij->i", q64, q64)
    qt = np.sqrt(1.0 / curv + nq)
    best_i = np.zeros((m, 0), dtype=np.int64)
    best_s = np.zeros((m, 0), dtype=np.float32)
    norms = shards.sqnorms()
    for ids, block in _blocks(shards, rows, skip):
        s = _gaps(q, nq, qt, block, norms[ids], curv)
        take = min(kc, s.shape[1])
        part = np.argpartition(s, take - 1, axis=1)[:, :take] if take < s.shape[1] else np.tile(
            np.arange(s.shape[1]), (m, 1))
        best_i = np.hstack([best_i, ids[part]])
        best_s = np.hstack([best_s, np.take_along_axis(s, part, 1)])
        if best_i.shape[1] > kc:
            top = np.argpartition(best_s, kc - 1, axis=1)[:, :kc]
            best_i = np.take_along_axis(best_i, top, 1)
            best_s = np.take_along_axis(best_s, top, 1)
    order = np.argsort(best_s, axis=1, kind="stable")
    out[:, : best_i.shape[1]] = np.take_along_axis(best_i, order, 1)
    return out


def _gaps(q: np.ndarray, nq: np.ndarray, qt: np.ndarray, x: np.ndarray, nx: np.ndarray, curv: float) -> np.ndarray:
    """Gaps ``(m, b)`` float32 of queries ``q: (m, D)`` (``|q|^2 = nq``, times ``qt``), rows ``x: (b, D)`` (``nx``)."""
    xt = np.sqrt(1.0 / curv + nx)
    dot = q @ x.T  # float32 BLAS
    radial = (nq[:, None] - nx[None, :]) / (qt[:, None] + xt[None, :])
    g = (nq[:, None] + nx[None, :]).astype(np.float32) - 2.0 * dot
    g -= (radial * radial).astype(np.float32)
    return g


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
