"""Exact range join in cells of the tangent space: every pair within the radius, found.

Why it is exact: the log map at the origin never lengthens a distance in
hyperbolic space (a CAT(0) comparison), so ``|log x - log y| <= d(x, y)``: the
tangent-space ball of radius ``R`` holds the geodesic one. Rows are put in
cells by k-means centroids of their tangent vectors (FAISS); a row joins its
nearest cell and also every cell whose centroid is within its nearest
centroid's distance plus ``2R``. For two rows ``a`` (nearest cell ``A``) and
``b`` with ``|a - b| <= R``, ``|b - c_A| <= |a - c_A| + R <= |a - c_B| + R <=
|b - c_B| + 2R``: ``b`` is in ``A`` too. So every pair within ``R`` meets in the
nearest cell of one of its rows. Inside a cell, a float64 GEMM of tangent vectors
filters pairs (with a rounding margin) and the stable geodesic distance decides.

Memory: one int per row (its nearest cell), the boundary rows' extra cells, and
one cell's tangent vectors at a time (in blocks); the shards stay memory-mapped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import faiss
import numpy as np
from numba import njit, prange

from ..geometry import lorentz
from ..kernels.distance import distance_row, prepare_query
from ..kernels.rows import row_view
from ..storage.snapshot import Snapshot
from .pairs import PassStats
from .unionfind import union_pairs

Progress = Callable[[int], None]
#: Rows of one side of a GEMM block.
BLOCK = 4096
#: Rows per assignment batch.
ASSIGN_BATCH = 65536
#: k-means: training rows per centroid, iterations.
TRAIN_PER_CELL = 40
KMEANS_ITER = 10
#: Relative and absolute slack on the tangent filter (float64 GEMM rounding).
_SLACK_REL, _SLACK_ABS = 1e-9, 1e-9


@njit(cache=True, parallel=True, nogil=True)
def _pair_distances(a, b, offsets, bases, dim, curv, out):
    inv_c = 1.0 / curv
    for i in prange(a.shape[0]):
        q = row_view(bases, offsets, a[i], dim)
        rq, tq = prepare_query(q, inv_c)
        out[i] = distance_row(row_view(bases, offsets, b[i], dim), q, rq, tq, inv_c, curv)


def pair_distances(a: np.ndarray, b: np.ndarray, snap: Snapshot) -> np.ndarray:
    """Stable geodesic distance between stored rows ``a[i]`` and ``b[i]`` -> ``(p,)`` float64."""
    out = np.empty(len(a), dtype=np.float64)
    if len(a):
        sh = snap.shardset
        _pair_distances(np.ascontiguousarray(a, np.int64), np.ascontiguousarray(b, np.int64), sh.offsets, sh.bases,
                        sh.dim, float(snap.manifest.curv), out)
    return out


def tangent(snap: Snapshot, rows: np.ndarray) -> np.ndarray:
    """Log map at the origin of stored ``rows: (m,)`` -> ``(m, dim)`` float64."""
    return lorentz.log_map0(snap.shardset.gather(rows).astype(np.float64), snap.manifest.curv)


def auto_nlist(m: int) -> int:
    """Cells for ``m`` rows: about ``2 sqrt(m)``, at least 64 rows per cell."""
    return max(1, min(int(2 * math.sqrt(m)), m // 64))


def train_cells(snap: Snapshot, rows: np.ndarray, nlist: int, seed: int = 1234) -> np.ndarray:
    """k-means centroids ``(nlist, dim)`` float32 of a sample of the rows' tangent vectors."""
    if nlist <= 1:
        return tangent(snap, rows[:1]).astype(np.float32)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(len(rows), TRAIN_PER_CELL * nlist), replace=False))
    x = tangent(snap, pick).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], nlist, niter=KMEANS_ITER, seed=seed, max_points_per_centroid=TRAIN_PER_CELL * 2)
    km.train(x)
    return km.centroids


def assign(snap: Snapshot, rows: np.ndarray, centroids: np.ndarray, radius: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest cell of each row ``(m,)`` int64, and the extra (row position, cell) pairs within the ``2R`` margin."""
    cells = Cells(centroids)
    primary = np.empty(len(rows), dtype=np.int64)
    extra_pos, extra_cell = [], []
    for start in range(0, len(rows), ASSIGN_BATCH):
        t = tangent(snap, rows[start : start + ASSIGN_BATCH])
        p, pos, cell = cells.assign(t, radius)
        primary[start : start + len(t)] = p
        extra_pos.append(start + pos)
        extra_cell.append(cell)
    pos = np.concatenate(extra_pos) if extra_pos else np.zeros(0, np.int64)
    cell = np.concatenate(extra_cell) if extra_cell else np.zeros(0, np.int64)
    return primary, pos.astype(np.int64), cell.astype(np.int64)


class Cells:
    """Float32 ``centroids: (nlist, dim)`` behind a FAISS flat search, and their float64 copy (built once)."""

    def __init__(self, centroids: np.ndarray):
        self.index = faiss.IndexFlatL2(centroids.shape[1])
        self.index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        self.c64 = np.asarray(centroids, dtype=np.float64)
        self.max_norm = float(np.sqrt(np.einsum("ij,ij->i", self.c64, self.c64).max(initial=0.0)))

    def assign(self, t: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`assign` for tangent vectors ``t: (m, dim)`` float64.

        FAISS's float32 search only proposes cells; the decisions use float64 distances.
        Its float32 ``|t|^2 + |c|^2 - 2 t.c`` is off by at most ``e^2 = gamma (|t| + |c|)^2``
        in ``d^2`` (``gamma = n u / (1 - n u)``, ``n = dim + 2``, ``u = 2^-24``, any
        summation order), plus ``u |t|`` for rounding ``t`` to float32; a cell FAISS did
        not return lies at ``d >= d32_last - e``, so widening until ``d32_last - e`` exceeds
        the float64 nearest distance plus the margin returns every cell the rule needs.
        """
        m, dim = t.shape
        nlist = len(self.c64)
        u = 2.0**-24
        gamma = (dim + 2) * u / (1 - (dim + 2) * u)
        tn = np.sqrt(np.einsum("ij,ij->i", t, t))
        err = np.sqrt(gamma) * (tn + self.max_norm) + 2 * u * tn  # shape: (m,), bounds |d32 - d|
        margin = assign_margin(radius)
        t32 = t.astype(np.float32)
        first = True
        primary = np.empty(m, dtype=np.int64)
        extra_pos, extra_cell = [], []
        todo = np.arange(m)
        top = min(nlist, 8)
        while len(todo):
            d2, cell = self.index.search(t32 if first else t32[todo], top)  # the first round: every row, no copy
            first = False
            d = _exact_distances(t, todo, self.c64, cell)
            order = np.argsort(d, axis=1, kind="stable")
            d = np.take_along_axis(d, order, 1)
            cell = np.take_along_axis(cell, order, 1)
            primary[todo] = cell[:, 0]
            within = d <= d[:, :1] + margin
            last32 = np.sqrt(np.maximum(d2[:, -1], 0))
            more = (last32 - err[todo] <= d[:, 0] + margin) & (top < nlist)  # unreturned cells may be in the margin
            done = ~more
            pi, cj = np.nonzero(within[done][:, 1:])
            extra_pos.append(todo[done][pi])
            extra_cell.append(cell[done][pi, cj + 1])
            todo, top = todo[more], min(nlist, top * 4)
        pos = np.concatenate(extra_pos) if extra_pos else np.zeros(0, np.int64)
        cells = np.concatenate(extra_cell) if extra_cell else np.zeros(0, np.int64)
        return primary, pos.astype(np.int64), cells.astype(np.int64)


def assign_margin(radius: float) -> float:
    """How much farther than its nearest cell a row's extra cells may be: ``2R``, with float64 slack."""
    return 2.0 * radius * (1 + 1e-6) + 1e-6


@njit(cache=True, parallel=True, nogil=True)
def _cell_distances(t, rows, c64, cell, out):
    """Float64 ``|t[rows[i]] - c64[cell[i, j]]|`` into ``out: (m, top)``, summed differences (no cancellation)."""
    for i in prange(rows.shape[0]):
        ti = t[rows[i]]
        for j in range(cell.shape[1]):
            c = c64[cell[i, j]]
            s = 0.0
            for k in range(ti.shape[0]):
                dk = ti[k] - c[k]
                s += dk * dk
            out[i, j] = np.sqrt(s)


def _exact_distances(t: np.ndarray, rows: np.ndarray, c64: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Float64 ``|t[rows[i]] - c64[cell[i, j]]|`` for ``t: (m, dim)``, ``cell: (r, top)`` -> ``(r, top)``.

    Relative error ~``dim * 2^-53``: far inside the margin's slack.
    """
    out = np.empty(cell.shape, dtype=np.float64)
    if len(rows):
        _cell_distances(np.ascontiguousarray(t), np.ascontiguousarray(rows, dtype=np.int64), c64,
                        np.ascontiguousarray(cell, dtype=np.int64), out)
    return out


def _block_pairs(ta: np.ndarray, tb: np.ndarray, radius: float, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` whose tangent distance may be within ``radius`` (``upper``: ``i < j`` only)."""
    na = np.einsum("ij,ij->i", ta, ta)
    nb = np.einsum("ij,ij->i", tb, tb)
    d2 = na[:, None] + nb[None, :] - 2.0 * (ta @ tb.T)
    r = radius * (1 + _SLACK_REL) + _SLACK_ABS
    thr = r * r + 1e-13 * (na[:, None] + nb[None, :])
    hit = d2 <= thr
    if upper:
        hit = np.triu(hit, k=1)
    a, b = np.nonzero(hit)
    return a, b


def cell_join(snap: Snapshot, rows: np.ndarray, radius: float, parent: np.ndarray, *, nlist: int | None = None,
              progress: Progress | None = None, stats: PassStats | None = None, seed: int = 1234) -> PassStats:
    """Unite in ``parent`` every pair of ``rows: (m,)`` within geodesic ``radius`` (all of them)."""
    stats = stats or PassStats()

    def unite(a: np.ndarray, b: np.ndarray) -> None:
        stats.merges += union_pairs(parent, a, b)

    for own, guests in plan_cells(snap, rows, radius, nlist=nlist, stats=stats, seed=seed):
        join_cell(snap, own, guests, radius, unite, stats)
        if progress is not None:
            progress(len(own))
    return stats


def plan_cells(snap: Snapshot, rows: np.ndarray, radius: float, *, nlist: int | None = None,
               stats: PassStats | None = None, seed: int = 1234) -> list[tuple[np.ndarray, np.ndarray]]:
    """The join's work, one item per non-empty cell: ``(own rows, guest rows)`` (guests: margin copies).

    Every pair within ``radius`` has both rows in one item's own, or one in its own and
    the other among its guests, so items can be joined anywhere (another process).
    """
    stats = stats or PassStats()
    rows = np.asarray(rows, dtype=np.int64)
    m = len(rows)
    stats.queried += m
    if m < 2:
        return []
    nlist = auto_nlist(m) if nlist is None else max(1, min(int(nlist), m))
    centroids = train_cells(snap, rows, nlist, seed)
    primary, xpos, xcell = assign(snap, rows, centroids, radius)
    stats.cells = int(len(centroids))
    stats.extra_assignments = int(len(xpos))
    order = np.argsort(primary, kind="stable")
    starts = np.searchsorted(primary[order], np.arange(len(centroids) + 1))
    xorder = np.argsort(xcell, kind="stable")
    xstarts = np.searchsorted(xcell[xorder], np.arange(len(centroids) + 1))
    items = []
    for c in range(len(centroids)):
        own = rows[order[starts[c] : starts[c + 1]]]
        if len(own):
            items.append((own, rows[xpos[xorder[xstarts[c] : xstarts[c + 1]]]]))
    return items


def join_cell(snap: Snapshot, own: np.ndarray, guests: np.ndarray, radius: float,
              sink: Callable[[np.ndarray, np.ndarray], None], stats: PassStats) -> None:
    """Every pair of one cell within ``radius`` (own x own, own x guests), confirmed exactly, to ``sink(a, b)``."""
    t_own = tangent(snap, own)
    t_guest = tangent(snap, guests) if len(guests) else None
    for i in range(0, len(own), BLOCK):
        ta = t_own[i : i + BLOCK]
        for j in range(i, len(own), BLOCK):
            a, b = _block_pairs(ta, t_own[j : j + BLOCK], radius, upper=(i == j))
            _confirm(snap, own[i + a], own[j + b], radius, sink, stats)
        if t_guest is not None:
            for j in range(0, len(guests), BLOCK):
                a, b = _block_pairs(ta, t_guest[j : j + BLOCK], radius, upper=False)
                _confirm(snap, own[i + a], guests[j + b], radius, sink, stats)


def _confirm(snap: Snapshot, a: np.ndarray, b: np.ndarray, radius: float,
             sink: Callable[[np.ndarray, np.ndarray], None], stats: PassStats) -> None:
    keep = a != b
    a, b = a[keep], b[keep]
    if not len(a):
        return
    d = pair_distances(a, b, snap)
    stats.checked += len(a)
    ok = d <= radius
    if ok.any():
        stats.within += int(ok.sum())
        sink(a[ok], b[ok])
