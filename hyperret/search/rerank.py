"""Exact Lorentz rerank: Numba kernels over memory-mapped shards (torch-free).

The candidate stage hands over, for each query, a row list (global row numbers
into the snapshot's shards, ``-1`` for none). The kernel gathers each row's
float32 space components straight from the shard memory maps, computes the
cancellation-free geodesic distance in float64 (the same formula as
:func:`hyperret.geometry.lorentz.distance`) and returns the ``k`` nearest, sorted by
distance, ties broken by the lower row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ..kernels import parallel

# Reassociation lets LLVM vectorise the float64 sums; results stay deterministic
# for a given build and agree with the NumPy reference to ~1e-15 relative.
_FM = {"reassoc", "contract", "nsz"}


@intrinsic
def _f32_ptr(typingctx, address):
    """An int64 address as a float32 pointer (shard bases, kept alive by ShardSet)."""
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return sig, codegen


@njit(cache=True, inline="always")
def _row_view(bases, offsets, g, dim):
    """Space components of global row ``g`` as a ``(dim,)`` view into its shard."""
    s = np.searchsorted(offsets, g, side="right") - 1
    return numba.carray(_f32_ptr(bases[s] + (g - offsets[s]) * dim * 4), (dim,))


@njit(cache=True, fastmath=_FM, inline="always")
def _sqnorm(v):
    """``|v|^2`` of a float32 vector ``(D,)`` in float64."""
    s = 0.0
    for j in range(v.shape[0]):
        vj = np.float64(v[j])
        s += vj * vj
    return s


@njit(cache=True, fastmath=_FM, inline="always")
def _gap_row(x, q, rq, tq, inv_c):
    """``(m, |x|^2, |x|^2 - |q|^2, x_t)`` of row ``x: (D,)`` float32 and query ``q`` (norm ``rq``, time ``tq``).

    ``m = <x - q, x - q>_L >= 0``, the formula of :func:`hyperret.geometry.lorentz.distance`:
    non-negative radial and angular terms. The direction difference ``x / rx - q / rq``
    is computed as ``(x - q) / r_max - z (rx^2 - rq^2) / (rx rq (rx + rq))`` with ``z``
    the point of the smaller norm: exactly 0 for ``x == q``, symmetric, and free of
    cancellation. The other three values serve the entailment-cone test.
    """
    d = x.shape[0]
    rx2 = _sqnorm(x)
    num = 0.0  # rx^2 - rq^2, summed per component
    for j in range(d):
        xj = np.float64(x[j])
        qj = np.float64(q[j])
        num += (xj - qj) * (xj + qj)
    rx = math.sqrt(rx2)
    tx = math.sqrt(inv_c + rx2)
    p = rx + rq
    t = tx + tq
    drho = num / p if p > 0.0 else 0.0
    ex = inv_c / (tx + rx)
    eq = inv_c / (tq + rq)
    m = drho * drho * (ex + eq) * (t + p) / (t * t)
    den = rx * rq * p
    if rx > 0.0 and rq > 0.0 and den > 0.0:  # den: also 0 when the product underflows
        corr = num / den
        s = 0.0
        if rx >= rq:  # divide by the larger norm, correct with the smaller point: no cancellation
            inv = 1.0 / rx
            for j in range(d):
                qj = np.float64(q[j])
                du = (np.float64(x[j]) - qj) * inv - qj * corr
                s += du * du
        else:
            inv = 1.0 / rq
            for j in range(d):
                xj = np.float64(x[j])
                du = (xj - np.float64(q[j])) * inv - xj * corr
                s += du * du
        m += rx * rq * s
    return m, rx2, num, tx


@njit(cache=True, fastmath=_FM, inline="always")
def _distance_row(x, q, rq, tq, inv_c, curv):
    """Stable geodesic distance between row ``x: (D,)`` float32 and query ``q`` (norm ``rq``, time ``tq``)."""
    m = _gap_row(x, q, rq, tq, inv_c)[0]
    return (2.0 / math.sqrt(curv)) * math.asinh(math.sqrt(curv * m) / 2.0)


@njit(cache=True, fastmath=_FM)
def _prepare_query(q, inv_c):
    """Float64 norm and time component of one query ``q: (D,)``."""
    rq2 = _sqnorm(q)
    return math.sqrt(rq2), math.sqrt(inv_c + rq2)


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
    rq, tq = _prepare_query(q, inv_c)
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
        x = _row_view(bases, offsets, g, dim)
        dist[j] = _distance_row(x, q, rq, tq, inv_c, curv)
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
