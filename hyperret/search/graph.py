"""Navigate a FAISS-built HNSW graph with the exact Lorentz inner product (Numba).

A graph must be *built* in a symmetric space (the Poincare-ball proxy): HNSW over
the asymmetric inner-product reduction does not navigate. But ranking by a
symmetric proxy loses the true neighbours of far-out points, which in hyperbolic
space lie toward the origin. So hyperret lets FAISS build the graph over the
proxy and walks it here with the true order: ``-<q, x>_L``, computed from the
float32 rows of the memory-mapped shards (float64 sums). The graph's arrays are
read in place, from the FAISS index that built them or memory-mapped from the
saved file (no copy); the ``ef`` best rows found go on to the exact rerank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numba
import numpy as np
from numba import njit, prange

from ..kernels import parallel
from ..kernels.heap import keep_smallest, pop_min, push_min
from ..kernels.rows import FASTMATH, prefetch, prefetch_row, row_view, sqnorm
from ..storage.shardset import ShardSet
from .codes import Codes


@dataclass(frozen=True)
class Graph:
    """Zero-copy views of an HNSW graph's arrays (valid while ``owner`` lives)."""

    neighbors: np.ndarray  # shape: (total_links,) int32, -1 = empty slot
    offsets: np.ndarray  # shape: (n + 1,) int64, node i's links start here
    cum: np.ndarray  # shape: (levels + 1,) int32, link slots before each level
    levels: np.ndarray  # shape: (n,) int32, number of levels of each node
    entry: int
    max_level: int
    owner: object  # what holds the arrays: the FAISS index, or the memory-mapped file's views

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> Graph:
        """A graph saved by :meth:`arrays`, checked (memory-mapped views stay valid while it lives).

        The arrays come from disk: :meth:`check` proves every index the walk will
        follow lies inside them before a kernel sees them (``ValueError`` if not).
        """
        want = {"neighbors": np.int32, "offsets": np.uint64, "cum": np.int32, "levels": np.int32}
        for name, dt in want.items():
            a = arrays.get(name)
            if a is None or a.dtype != dt or a.ndim != 1:
                raise ValueError(f"graph array {name!r} missing or not 1-D {np.dtype(dt).name}")
        entry, max_level = meta.get("entry"), meta.get("max_level")
        if not (isinstance(entry, int) and isinstance(max_level, int)) or isinstance(entry, bool):
            raise ValueError("graph entry point and top level must be integers")
        g = cls(arrays["neighbors"], arrays["offsets"].view(np.int64), arrays["cum"], arrays["levels"],
                entry, max_level, arrays)
        g.check()
        return g

    def check(self) -> None:
        """Raise ``ValueError`` unless the arrays form an HNSW graph whose walk stays in bounds.

        FAISS's layout: node ``i`` owns ``cum[levels[i]]`` link slots from ``offsets[i]``,
        ``cum`` counts slots before each level, links are node numbers or ``-1``. The
        descent reads level ``l`` of the entry point and of nodes with more than ``l``
        levels only (the kernel skips others), so these checks bound every read.
        """
        n = self.levels.shape[0]
        cum, levels, offsets, nb = self.cum, self.levels, self.offsets, self.neighbors
        if offsets.shape[0] != n + 1:
            raise ValueError(f"{offsets.shape[0]} node offsets for {n} nodes")
        if cum.shape[0] < 2 or cum[0] != 0 or (np.diff(cum) < 0).any() or cum[-1] > 1 << 20:
            raise ValueError("link counts per level are not a non-decreasing sequence from 0")
        if n == 0:
            if nb.shape[0] or offsets[0] != 0:
                raise ValueError("an empty graph with links")
            return
        if levels.min() < 1 or levels.max() > cum.shape[0] - 1:
            raise ValueError(f"node levels outside [1, {cum.shape[0] - 1}]")
        if offsets[0] != 0 or not np.array_equal(np.diff(offsets), cum[levels].astype(np.int64)):
            raise ValueError("node offsets do not match the nodes' levels")
        if offsets[-1] != nb.shape[0]:
            raise ValueError(f"offsets end at {offsets[-1]}, the graph has {nb.shape[0]} link slots")
        if nb.shape[0] and (nb.min() < -1 or nb.max() >= n):
            raise ValueError(f"links to nodes outside [0, {n})")
        if not 0 <= self.entry < n or self.max_level != int(levels[self.entry]) - 1:
            raise ValueError(f"entry point {self.entry} (top level {self.max_level}) is not a top node")

    def arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """The graph as named arrays and meta, for ``hyperret.storage.arrays``."""
        return ({"neighbors": self.neighbors, "offsets": self.offsets.view(np.uint64), "cum": self.cum,
                 "levels": self.levels}, {"entry": self.entry, "max_level": self.max_level})

    def into(self, index: faiss.Index) -> None:
        """Install this graph into an empty FAISS HNSW index of the same M."""
        h = faiss.downcast_index(index).hnsw
        if not np.array_equal(faiss.vector_to_array(h.cum_nneighbor_per_level), self.cum):
            raise ValueError("graph and index differ in their neighbours per level")
        faiss.copy_array_to_vector(np.ascontiguousarray(self.neighbors), h.neighbors)
        faiss.copy_array_to_vector(np.ascontiguousarray(self.offsets).view(np.uint64), h.offsets)
        faiss.copy_array_to_vector(np.ascontiguousarray(self.levels), h.levels)
        h.entry_point, h.max_level = self.entry, self.max_level

    @classmethod
    def of(cls, index: faiss.Index) -> Graph:
        h = faiss.downcast_index(index).hnsw

        def view(vec):
            return faiss.rev_swig_ptr(vec.data(), vec.size()) if vec.size() else np.zeros(0, np.int32)

        offsets = view(h.offsets).view(np.int64)  # size_t values < 2**63: reinterpret, no copy
        return cls(view(h.neighbors), offsets, view(h.cum_nneighbor_per_level), view(h.levels),
                   int(h.entry_point), int(h.max_level), index)


@njit(cache=True, fastmath=FASTMATH)  # no Numba inlining: it would compile the loop without fastmath
def gap32(q, nq, qt, x, nx, inv_c):
    """The gap ``-<q, x>_L - 1/c >= 0`` of a query (``|q|^2 = nq``, time ``qt``) and a row (``|x|^2 = nx``).

    A monotone transform of the geodesic distance, without cancellation:
    ``(|q - x|^2 - (q_t - x_t)^2) / 2`` with ``q_t - x_t = (nq - nx) / (q_t + x_t)``.
    Navigation order only (float32 rows and sums, float64 after): the rerank decides.
    """
    d2 = np.float32(0.0)
    for j in range(q.shape[0]):
        t = q[j] - x[j]
        d2 += t * t
    d2 = np.float64(d2)
    t = (nq - nx) / (qt + math.sqrt(inv_c + nx))
    return max(0.5 * (d2 - t * t), 0.0)


@njit(cache=True, fastmath=FASTMATH)  # no Numba inlining: it would compile the loop without fastmath
def gap_query(q, nq, qt, x, inv_c):
    """:func:`gap32` of a query and a row whose norm is computed in the same pass."""
    d2 = np.float32(0.0)
    nx = np.float32(0.0)
    for j in range(q.shape[0]):
        xj = x[j]
        t = q[j] - xj
        d2 += t * t
        nx += xj * xj
    d2 = np.float64(d2)
    nx = np.float64(nx)
    t = (nq - nx) / (qt + math.sqrt(inv_c + nx))
    return max(0.5 * (d2 - t * t), 0.0)


@njit(cache=True, fastmath=FASTMATH)  # no Numba inlining: it would compile the loop without fastmath
def gap_code(qs, c0, nq, qt, code, nx, inv_c):
    """:func:`gap32` with ``q.x = |x| (c0 + qs.code)`` from 8-bit direction codes (``qs = q step``, ``c0 = q.lo``)."""
    dot = np.float32(0.0)
    for j in range(qs.shape[0]):
        dot += qs[j] * np.float32(code[j])
    d2 = nq + nx - 2.0 * math.sqrt(nx) * (np.float64(dot) + c0)  # the codes hold the direction x / |x|
    t = (nq - nx) / (qt + math.sqrt(inv_c + nx))
    return max(0.5 * (d2 - t * t), 0.0)


@njit(cache=True, inline="always")
def _walk_gap(q, nq, qt, qs, c0, codes, sqn, bases, offsets_rows, nb, inv_c):
    """The walk's gap to row ``nb``: from its codes when the graph has them, else from the float32 row."""
    if codes.shape[0] > 0:
        return gap_code(qs, c0, nq, qt, codes[nb], np.float64(sqn[nb]), inv_c)
    return gap_query(q, nq, qt, row_view(bases, offsets_rows, nb, q.shape[0]), inv_c)


@njit(cache=True, inline="always")
def _walk_prefetch(codes, bases, offsets_rows, nb, dim):
    if codes.shape[0] > 0:
        prefetch(codes[nb].ctypes.data, dim)
    else:
        prefetch_row(bases, offsets_rows, nb, dim)


#: Rows a walk keeps loading ahead of the one whose distance it computes.
PREFETCH_AHEAD = 4


@njit(cache=True, nogil=True)
def _search_one(q, bases, offsets_rows, neighbors, node_off, cum, levels, entry, max_level, inv_c, ef, skip,
                codes, lo, step, sqn, mark, tag, out):
    """Beam search for one query; writes the ``len(out)`` best rows not skipped into ``out`` -> evaluations."""
    dim = q.shape[0]
    nq = sqnorm(q)
    qt = math.sqrt(inv_c + nq)
    qs = np.empty(dim, dtype=np.float32)
    c0 = 0.0
    if codes.shape[0] > 0:
        for j in range(dim):
            qs[j] = q[j] * step[j]
            c0 += np.float64(q[j]) * np.float64(lo[j])

    ep = entry
    d_ep = _walk_gap(q, nq, qt, qs, c0, codes, sqn, bases, offsets_rows, ep, inv_c)
    evals = 1
    for level in range(max_level, 0, -1):  # greedy descent through the upper layers
        changed = True
        while changed:
            changed = False
            start = node_off[ep] + cum[level]
            stop = node_off[ep] + cum[level + 1]
            for s in range(start, stop):
                nb = neighbors[s]
                if nb < 0:
                    break
                if levels[nb] <= level:  # not in this layer (FAISS never links so; a crafted file might)
                    continue
                d = _walk_gap(q, nq, qt, qs, c0, codes, sqn, bases, offsets_rows, nb, inv_c)
                evals += 1
                if d < d_ep:
                    ep, d_ep, changed = nb, d, True
    return evals + _beam0(q, nq, qt, qs, c0, codes, sqn, ep, d_ep, bases, offsets_rows, neighbors, node_off, cum,
                          inv_c, ef, skip, mark, tag, out)


@njit(cache=True, nogil=True)
def _beam0(q, nq, qt, qs, c0, codes, sqn, ep, d_ep, bases, offsets_rows, neighbors, node_off, cum, inv_c, ef, skip,
           mark, tag, out):
    """Level-0 beam search from node ``ep`` (gap ``d_ep``); writes the ``len(out)`` best rows -> evaluations.

    ``mark[node] == tag`` means visited (an int32 stamp array reused with a new
    ``tag`` per walk). ``skip``: ``(n,)`` uint8, nonzero rows are walked through
    but never returned (deleted, filtered out); empty: none skipped. ``codes``
    (``(n, D)`` uint8, or empty: the float32 rows) with ``qs``/``c0``/``sqn``: see
    :func:`gap_code`.
    """
    dim = q.shape[0]
    masked = skip.shape[0] > 0
    cap = ef + 1
    heap = min(mark.shape[0], 64 * cap)
    cand_d = np.empty(heap, dtype=np.float64)  # min-heap: frontier
    cand_i = np.empty(heap, dtype=np.int64)
    res_d = np.empty(ef, dtype=np.float64)  # max-heap: best ef so far
    res_i = np.empty(ef, dtype=np.int64)
    fresh = np.empty(cum[1] - cum[0], dtype=np.int64)
    nc = 1
    nr = 0
    evals = 0
    cand_d[0], cand_i[0] = d_ep, ep
    if not (masked and skip[ep]):
        res_d[0], res_i[0] = d_ep, ep
        nr = 1
    mark[ep] = tag
    while nc > 0:
        d_c, c, nc = pop_min(cand_d, cand_i, nc)
        if nr >= ef and d_c > res_d[0]:
            break
        todo = 0
        for s in range(node_off[c] + cum[0], node_off[c] + cum[1]):  # the unvisited neighbours
            nb = neighbors[s]
            if nb < 0:
                break
            if mark[nb] != tag:
                mark[nb] = tag
                fresh[todo] = nb
                todo += 1
        for j in range(min(todo, PREFETCH_AHEAD)):
            _walk_prefetch(codes, bases, offsets_rows, fresh[j], dim)
        for j in range(todo):
            if j + PREFETCH_AHEAD < todo:  # keep a few rows in flight while this one is computed
                _walk_prefetch(codes, bases, offsets_rows, fresh[j + PREFETCH_AHEAD], dim)
            nb = fresh[j]
            d = _walk_gap(q, nq, qt, qs, c0, codes, sqn, bases, offsets_rows, nb, inv_c)
            evals += 1
            if nr < ef or d < res_d[0]:
                nc = push_min(cand_d, cand_i, nc, d, nb)
                if not (masked and skip[nb]):
                    nr = keep_smallest(res_d, res_i, nr, d, nb)
    order = np.argsort(res_d[:nr], kind="mergesort")
    for j in range(min(out.shape[0], nr)):
        out[j] = res_i[order[j]]
    return evals


@njit(cache=True, parallel=True, nogil=True)
def _search_batch(queries, bases, offsets_rows, neighbors, node_off, cum, levels, entry, max_level, curv, ef, skip,
                  codes, lo, step, sqn, chunks, out, evals):
    n = levels.shape[0]
    m = queries.shape[0]
    for c in prange(chunks):
        mark = np.zeros(n, dtype=np.int32)
        first = m * c // chunks
        for i in range(first, m * (c + 1) // chunks):
            evals[i] = _search_one(queries[i], bases, offsets_rows, neighbors, node_off, cum, levels, entry,
                                   max_level, 1.0 / curv, ef, skip, codes, lo, step, sqn, mark, np.int32(i - first + 1),
                                   out[i])


@njit(cache=True, nogil=True)
def _search_serial(queries, bases, offsets_rows, neighbors, node_off, cum, levels, entry, max_level, curv, ef, skip,
                   codes, lo, step, sqn, chunks, out, evals):
    mark = np.zeros(levels.shape[0], dtype=np.int32)
    for i in range(queries.shape[0]):
        evals[i] = _search_one(queries[i], bases, offsets_rows, neighbors, node_off, cum, levels, entry, max_level,
                               1.0 / curv, ef, skip, codes, lo, step, sqn, mark, np.int32(i + 1), out[i])


_NO_SKIP = np.zeros(0, dtype=np.uint8)
_NO_CODES = np.zeros((0, 1), dtype=np.uint8)
_NO_NORMS = np.zeros(0, dtype=np.float32)


def _code_args(codes: Codes | None, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernels' ``codes, lo, step, sqn``; empty arrays walk the float32 rows."""
    if codes is None:
        none = np.zeros(0, np.float32)
        return np.zeros((0, dim), np.uint8), np.zeros(dim, np.float32), np.ones(dim, np.float32), none
    if codes.codes.shape[1] != dim:
        raise ValueError(f"navigation codes of dimension {codes.codes.shape[1]} for queries of {dim}")
    return codes.codes, codes.lo, codes.step, codes.sqnorm


def search(graph: Graph, queries: np.ndarray, shards: ShardSet, curv: float, kc: int, ef: int,
           skip: np.ndarray | None = None, evals: np.ndarray | None = None, codes: Codes | None = None) -> np.ndarray:
    """Candidate rows ``(m, kc)`` int64 (``-1`` padded) for ``queries: (m, dim)`` float32.

    ``ef``: beam width (at least ``kc`` is used). ``skip: (n,)`` uint8/bool, nonzero
    rows never returned. ``evals: (m,)`` int64, if given, receives the distance
    evaluations of each query (the walk's cost). ``codes``: the graph's 8-bit
    navigation codes (:mod:`hyperret.search.codes`), read instead of the rows.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.full((q.shape[0], kc), -1, dtype=np.int64)
    if evals is None:
        evals = np.zeros(q.shape[0], dtype=np.int64)
    if q.shape[0] == 0 or graph.levels.shape[0] == 0:
        return out
    mask = _NO_SKIP if skip is None else np.ascontiguousarray(skip).view(np.uint8)
    if len(mask) and len(mask) != graph.levels.shape[0]:
        raise ValueError(f"skip mask of {len(mask)} rows for a graph of {graph.levels.shape[0]}")
    chunks = min(q.shape[0], 4 * numba.get_num_threads())
    parallel.run(_search_serial, _search_batch, q.shape[0],
                 q, shards.bases, shards.offsets, graph.neighbors, graph.offsets, graph.cum, graph.levels,
                 graph.entry, graph.max_level, float(curv), max(int(ef), kc, 1), mask, *_code_args(codes, q.shape[1]),
                 chunks, out, evals)
    return out


@njit(cache=True, nogil=True)
def _walk_one(g0, dim, bases, offsets_rows, neighbors, node_off, cum, curv, ef, skip, stamp, tag, out):
    """Beam search at level 0 for stored row ``g0`` from its own node; writes the ``len(out)`` best rows.

    A stored row needs no descent from the entry point: its near neighbours are a
    few links away. ``stamp`` (per thread, ``(n,)`` int32) marks visited nodes with
    ``tag``, so no ``(n,)`` array is allocated per row when every row is a query.
    """
    inv_c = 1.0 / curv
    q = row_view(bases, offsets_rows, g0, dim)
    nq = sqnorm(q)
    qt = math.sqrt(inv_c + nq)
    _beam0(q, nq, qt, q, 0.0, _NO_CODES, _NO_NORMS, g0, 0.0, bases, offsets_rows, neighbors, node_off, cum, inv_c, ef,
           skip, stamp, tag, out)


@njit(cache=True, parallel=True, nogil=True)
def _walk_rows(rows, dim, bases, offsets_rows, neighbors, node_off, cum, curv, ef, n, chunks, out):
    for c in prange(chunks):
        stamp = np.zeros(n, dtype=np.int32)
        lo = rows.shape[0] * c // chunks
        hi = rows.shape[0] * (c + 1) // chunks
        for i in range(lo, hi):
            _walk_one(rows[i], dim, bases, offsets_rows, neighbors, node_off, cum, curv, ef, _NO_SKIP, stamp,
                      i - lo + 1, out[i])


def walk_from_rows(graph: Graph, rows: np.ndarray, shards: ShardSet, curv: float, kc: int, ef: int) -> np.ndarray:
    """Candidate rows ``(m, kc)`` int64 (``-1`` padded) near stored ``rows: (m,)``, each walk starting at its row."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    out = np.full((len(rows), kc), -1, dtype=np.int64)
    if len(rows) == 0 or graph.levels.shape[0] == 0:
        return out
    _walk_rows(rows, shards.dim, shards.bases, shards.offsets, graph.neighbors, graph.offsets, graph.cum,
               float(curv), max(int(ef), kc), int(graph.levels.shape[0]),
               min(len(rows), 4 * numba.get_num_threads()), out)
    return out
