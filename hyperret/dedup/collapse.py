"""Search-time deduplication: collapse near-copies within each query's ranked hits, keeping the nearest."""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels.distance import distance_row, prepare_query
from ..kernels.rows import row_view
from ..storage.shardset import ShardSet

#: Radius used by ``search(dedup=True)`` when the index has no applied dedup run to take it from.
DEFAULT_SEARCH_RADIUS = 0.05


@njit(cache=True, nogil=True)
def _collapse(rows, dist, offsets, bases, dim, curv, radius, out_rows, out_dist, out_collapsed):
    inv_c = 1.0 / curv
    k = out_rows.shape[1]
    for i in range(rows.shape[0]):
        kept = 0
        gone = 0
        for j in range(rows.shape[1]):
            g = rows[i, j]
            if g < 0 or kept == k:
                break
            q = row_view(bases, offsets, g, dim)
            rq, tq = prepare_query(q, inv_c)
            dup = False
            for t in range(kept):
                if distance_row(row_view(bases, offsets, out_rows[i, t], dim), q, rq, tq, inv_c, curv) <= radius:
                    dup = True
                    break
            if dup:
                gone += 1
                continue
            out_rows[i, kept] = g
            out_dist[i, kept] = dist[i, j]
            kept += 1
        out_collapsed[i] = gone


def collapse(rows: np.ndarray, dist: np.ndarray, shards: ShardSet, curv: float, radius: float, k: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep, per query, the first ``k`` ranked hits ``rows, dist: (m, k2)`` that are farther than ``radius``
    from every hit kept before them -> ``(rows (m, k), dist (m, k), collapsed (m,))``.

    ``collapsed`` counts the hits dropped before the ``k``-th was kept (or the list ran out).
    """
    m = rows.shape[0]
    out_rows = np.full((m, k), -1, dtype=np.int64)
    out_dist = np.full((m, k), np.inf, dtype=np.float64)
    gone = np.zeros(m, dtype=np.int64)
    if m:
        _collapse(np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(dist, dtype=np.float64),
                  shards.offsets, shards.bases, shards.dim, float(curv), float(radius), out_rows, out_dist, gone)
    return out_rows, out_dist, gone
