"""The exact search on a GPU: the scan and the rerank of :mod:`hyperret.search.exact`, as CUDA kernels.

Two scans, picked per call (``method``):

- ``fused``: one kernel reads each row once per query, computes its gap and keeps the
  block's ``kc`` best (:func:`~hyperret.cuda.kernels.scan_fused`): no product matrix,
  the choice for a few queries;
- ``gemm``: the products of a query batch with a tile of rows come from a matrix
  product (CuPy's cuBLAS when CuPy is installed, else a tiled Numba kernel), then a
  kernel turns them into gaps and selects (:func:`~hyperret.cuda.kernels.gaps_select`).

Both end in the same selection passes and the same float64 rerank, so both return
what the CPU kernels return: the same rows and distances within rounding. Requests
the kernels do not take (``kc`` above :data:`~hyperret.cuda.kernels.MAX_KC`, vectors
longer than :data:`~hyperret.cuda.kernels.MAX_DIM`) run on the CPU kernels instead,
counted in :attr:`CudaExact.cpu_fallbacks`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..search import exact as cpu
from ..storage.shardset import ShardSet
from . import kernels as K
from .device import Device
from .resident import Resident

METHODS = ("auto", "fused", "gemm")
#: ``auto`` runs the fused scan below this many queries per call, the matrix product from it up
FUSED_MAX_QUERIES = 16
#: device bytes one call's product tile and first-pass candidates may take
_WORK_BYTES = 1 << 28
#: queries per kernel launch: CUDA's limit on a grid's second dimension
_MAX_GRID_Y = 65_535


def _cupy() -> Any:
    """CuPy, when installed and usable (the library matrix product), else ``None``."""
    try:
        import cupy
    except Exception:  # noqa: BLE001 - absent, or present without a usable CUDA runtime
        return None
    return cupy


class CudaExact:
    """The exact scan and rerank of one snapshot's device rows (see the module docstring)."""

    def __init__(self, device: Device, view: Resident, shards: ShardSet, curv: float, method: str = "auto"):
        if method not in METHODS:
            raise InvalidInputError(f"unknown GPU scan method {method!r} (one of: {', '.join(METHODS)})")
        self.device, self.view, self.shards, self.curv, self.method = device, view, shards, curv, method
        self.cpu_fallbacks = 0
        self._skips: dict[int, tuple[np.ndarray, Any]] = {}
        self._lock = threading.Lock()

    def width(self, k: int) -> int:
        """The CPU scan's margin for float32 rows; float16 rows (about 3 decimal digits) get four times more."""
        w = cpu.scan_width(k)
        return w if self.view.storage == "float32" else max(4 * k, k + 64)

    # ----------------------------------------------------------------- scan
    def scan(self, queries: np.ndarray, kc: int, *, skip: np.ndarray | None = None) -> np.ndarray:
        """Candidate rows ``(m, kc)`` int64 (``-1`` padded) nearest ``queries: (m, D)``, in gap order."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        m, n = q.shape[0], self.view.n
        if m == 0 or kc == 0 or n == 0:
            return np.full((m, kc), -1, dtype=np.int64)
        method = self._method(m)
        if kc > K.MAX_KC or (method == "fused" and q.shape[1] > K.MAX_DIM):
            self.cpu_fallbacks += 1
            return cpu.CpuExact(self.shards, self.curv).scan(q, kc, skip=skip)
        from numba import cuda

        self.device.select()
        q64 = q.astype(np.float64)
        qn = np.einsum("ij,ij->i", q64, q64)
        qt = np.sqrt(1.0 / self.curv + qn)
        use_skip, dskip = self._device_skip(skip)
        blocks = -(-n // K.CHUNK)
        per_query = max(blocks * kc * 12, 1) + (0 if method == "fused" else 4 * K.CHUNK)
        batch = int(max(1, min(m, _WORK_BYTES // per_query, _MAX_GRID_Y)))
        out = np.empty((m, kc), dtype=np.int64)
        for s in range(0, m, batch):
            e = min(m, s + batch)
            dq, dqn, dqt = cuda.to_device(q[s:e]), cuda.to_device(qn[s:e]), cuda.to_device(qt[s:e])
            keys = cuda.device_array((e - s, blocks * kc), dtype=np.float32)
            ids = cuda.device_array((e - s, blocks * kc), dtype=np.int64)
            if method == "fused":
                K.scan_fused[(blocks, e - s), K.THREADS](dq, dqn, dqt, self.view.rows, self.view.xn, self.view.xt,
                                                         n, dskip, use_skip, kc, keys, ids)
            else:
                self._gemm_stage(dq, dqn, dqt, e - s, kc, use_skip, dskip, keys, ids)
            out[s:e] = self._reduce(keys, ids, kc).copy_to_host()
        return out

    def _method(self, m: int) -> str:
        if self.method != "auto":
            return self.method
        return "fused" if m < FUSED_MAX_QUERIES else "gemm"

    def _gemm_stage(self, dq: Any, dqn: Any, dqt: Any, m: int, kc: int, use_skip: bool, dskip: Any,
                    keys: Any, ids: Any) -> None:
        """First pass of the matrix-product scan: tiles of rows, products, gaps, each block's ``kc`` best."""
        from numba import cuda

        n, rows = self.view.n, self.view.rows
        tile = K.CHUNK * max(1, _WORK_BYTES // (4 * m * K.CHUNK))
        cp = _cupy() if self.view.storage == "float32" else None
        cq = cp.asarray(dq) if cp is not None else None
        for start in range(0, n, tile):
            count = min(tile, n - start)
            if cp is not None:
                dots = cq @ cp.asarray(rows[start : start + count]).T  # cuBLAS, float32
            else:
                dots = cuda.device_array((m, count), dtype=np.float32)
                grid = (-(-count // K.TILE), -(-m // K.TILE))
                K.dots_tiled[grid, (K.TILE, K.TILE)](dq, rows, start, count, dots)
            K.gaps_select[(-(-count // K.CHUNK), m), K.THREADS](dots, dqn, dqt, self.view.xn, self.view.xt, start,
                                                               count, dskip, use_skip, kc, keys, ids,
                                                               start // K.CHUNK)

    @staticmethod
    def _reduce(keys: Any, ids: Any, kc: int) -> Any:
        """Selection passes until one block per query held every pair: ``(m, kc)`` rows in gap order."""
        from numba import cuda

        m, length = keys.shape
        while length > kc:
            blocks = -(-length // K.CHUNK)
            nk = cuda.device_array((m, blocks * kc), dtype=np.float32)
            ni = cuda.device_array((m, blocks * kc), dtype=np.int64)
            K.select_pass[(blocks, m), K.THREADS](keys, ids, kc, nk, ni)
            keys, ids, length = nk, ni, blocks * kc
            if blocks == 1:
                break
        return ids

    def _device_skip(self, skip: np.ndarray | None) -> tuple[bool, Any]:
        """``(use, device copy)`` of a skip mask; masks are cached per host array (snapshots reuse theirs)."""
        from numba import cuda

        if skip is None or len(skip) == 0:
            return False, cuda.device_array(1, dtype=np.uint8)
        if len(skip) < self.view.n:
            raise ValueError(f"skip mask of {len(skip)} rows for {self.view.n} rows")
        with self._lock:
            hit = self._skips.get(id(skip))
            if hit is not None and hit[0] is skip:
                return True, hit[1]
            dev = cuda.to_device(np.ascontiguousarray(skip).view(np.uint8))
            if len(self._skips) >= 4:
                self._skips.clear()
            self._skips[id(skip)] = (skip, dev)  # the host array is kept: its id cannot be reused meanwhile
            return True, dev

    # --------------------------------------------------------------- rerank
    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int, *, skip: np.ndarray | None = None,
               skipped: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` rows and distances ``(m, k)`` among ``candidates: (m, kc)`` (as the CPU rerank)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        c = np.sort(np.ascontiguousarray(candidates, dtype=np.int64), axis=1)
        m, kc = c.shape
        if m == 0 or k == 0 or kc == 0 or self.view.storage != "float32" or q.shape[1] > K.MAX_DIM:
            # float16 rows on the device: the exact distances come from the float32 shards on the host
            if q.shape[1] > K.MAX_DIM:
                self.cpu_fallbacks += 1
            return cpu.CpuExact(self.shards, self.curv).rerank(q, c, k, skip=skip, skipped=skipped)
        if q.shape[1] != self.shards.dim:
            raise ValueError(f"queries of dimension {q.shape[1]} against shards of dimension {self.shards.dim}")
        from numba import cuda

        self.device.select()
        c[:, 1:][c[:, 1:] == c[:, :-1]] = -1  # a row proposed twice counts once
        c[c >= self.view.n] = -1
        if skipped is not None and skip is not None and len(skip):
            marked = np.asarray(skip)[np.maximum(c, 0)] == 1
            skipped[:] = np.count_nonzero(marked & (c >= 0), axis=1)
        use_skip, dskip = self._device_skip(skip)
        q64 = q.astype(np.float64)
        rq2 = np.einsum("ij,ij->i", q64, q64)
        d = np.empty((m, kc), dtype=np.float64)
        for s in range(0, m, _MAX_GRID_Y):
            e = min(m, s + _MAX_GRID_Y)
            dist = cuda.device_array((e - s, kc), dtype=np.float64)
            K.rerank_distances[(-(-kc // K.THREADS), e - s), K.THREADS](
                cuda.to_device(q[s:e]), cuda.to_device(np.sqrt(rq2[s:e])),
                cuda.to_device(np.sqrt(1.0 / self.curv + rq2[s:e])), self.view.rows, self.view.n,
                cuda.to_device(c[s:e]), dskip, use_skip, 1.0 / self.curv, self.curv, dist)
            d[s:e] = dist.copy_to_host()
        order = np.lexsort((c, d), axis=-1)[:, :k]  # by distance, ties by the lower row (as the CPU rerank)
        rows, dd = np.take_along_axis(c, order, 1), np.take_along_axis(d, order, 1)
        rows[~np.isfinite(dd)] = -1
        if kc < k:
            rows = np.pad(rows, ((0, 0), (0, k - kc)), constant_values=-1)
            dd = np.pad(dd, ((0, 0), (0, k - kc)), constant_values=np.inf)
        return rows, dd
