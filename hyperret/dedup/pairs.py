"""Range search over an index's own rows: candidate stage, then the exact distance.

Every query row asks the candidate stage for ``kc`` rows near it; each pair is
confirmed with the cancellation-free geodesic distance (float64 sums over the
float32 rows, :func:`hyperret.kernels.distance.gap_row`), and pairs within the radius are
handed to the union-find at once: nothing per pair is kept, so memory stays at a
few arrays of one entry per row. A row whose every candidate fell inside the
radius may have more neighbours: it is asked again with twice the candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..kernels import parallel
from ..kernels.distance import distance_row, prepare_query
from ..kernels.rows import row_view
from ..search.executor import widen
from ..storage.shardset import ShardSet
from ..storage.snapshot import Snapshot
from .unionfind import union_pairs

Progress = Callable[[int], None]
#: Bytes of candidate rows and distances one block may hold.
BLOCK_BYTES = 64 << 20
#: Rows per block at the first round.
BLOCK_ROWS = 8192


@njit(cache=True, nogil=True)
def _confirm_one(g, cand, offsets, bases, dim, curv, out):
    inv_c = 1.0 / curv
    q = row_view(bases, offsets, g, dim)
    rq, tq = prepare_query(q, inv_c)
    total = offsets[offsets.shape[0] - 1]
    for j in range(cand.shape[0]):
        c = cand[j]
        if c < 0 or c >= total or c == g:
            out[j] = np.inf
        else:
            out[j] = distance_row(row_view(bases, offsets, c, dim), q, rq, tq, inv_c, curv)


@njit(cache=True, parallel=True, nogil=True)
def _confirm_parallel(rows, cand, offsets, bases, dim, curv, out):
    for i in prange(rows.shape[0]):
        _confirm_one(rows[i], cand[i], offsets, bases, dim, curv, out[i])


@njit(cache=True, nogil=True)
def _confirm_serial(rows, cand, offsets, bases, dim, curv, out):
    for i in range(rows.shape[0]):
        _confirm_one(rows[i], cand[i], offsets, bases, dim, curv, out[i])


def confirm(rows: np.ndarray, cand: np.ndarray, shards: ShardSet, curv: float) -> np.ndarray:
    """Exact geodesic distance of stored ``rows: (m,)`` to their candidate rows ``(m, kc)`` -> ``(m, kc)`` float64.

    ``inf`` for padding (``-1``) and for the row itself.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    out = np.empty(cand.shape, dtype=np.float64)
    if len(rows):
        parallel.run(_confirm_serial, _confirm_parallel, len(rows), rows, cand, shards.offsets, shards.bases,
                     shards.dim, float(curv), out)
    return out


def _block_rows(kc: int) -> int:
    """Query rows per block so that ``kc`` candidate rows and distances each fit :data:`BLOCK_BYTES`."""
    return max(16, min(BLOCK_ROWS, BLOCK_BYTES // (16 * max(kc, 1))))


@dataclass
class PassStats:
    """What a range pass did."""

    queried: int = 0  # distinct rows asked
    queries: int = 0  # candidate-stage calls, requeries included
    requeried: int = 0  # rows asked again with more candidates
    checked: int = 0  # candidate pairs confirmed with the exact distance
    within: int = 0  # confirmed pairs within the radius
    merges: int = 0  # unions that joined two sets
    max_candidates: int = 0
    cells: int = 0  # cell join: cells
    extra_assignments: int = 0  # cell join: boundary rows' extra cell memberships


def range_pass(snap: Snapshot, rows: np.ndarray, eligible: np.ndarray, radius: float, parent: np.ndarray,
               kc: int, *, progress: Progress | None = None, stats: PassStats | None = None) -> PassStats:
    """Unite, in ``parent``, every query row of ``rows: (m,)`` with the ``eligible`` rows within ``radius``.

    ``eligible: (n,)`` bool per stored row: which rows may join a group (live,
    unsafe when asked, one per exact-duplicate class). ``kc``: candidates per
    row at the first round, doubled for the rows that need more.
    """
    stats = stats or PassStats()
    n = snap.rows
    stage = snap.stage
    if stage is None:  # an empty snapshot: no pairs
        return stats
    todo = np.asarray(rows, dtype=np.int64)
    stats.queried += len(todo)

    def step(todo: np.ndarray, kc: int, rnd: int) -> np.ndarray:
        stats.max_candidates = max(stats.max_candidates, kc)
        if rnd:
            stats.requeried += len(todo)
        block = _block_rows(kc)
        full = np.zeros(len(todo), dtype=bool)
        for start in range(0, len(todo), block):
            q = todo[start : start + block]
            cand = stage.near_rows(q, kc, snap.shardset)
            d = confirm(q, cand, snap.shardset, snap.manifest.curv)
            stats.queries += len(q)
            stats.checked += int(np.count_nonzero(np.isfinite(d)))
            inside = d <= radius
            # Every real candidate inside the radius: the ball may hold more rows than were asked for.
            real = (cand >= 0) & (cand != q[:, None])
            n_real = np.count_nonzero(real, axis=1)
            full[start : start + block] = ((cand >= 0).all(axis=1) & (n_real > 0)
                                           & (np.count_nonzero(inside, axis=1) >= n_real))
            ok = inside & eligible[np.maximum(cand, 0)]
            qi, cj = np.nonzero(ok)
            if len(qi):
                stats.within += len(qi)
                stats.merges += union_pairs(parent, q[qi], cand[qi, cj])
            if progress is not None and rnd == 0:
                progress(len(q))
        return full

    widen(todo, min(kc, n), n, step, growth=2)
    return stats


def nearest(snap: Snapshot, rows: np.ndarray, eligible: np.ndarray, kc: int) -> np.ndarray:
    """Distance of each stored row of ``rows: (m,)`` to its nearest ``eligible`` row at a distance > 0 -> ``(m,)``.

    ``inf`` where the candidate stage found none. For the radius picker.
    """
    out = np.full(len(rows), np.inf)
    stage = snap.stage
    if stage is None:  # an empty snapshot: no neighbours
        return out
    kc = min(kc, snap.rows)
    block = _block_rows(kc)
    for start in range(0, len(rows), block):
        q = np.asarray(rows[start : start + block], dtype=np.int64)
        cand = stage.near_rows(q, kc, snap.shardset)
        d = confirm(q, cand, snap.shardset, snap.manifest.curv)
        d[~eligible[np.maximum(cand, 0)] | (d <= 0)] = np.inf
        out[start : start + len(q)] = d.min(axis=1) if d.shape[1] else np.inf
    return out
