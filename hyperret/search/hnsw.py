"""An HNSW graph built in the exact hyperbolic metric (Numba), in FAISS's array layout.

Every comparison the build makes (which candidates are nearest, which links a
heuristic prune keeps) uses the *gap* ``g(x, y) = -<x, y>_L - 1/c``, a monotone
transform of the geodesic distance (``g = (cosh(sqrt(c) d) - 1) / c``), computed
without cancellation as ``(|x - y|^2 - (x_t - y_t)^2) / 2`` with
``x_t - y_t = (|x|^2 - |y|^2) / (x_t + y_t)``. So the graph's links are those an
HNSW built in the true metric keeps, not those of a Euclidean proxy.

The build inserts rows in batches that grow with the graph (1, 2, ... up to
``BATCH_FRACTION`` of the rows inserted so far): each node of a batch searches the
graph as it stood before the batch and picks its links (in parallel, each writing
only its own slots); then the reverse links are added, one thread per receiving
node, re-pruning a full list. Appending rows is the same loop continued, on a copy
of the arrays. The result is a :class:`hyperret.search.graph.Graph`, walked by the
same kernels and saved in the same file as a FAISS-built one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numba
import numpy as np
from numba import njit, prange

from ..kernels.heap import keep_smallest, pop_min, push_min
from ..kernels.rows import prefetch_row, row_view
from ..storage.shardset import ShardSet
from .graph import Graph, gap32

#: A batch holds at most this fraction of the rows already in the graph (and >= 1 row).
BATCH_FRACTION = 0.02
#: Vamana's pruning relaxation on geodesic distances (1.0: HNSW's heuristic).
ALPHA = 1.0
#: Rows per progress report (the build reports after each batch of at least this many rows).
_REPORT_ROWS = 20_000

Progress = Callable[[int], None]


def links_per_level(m: int, levels: int) -> np.ndarray:
    """FAISS's ``cum_nneighbor_per_level``: link slots before each level, ``2m`` at level 0, ``m`` above."""
    cum = np.zeros(levels + 1, dtype=np.int32)
    for lv in range(levels):
        cum[lv + 1] = cum[lv] + (2 * m if lv == 0 else m)
    return cum


def draw_levels(n: int, m: int, seed: int) -> np.ndarray:
    """Levels of ``n`` new nodes -> ``(n,)`` int32 >= 1 (HNSW's geometric law, ``1/ln m`` per level)."""
    u = np.random.default_rng(seed).random(n)
    lv = np.floor(-np.log(np.maximum(u, 1e-300)) / math.log(max(m, 2))).astype(np.int64) + 1
    return np.minimum(lv, 16).astype(np.int32)


def build(shards: ShardSet, curv: float, m: int = 32, ef_construction: int = 64, alpha: float = ALPHA,
          seed: int = 1234, progress: Progress | None = None) -> Graph:
    """An HNSW graph over every row of ``shards`` (node ``i`` = row ``i``), built in the exact metric."""
    n = shards.rows
    levels = draw_levels(n, m, seed)
    cum = links_per_level(m, int(levels.max()) if n else 1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(cum[levels].astype(np.int64), out=offsets[1:])
    neighbors = np.full(int(offsets[-1]), -1, dtype=np.int32)
    if n == 0:
        return Graph(neighbors, offsets, cum, levels, 0, 0, None)
    entry, max_level = _insert(shards, curv, m, ef_construction, alpha, neighbors, offsets, cum, levels, 0, 0, -1,
                               progress)
    return Graph(neighbors, offsets, cum, levels, entry, max_level, None)


def extend(g: Graph, shards: ShardSet, curv: float, m: int, ef_construction: int = 64, alpha: float = ALPHA,
           seed: int = 1234, progress: Progress | None = None) -> Graph:
    """A new graph: ``g`` (untouched; its nodes are the first rows of ``shards``) plus every further row."""
    old, n = int(g.levels.shape[0]), shards.rows
    if n < old:
        raise ValueError(f"the graph has {old} nodes, the rows only {n}")
    if int(g.cum[1]) != 2 * m:
        raise ValueError(f"the graph has {int(g.cum[1])} links at level 0, not 2M = {2 * m}")
    new_levels = draw_levels(n - old, m, seed + old)
    top = max(int(g.cum.shape[0]) - 1, int(new_levels.max()) if n > old else 1)
    cum = links_per_level(m, top)
    if not np.array_equal(cum[: g.cum.shape[0]], g.cum):
        raise ValueError("the graph's link slots per level are not HNSW's (2M, M, M, ...)")
    levels = np.concatenate([g.levels, new_levels])
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[: old + 1] = g.offsets
    np.cumsum(cum[new_levels].astype(np.int64), out=offsets[old + 1 :])
    offsets[old + 1 :] += offsets[old]
    neighbors = np.full(int(offsets[-1]), -1, dtype=np.int32)
    neighbors[: g.neighbors.shape[0]] = g.neighbors
    if old == 0:
        entry, max_level = _insert(shards, curv, m, ef_construction, alpha, neighbors, offsets, cum, levels, 0, 0, -1,
                                   progress)
    else:
        entry, max_level = _insert(shards, curv, m, ef_construction, alpha, neighbors, offsets, cum, levels, old,
                                   g.entry, g.max_level, progress)
    return Graph(neighbors, offsets, cum, levels, entry, max_level, None)


def _insert(shards: ShardSet, curv: float, m: int, efc: int, alpha: float, neighbors: np.ndarray, offsets: np.ndarray,
            cum: np.ndarray, levels: np.ndarray, start: int, entry: int, max_level: int,
            progress: Progress | None) -> tuple[int, int]:
    """Insert nodes ``start ..`` in growing batches; returns the new entry point and top level."""
    n = int(levels.shape[0])
    dim = shards.dim
    efc = max(int(efc), 1)
    sq = shards.sqnorms().astype(np.float32)
    threads = numba.get_num_threads()
    stamps = np.zeros((threads, n), dtype=np.int32)
    tags = np.zeros(threads, dtype=np.int64)
    done = start
    if max_level < 0:  # an empty graph: the first node is the entry, with no links
        entry, max_level, done = 0, int(levels[0]) - 1, 1
    reported = done
    while done < n:
        size = max(1, min(n - done, int(done * BATCH_FRACTION)))
        stop = done + size
        chunks = min(threads, size)
        _link_batch(done, stop, chunks, shards.bases, shards.offsets, dim, sq, neighbors, offsets, cum, levels,
                    entry, max_level, 1.0 / curv, m, efc, alpha, stamps, tags)
        v, lv, u = _reverse_pairs(done, stop, neighbors, offsets, cum, levels)
        if len(v):
            order = np.lexsort((u, lv, v))
            v, lv, u = v[order], lv[order], u[order]
            bounds = np.flatnonzero(np.diff(v * 64 + lv)) + 1
            starts = np.concatenate([[0], bounds]).astype(np.int64)
            ends = np.concatenate([bounds, [len(v)]]).astype(np.int64)
            _add_reverse(v, lv, u, starts, ends, shards.bases, shards.offsets, dim, sq, neighbors, offsets, cum,
                         1.0 / curv, m, alpha)
        top = int(levels[done:stop].max()) - 1
        if top > max_level:
            entry, max_level = done + int(np.argmax(levels[done:stop])), top
        done = stop
        if progress is not None and (done - reported >= _REPORT_ROWS or done == n):
            progress(done - reported)
            reported = done
    return entry, max_level


@njit(cache=True, inline="always")
def _geodesic(gap, inv_c):
    """Geodesic distance of a gap ``g = (cosh(sqrt(c) d) - 1) / c`` (``inv_c = 1/c``)."""
    return math.acosh(1.0 + gap / inv_c) * math.sqrt(inv_c)


@njit(cache=True, inline="always")
def _pair(bases, offsets_rows, dim, sq, a, b, inv_c):
    """The gap of stored rows ``a`` and ``b``."""
    xa = row_view(bases, offsets_rows, a, dim)
    xb = row_view(bases, offsets_rows, b, dim)
    return gap32(xa, sq[a], math.sqrt(inv_c + sq[a]), xb, sq[b], inv_c)


@njit(cache=True, nogil=True)
def _search_level(u, ep, d_ep, level, bases, offsets_rows, dim, sq, neighbors, node_off, cum, inv_c, ef,
                  mark, tag, out_d, out_i):
    """Beam search at ``level`` for stored row ``u`` from node ``ep``; the found nodes, nearest first -> count."""
    x = row_view(bases, offsets_rows, u, dim)
    nx = sq[u]
    xt = math.sqrt(inv_c + nx)
    cap = ef + 1
    size = 64 * cap
    cand_d = np.empty(size, dtype=np.float32)
    cand_i = np.empty(size, dtype=np.int64)
    res_d = np.empty(ef, dtype=np.float32)
    res_i = np.empty(ef, dtype=np.int64)
    nc, nr = 1, 1
    cand_d[0], cand_i[0], res_d[0], res_i[0] = d_ep, ep, d_ep, ep
    mark[ep] = tag
    lo, hi = cum[level], cum[level + 1]
    while nc > 0:
        d_c, c, nc = pop_min(cand_d, cand_i, nc)
        if nr >= ef and d_c > res_d[0]:
            break
        for s in range(node_off[c] + lo, node_off[c] + hi):
            nb = neighbors[s]
            if nb < 0:
                break
            if mark[nb] != tag:
                prefetch_row(bases, offsets_rows, nb, dim)
        for s in range(node_off[c] + lo, node_off[c] + hi):
            nb = neighbors[s]
            if nb < 0:
                break
            if mark[nb] == tag:
                continue
            mark[nb] = tag
            d = gap32(x, nx, xt, row_view(bases, offsets_rows, nb, dim), sq[nb], inv_c)
            if nr < ef or d < res_d[0]:
                nc = push_min(cand_d, cand_i, nc, d, nb)
                nr = keep_smallest(res_d, res_i, nr, d, nb)
    order = np.argsort(res_d[:nr], kind="mergesort")
    for j in range(nr):
        out_d[j] = res_d[order[j]]
        out_i[j] = res_i[order[j]]
    return nr


@njit(cache=True, nogil=True)
def _select(base, cand_d, cand_i, count, keep, bases, offsets_rows, dim, sq, inv_c, alpha, out):
    """HNSW's heuristic: candidates (nearest first) kept unless ``alpha`` times nearer a kept one than ``base``.

    ``alpha > 1`` (Vamana's relaxation, on geodesic distances) keeps more long
    links, so points far from the origin, whose neighbours all lie inward, stay
    reachable. Returns the count kept.

    Writes the kept nodes into ``out`` (``keep`` slots, ``-1`` padded).
    """
    kept = 0
    for a in range(count):
        c = cand_i[a]
        if c == base:
            continue
        good = True
        reach = _geodesic(cand_d[a], inv_c) / alpha  # kept links nearer c than this make it redundant
        for b in range(kept):
            if _geodesic(_pair(bases, offsets_rows, dim, sq, c, out[b], inv_c), inv_c) < reach:
                good = False
                break
        if good:
            out[kept] = c
            kept += 1
            if kept >= keep:
                break
    for b in range(kept, out.shape[0]):
        out[b] = -1
    return kept


@njit(cache=True, parallel=True, nogil=True)
def _link_batch(first, stop, chunks, bases, offsets_rows, dim, sq, neighbors, node_off, cum, levels, entry,
                max_level, inv_c, m, efc, alpha, stamps, tags):
    """Links of nodes ``first .. stop`` to the graph as it stood before them (each writes its own slots)."""
    size = stop - first
    for c in prange(chunks):
        mark = stamps[c]
        found_d = np.empty(efc + 1, dtype=np.float32)
        found_i = np.empty(efc + 1, dtype=np.int64)
        for u in range(first + size * c // chunks, first + size * (c + 1) // chunks):
            ep = entry
            d_ep = _pair(bases, offsets_rows, dim, sq, u, ep, inv_c)
            top = levels[u] - 1
            for level in range(max_level, top, -1):  # greedy descent above the node's own levels
                changed = True
                while changed:
                    changed = False
                    for s in range(node_off[ep] + cum[level], node_off[ep] + cum[level + 1]):
                        nb = neighbors[s]
                        if nb < 0:
                            break
                        d = _pair(bases, offsets_rows, dim, sq, u, nb, inv_c)
                        if d < d_ep:
                            ep, d_ep, changed = nb, d, True
            for level in range(min(top, max_level), -1, -1):
                tags[c] += 1
                cnt = _search_level(u, ep, d_ep, level, bases, offsets_rows, dim, sq, neighbors, node_off, cum,
                                    inv_c, efc, mark, np.int32(tags[c] & 0x7FFFFFFF), found_d, found_i)
                slots = neighbors[node_off[u] + cum[level] : node_off[u] + cum[level + 1]]
                _select(u, found_d, found_i, cnt, 2 * m if level == 0 else m, bases, offsets_rows, dim, sq, inv_c,
                        alpha, slots)
                ep, d_ep = found_i[0], found_d[0]


@njit(cache=True, nogil=True)
def _reverse_pairs(first, stop, neighbors, node_off, cum, levels):
    """``(v, level, u)`` for every link ``u -> v`` of the nodes ``first .. stop`` -> three ``(p,)`` int64."""
    total = 0
    for u in range(first, stop):
        for s in range(node_off[u], node_off[u + 1]):
            if neighbors[s] >= 0:
                total += 1
    v = np.empty(total, dtype=np.int64)
    lv = np.empty(total, dtype=np.int64)
    us = np.empty(total, dtype=np.int64)
    p = 0
    for u in range(first, stop):
        for level in range(levels[u]):
            for s in range(node_off[u] + cum[level], node_off[u] + cum[level + 1]):
                nb = neighbors[s]
                if nb < 0:
                    break
                v[p], lv[p], us[p] = nb, level, u
                p += 1
    return v, lv, us


@njit(cache=True, parallel=True, nogil=True)
def _add_reverse(v, lv, u, starts, ends, bases, offsets_rows, dim, sq, neighbors, node_off, cum, inv_c, m, alpha):
    """Add the links ``v -> u`` of each group ``(v, level)``; a full list is re-pruned by the heuristic."""
    for g in prange(starts.shape[0]):
        a, b = starts[g], ends[g]
        node, level = v[a], lv[a]
        slots = neighbors[node_off[node] + cum[level] : node_off[node] + cum[level + 1]]
        cap = slots.shape[0]
        have = 0
        while have < cap and slots[have] >= 0:
            have += 1
        if have + (b - a) <= cap:
            for j in range(a, b):
                slots[have] = u[j]
                have += 1
            continue
        total = have + (b - a)
        cand_i = np.empty(total, dtype=np.int64)
        cand_d = np.empty(total, dtype=np.float32)
        for j in range(have):
            cand_i[j] = slots[j]
        for j in range(a, b):
            cand_i[have + j - a] = u[j]
        for j in range(total):
            cand_d[j] = _pair(bases, offsets_rows, dim, sq, node, cand_i[j], inv_c)
        order = np.argsort(cand_d, kind="mergesort")
        _select(node, cand_d[order], cand_i[order], total, cap, bases, offsets_rows, dim, sq, inv_c, alpha, slots)
