"""numba.cuda kernels of the exact search: gaps, a block top-k in shared memory, the stable distance.

Every selection works on the gap ``-<q, x>_L - 1/c`` in the cancellation-free form of
:mod:`hyperret.search.scan` (``(|q|^2 + |x|^2 - 2 q.x - ((|q|^2 - |x|^2) / (q_t + x_t))^2) / 2``),
a monotone transform of the geodesic distance. A block loads ``CHUNK`` (gap, row)
pairs into shared memory, sorts them by (gap, row) with a bitonic network and keeps
the first ``kc``: one pass turns ``L`` pairs per query into ``ceil(L / CHUNK) * kc``,
and passes repeat until one block holds them all (``kc <= CHUNK / 2``, so each pass at
least halves them). The rerank kernel computes the exact distance of
:func:`hyperret.kernels.distance.gap_row` in float64, one thread per candidate.

Rows are read coalesced: a block's threads load a tile of ``THREADS`` rows by ``DIMS``
dimensions into shared memory together (neighbouring threads, neighbouring bytes of
one row), then each thread works on its own row of the tile. Skipped and missing
rows are never read.

Under Numba's simulator (CI) the blocks are small, so tests cross block and pass
boundaries with a few hundred rows.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .device import simulated

#: (gap, row) pairs one block sorts in shared memory, and its threads
CHUNK, THREADS = (64, 8) if simulated() else (2048, 256)
#: the most candidates a pass keeps per block: larger requests run on the CPU kernels
MAX_KC = CHUNK // 2
#: the longest query vector the fused scan and the rerank hold in shared memory (longer: CPU kernels)
MAX_DIM = 2048
#: the tiled matrix product's tile edge (the portable fallback of a library GEMM)
TILE = 4 if simulated() else 16
#: dimensions per row tile: a block reads ``THREADS`` rows ``x DIMS`` coalesced into shared memory
DIMS = 4 if simulated() else 16
#: device rows are addressed with int32 inside the kernels' shared memory
MAX_ROWS = 2**31 - 1


@cuda.jit(device=True)
def gap_of(dot, qn, qt, xn, xt):
    """Gap of a row (``|x|^2 = xn``, time ``xt``) to a query (``qn``, ``qt``) from their float32 product ``dot``."""
    r = (qn - xn) / (qt + xt)
    return 0.5 * (qn + xn - r * r) - np.float64(dot)


@cuda.jit(device=True)
def _sort_chunk(keys, ids):
    """Sort the shared ``keys``/``ids`` (``CHUNK`` each) by (key, id), all threads of the block together."""
    tid = cuda.threadIdx.x
    size = 2
    while size <= CHUNK:
        stride = size // 2
        while stride > 0:
            for t in range(tid, CHUNK // 2, THREADS):
                i = 2 * t - (t & (stride - 1))
                j = i + stride
                up = (i & size) == 0
                a = keys[i]
                b = keys[j]
                after = a > b or (a == b and ids[i] > ids[j])
                if after == up:
                    keys[i] = b
                    keys[j] = a
                    tmp = ids[i]
                    ids[i] = ids[j]
                    ids[j] = tmp
            cuda.syncthreads()
            stride //= 2
        size *= 2


@cuda.jit(device=True)
def _keep_first(keys, ids, kc, out_keys, out_ids, i, col):
    """After the sort: the block's first ``kc`` pairs to ``out_*[i, col:col + kc]``."""
    for t in range(cuda.threadIdx.x, kc, THREADS):
        out_keys[i, col + t] = keys[t]
        out_ids[i, col + t] = ids[t]


@cuda.jit(device=True)
def _load_tile(tile, rows, gl, d0, d):
    """Shared ``tile[r, c] = rows[gl[r], d0 + c]`` (0 where ``gl[r] < 0`` or past ``d``), read coalesced."""
    for e in range(cuda.threadIdx.x, THREADS * DIMS, THREADS):
        r = e // DIMS
        c = e - r * DIMS
        g = gl[r]
        j = d0 + c
        tile[r, c] = np.float32(rows[g, j]) if g >= 0 and j < d else np.float32(0.0)


@cuda.jit(device=True)
def _load_query(qs, q, i):
    """Query ``q[i]`` into shared ``qs`` (all threads)."""
    for j in range(cuda.threadIdx.x, q.shape[1], THREADS):
        qs[j] = q[i, j]
    cuda.syncthreads()


@cuda.jit
def scan_fused(q, qn, qt, rows, xn, xt, n, skip, use_skip, kc, out_keys, out_ids):
    """Gaps of query ``blockIdx.y`` to rows ``blockIdx.x * CHUNK ..`` from the rows themselves, top ``kc`` kept.

    ``q: (m, D)`` float32; ``qn, qt: (m,)`` float64 (|q|^2, time); ``rows: (>= n, D)``
    float32 or float16; ``xn, xt: (n,)`` float64; ``skip: (n,)`` uint8 (nonzero: left
    out) read when ``use_skip``; out ``(m, blocks * kc)`` float32 gaps / int64 rows.
    """
    keys = cuda.shared.array(CHUNK, np.float32)
    ids = cuda.shared.array(CHUNK, np.int32)
    qs = cuda.shared.array(MAX_DIM, np.float32)
    tile = cuda.shared.array((THREADS, DIMS + 1), np.float32)  # +1: no bank conflicts down a column
    gl = cuda.shared.array(THREADS, np.int64)
    i = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    d = q.shape[1]
    _load_query(qs, q, i)
    base = cuda.blockIdx.x * CHUNK
    for sub in range(0, CHUNK, THREADS):
        g = base + sub + tid
        ok = g < n and not (use_skip and skip[g] != 0)
        gl[tid] = g if ok else -1
        cuda.syncthreads()
        acc = np.float32(0.0)
        for d0 in range(0, d, DIMS):
            _load_tile(tile, rows, gl, d0, d)
            cuda.syncthreads()
            for c in range(min(DIMS, d - d0)):
                acc += qs[d0 + c] * tile[tid, c]
            cuda.syncthreads()
        keys[sub + tid] = np.float32(gap_of(acc, qn[i], qt[i], xn[g], xt[g])) if ok else np.float32(math.inf)
        ids[sub + tid] = g if ok else -1
    cuda.syncthreads()
    _sort_chunk(keys, ids)
    _keep_first(keys, ids, kc, out_keys, out_ids, i, cuda.blockIdx.x * kc)


@cuda.jit
def gaps_select(dots, qn, qt, xn, xt, start, count, skip, use_skip, kc, out_keys, out_ids, out_block0):
    """As :func:`scan_fused` for rows ``start .. start + count`` given their products ``dots: (m, count)``.

    Writes block ``b`` of the tile at output block ``out_block0 + b``.
    """
    keys = cuda.shared.array(CHUNK, np.float32)
    ids = cuda.shared.array(CHUNK, np.int32)
    i = cuda.blockIdx.y
    base = cuda.blockIdx.x * CHUNK
    for t in range(cuda.threadIdx.x, CHUNK, THREADS):
        c = base + t
        key = np.float32(math.inf)
        row = np.int64(-1)
        if c < count:
            g = start + c
            if not (use_skip and skip[g] != 0):
                key = np.float32(gap_of(dots[i, c], qn[i], qt[i], xn[g], xt[g]))
                row = g
        keys[t] = key
        ids[t] = row
    cuda.syncthreads()
    _sort_chunk(keys, ids)
    _keep_first(keys, ids, kc, out_keys, out_ids, i, (out_block0 + cuda.blockIdx.x) * kc)


@cuda.jit
def select_pass(in_keys, in_ids, kc, out_keys, out_ids):
    """One reduction pass: each block's ``CHUNK`` pairs of ``in_*: (m, L)`` -> its ``kc`` smallest."""
    keys = cuda.shared.array(CHUNK, np.float32)
    ids = cuda.shared.array(CHUNK, np.int32)
    i = cuda.blockIdx.y
    base = cuda.blockIdx.x * CHUNK
    length = in_keys.shape[1]
    for t in range(cuda.threadIdx.x, CHUNK, THREADS):
        c = base + t
        if c < length:
            keys[t] = in_keys[i, c]
            ids[t] = in_ids[i, c]
        else:
            keys[t] = np.float32(math.inf)
            ids[t] = np.int64(-1)
    cuda.syncthreads()
    _sort_chunk(keys, ids)
    _keep_first(keys, ids, kc, out_keys, out_ids, i, cuda.blockIdx.x * kc)


@cuda.jit
def dots_tiled(q, rows, start, count, out):
    """``out[i, c] = q[i] . rows[start + c]`` for ``c < count``: float32 products in shared-memory tiles."""
    qa = cuda.shared.array((TILE, TILE), np.float32)
    ra = cuda.shared.array((TILE, TILE), np.float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    i = cuda.blockIdx.y * TILE + ty  # query
    c = cuda.blockIdx.x * TILE + tx  # row of the tile (output column)
    rc = cuda.blockIdx.x * TILE + ty  # the row this thread loads
    m = q.shape[0]
    d = q.shape[1]
    acc = np.float32(0.0)
    for k0 in range(0, d, TILE):
        qa[ty, tx] = q[i, k0 + tx] if i < m and k0 + tx < d else np.float32(0.0)
        ra[ty, tx] = np.float32(rows[start + rc, k0 + tx]) if rc < count and k0 + tx < d else np.float32(0.0)
        cuda.syncthreads()
        for kk in range(TILE):
            acc += qa[ty, kk] * ra[tx, kk]
        cuda.syncthreads()
    if i < m and c < count:
        out[i, c] = acc


@cuda.jit
def row_norms(rows, start, count, inv_c, xn, xt):
    """``xn = |x|^2`` (float64) and ``xt = sqrt(1/c + |x|^2)`` of rows ``start .. start + count``."""
    c = cuda.grid(1)
    if c < count:
        g = start + c
        s = 0.0
        for j in range(rows.shape[1]):
            v = np.float64(rows[g, j])
            s += v * v
        xn[g] = s
        xt[g] = math.sqrt(inv_c + s)


@cuda.jit
def rerank_distances(q, rq, tq, rows, n, cand, skip, use_skip, inv_c, curv, out):
    """Exact distances ``out: (m, kc)`` float64 of candidates ``cand: (m, kc)`` (``inf``: none, or skipped).

    The formula of :func:`hyperret.kernels.distance.gap_row`, term for term, in float64:
    one pass for ``|x|^2`` and ``|x|^2 - |q|^2``, a second for the direction term
    (it needs both norms first). Thread = candidate ``blockIdx.x * THREADS + threadIdx.x``
    of query ``blockIdx.y``; the rows are read in coalesced tiles.
    """
    qs = cuda.shared.array(MAX_DIM, np.float32)
    tile = cuda.shared.array((THREADS, DIMS + 1), np.float32)
    gl = cuda.shared.array(THREADS, np.int64)
    i = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    d = q.shape[1]
    _load_query(qs, q, i)
    j = cuda.blockIdx.x * THREADS + tid
    g = cand[i, j] if j < cand.shape[1] else -1
    ok = g >= 0 and g < n and not (use_skip and skip[g] != 0)
    gl[tid] = g if ok else -1
    cuda.syncthreads()
    rx2 = 0.0
    num = 0.0
    for d0 in range(0, d, DIMS):
        _load_tile(tile, rows, gl, d0, d)
        cuda.syncthreads()
        for c in range(min(DIMS, d - d0)):
            xj = np.float64(tile[tid, c])
            qj = np.float64(qs[d0 + c])
            rx2 += xj * xj
            num += (xj - qj) * (xj + qj)
        cuda.syncthreads()
    qn = rq[i]
    rx = math.sqrt(rx2)
    tx = math.sqrt(inv_c + rx2)
    p = rx + qn
    t = tx + tq[i]
    drho = num / p if p > 0.0 else 0.0
    m = drho * drho * (inv_c / (tx + rx) + inv_c / (tq[i] + qn)) * (t + p) / (t * t)
    den = rx * qn * p
    angular = rx > 0.0 and qn > 0.0 and den > 0.0
    corr = num / den if angular else 0.0
    x_larger = rx >= qn  # divide by the larger norm, correct with the smaller point: no cancellation
    inv = 1.0 / (rx if x_larger else qn) if angular else 0.0
    s = 0.0
    for d0 in range(0, d, DIMS):  # every thread runs the loop: the tiles are loaded together
        _load_tile(tile, rows, gl, d0, d)
        cuda.syncthreads()
        for c in range(min(DIMS, d - d0)):
            xj = np.float64(tile[tid, c])
            qj = np.float64(qs[d0 + c])
            du = (xj - qj) * inv - (qj if x_larger else xj) * corr
            s += du * du
        cuda.syncthreads()
    if angular:
        m += rx * qn * s
    if j < cand.shape[1]:
        out[i, j] = (2.0 / math.sqrt(curv)) * math.asinh(math.sqrt(curv * m) / 2.0) if ok else math.inf
