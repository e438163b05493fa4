"""GPU benchmark: the CUDA exact search against a CuPy matrix-product + top-k baseline, on the same rows.

    python tools/bench_gpu.py --rows 1000000,10000000 --dim 768 --batches 1,1000 --json gpu.json
    python tools/bench_gpu.py --smoke          # tiny sizes; runs on Numba's simulator without a GPU

For each row count, in one run on one device:

* upload: seconds and device bytes per million rows (``DeviceRows.sync``, float32 and float16);
* exact search q/s (scan + float64 rerank, ``k``) for each batch size, per scan method
  (``fused``, ``gemm``), against the baseline: CuPy ``Q @ X.T`` on the same device rows,
  the Lorentz inner-product reduction ``q_t x_t - q.x`` (same order as the distance, in
  float32), ``argpartition`` + sort of the ``k`` best (no rerank: it is the floor a
  library gives without hyperret's exactness);
* identity with the CPU path: the CPU kernels (``search.exact.CpuExact``) on the same
  rows and queries: ids equal, largest relative distance difference (recall 1.0 is
  this identity: the CPU path is exact);
* the rerank kernel's effective bandwidth (candidate rows read once, ``m * kc * D * 4``
  bytes) against a device-to-device copy in the same run (bytes read + written).

The indexer's overhead against a bare forward is ``tools/bench_encode.py``'s.
Rows are HySAC-like in shape (random directions, log-normal radii), generated here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

SHARD_ROWS = 1_000_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000000", help="comma-separated row counts")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batches", default="1,1000", help="comma-separated query batch sizes")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--curv", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per point (after one warm-up)")
    ap.add_argument("--check", type=int, default=100, help="queries compared with the CPU path")
    ap.add_argument("--rerank-kc", type=int, default=1024)
    ap.add_argument("--fused-max-batch", type=int, default=64, help="largest batch the fused scan is timed on")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the simulator where no GPU exists)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.smoke:
        if not os.path.exists("/dev/nvidiactl"):
            os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        a.rows, a.dim, a.batches, a.reps, a.check, a.rerank_kc = "300", 8, "1,4", 1, 4, 16
    out: dict[str, Any] = {"args": vars(a), "runs": []}
    from hyperret.cuda import Device

    dev = Device.open("cuda")
    out["device"] = dev.memory()
    print(f"device: {out['device']['name']}", flush=True)
    from hyperret.testing.cudasim import fast_simulator

    with fast_simulator():  # (nothing on a GPU)
        for n in (int(x) for x in a.rows.split(",")):
            out["runs"].append(run(n, a, dev))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def make_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """``(n, dim)`` float32: random directions, log-normal radii round 1 (HySAC-like spread)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 1 << 18):
        blk = rng.standard_normal((min(1 << 18, n - s), dim), dtype=np.float32)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        blk *= rng.lognormal(0.0, 0.4, (len(blk), 1)).astype(np.float32)
        x[s : s + len(blk)] = blk
    return x


def _timed(fn, reps: int) -> float:
    """Seconds per call of ``fn`` (device synchronised), after one warm-up call."""
    from numba import cuda

    fn()
    cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    cuda.synchronize()
    return (time.perf_counter() - t) / reps


def run(n: int, a: argparse.Namespace, dev: Any) -> dict[str, Any]:
    from hyperret.cuda import CudaExact, DeviceRows
    from hyperret.search.exact import CpuExact
    from hyperret.storage.shardset import ShardSet

    t = time.perf_counter()
    x = make_rows(n, a.dim, seed=1)
    parts = [x[s : s + SHARD_ROWS] for s in range(0, n, SHARD_ROWS)]
    shards = ShardSet(parts, a.dim)
    files = [f"s{i}" for i in range(len(parts))]
    rec: dict[str, Any] = {"rows": n, "dim": a.dim, "generate_s": time.perf_counter() - t}
    print(f"\n## {n:,} rows, dim {a.dim}", flush=True)
    for storage in ("float16", "float32"):  # float32 last: it stays resident for the searches
        rows = DeviceRows(dev, a.dim, a.curv, storage)
        t = time.perf_counter()
        view = rows.sync(files, shards)
        from numba import cuda

        cuda.synchronize()
        up = time.perf_counter() - t
        mem = rows.memory()
        rec[f"upload_{storage}"] = {"seconds": up, "seconds_per_million": up / n * 1e6,
                                    "device_bytes_per_million": (mem["rows_bytes"] + mem["norms_bytes"]) / n * 1e6}
        print(f"upload {storage}: {up:.2f} s ({up / n * 1e6:.3f} s per million rows), "
              f"{(mem['rows_bytes'] + mem['norms_bytes']) / n * 1e6 / 2**20:.0f} MiB per million rows", flush=True)
    qrng = np.random.default_rng(7)
    rec["search"] = []
    for m in (int(b) for b in a.batches.split(",")):
        q = x[qrng.integers(0, n, m)] + 0.02 * qrng.standard_normal((m, a.dim)).astype(np.float32)
        point: dict[str, Any] = {"batch": m}
        for method in ("fused", "gemm"):
            if method == "fused" and m > a.fused_max_batch:
                point[method] = 0.0  # it reads every row once per query: not a batch method
                continue
            ex = CudaExact(dev, view, shards, a.curv, method=method)
            kc = ex.width(a.k)
            s = _timed(lambda ex=ex, q=q, kc=kc: ex.rerank(q, ex.scan(q, kc), a.k), a.reps)
            point[method] = m / s
        base = _cupy_baseline(view, q, a.k, a.curv, a.reps)
        point["cupy_topk"] = base
        rec["search"].append(point)
        best = max(point["fused"], point["gemm"])
        ratio = f"{best / base:.2f}x" if base else "n/a"
        print(f"batch {m}: fused {point['fused']:,.0f} q/s, gemm {point['gemm']:,.0f} q/s, "
              f"CuPy GEMM+top-k {base or 0:,.0f} q/s ({ratio})", flush=True)
    rec["identity"] = _identity(x, shards, view, dev, a, CpuExact(shards, a.curv))
    rec["rerank_bandwidth"] = _rerank_bandwidth(view, shards, dev, a)
    return rec


def _cupy_baseline(view: Any, q: np.ndarray, k: int, curv: float, reps: int) -> float | None:
    """q/s of CuPy's ``q_t x_t - Q @ X.T`` + argpartition + sort of the ``k`` best, on the device rows."""
    try:
        import cupy as cp
    except ImportError:
        return None
    n = view.n
    X = cp.asarray(view.rows[:n])
    xt = cp.sqrt(1.0 / curv + cp.asarray(view.xn[:n])).astype(cp.float32)
    tile = max(1, (1 << 28) // (4 * max(len(q), 1)))

    def search() -> None:
        Q = cp.asarray(q)
        qt = cp.sqrt(1.0 / curv + (Q * Q).sum(1)).astype(cp.float32)
        best_d, best_i = [], []
        for s in range(0, n, tile):
            d = qt[:, None] * xt[None, s : s + tile] - Q @ X[s : s + tile].T
            kk = min(k, d.shape[1])
            idx = cp.argpartition(d, kk - 1, axis=1)[:, :kk]
            best_d.append(cp.take_along_axis(d, idx, 1))
            best_i.append(idx + s)
        d, i = cp.concatenate(best_d, 1), cp.concatenate(best_i, 1)
        order = cp.argsort(d, axis=1)[:, :k]
        cp.take_along_axis(i, order, 1).get()

    return len(q) / _timed(search, reps)


def _identity(x: np.ndarray, shards: Any, view: Any, dev: Any, a: argparse.Namespace, cpu: Any) -> dict[str, Any]:
    """The GPU's ids and distances against the CPU kernels' on ``a.check`` queries."""
    from hyperret.cuda import CudaExact

    rng = np.random.default_rng(11)
    q = x[rng.integers(0, len(x), a.check)] + 0.02 * rng.standard_normal((a.check, a.dim)).astype(np.float32)
    want_r, want_d = cpu.rerank(q, cpu.scan(q, cpu.width(a.k)), a.k)
    res = {}
    for method in ("fused", "gemm"):
        ex = CudaExact(dev, view, shards, a.curv, method=method)
        r, d = ex.rerank(q, ex.scan(q, ex.width(a.k)), a.k)
        rel = float(np.max(np.abs(d - want_d) / np.maximum(np.abs(want_d), 1e-30)))
        res[method] = {"ids_equal": float(np.mean(r == want_r)), "max_rel_distance_diff": rel}
        print(f"identity with the CPU path ({method}): ids equal {res[method]['ids_equal']:.4f}, "
              f"max relative distance difference {rel:.2e}", flush=True)
    return res


def _rerank_bandwidth(view: Any, shards: Any, dev: Any, a: argparse.Namespace) -> dict[str, float]:
    """The rerank kernel's bytes of candidate rows per second against a device-to-device copy's."""
    from numba import cuda

    from hyperret.cuda import kernels as K

    m, kc, n, d = 1000 if not a.smoke else 4, a.rerank_kc, view.n, a.dim
    rng = np.random.default_rng(3)
    q = np.ascontiguousarray(shards.gather(rng.integers(0, n, m)))
    cand = rng.integers(0, n, (m, kc)).astype(np.int64)
    q64 = q.astype(np.float64)
    rq2 = np.einsum("ij,ij->i", q64, q64)
    dq, drq, dtq = cuda.to_device(q), cuda.to_device(np.sqrt(rq2)), cuda.to_device(np.sqrt(1 / a.curv + rq2))
    dc, dskip, out = cuda.to_device(cand), cuda.device_array(1, np.uint8), cuda.device_array((m, kc), np.float64)
    th = K.THREADS

    def rr() -> None:
        K.rerank_distances[(-(-kc // th), m), th](dq, drq, dtq, view.rows, n, dc, dskip, False, 1 / a.curv, a.curv,
                                                  out)

    s = _timed(rr, a.reps)
    rerank_bw = m * kc * d * 4 / s
    size = min(n, 1 << 20) * d
    src = view.rows[: size // d]
    dst = cuda.device_array(src.shape, src.dtype)
    c = _timed(lambda: dst.copy_to_device(src), a.reps)
    copy_bw = 2 * src.size * src.dtype.itemsize / c
    print(f"rerank kernel: {rerank_bw / 1e9:,.1f} GB/s of candidate rows; device copy {copy_bw / 1e9:,.1f} GB/s "
          f"(read + written): {rerank_bw / copy_bw:.0%}", flush=True)
    return {"rerank_bytes_per_s": rerank_bw, "copy_bytes_per_s": copy_bw, "ratio": rerank_bw / copy_bw}


if __name__ == "__main__":
    sys.exit(main())
