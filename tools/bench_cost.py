"""The cost model against the exhaustive scan: default-settings q/s vs exact q/s from 1k rows up.

    python tools/bench_cost.py --sizes 1000,3000,10000,30000,100000 --dim 768 --queries 1000

For each size N it builds a `fast` index (the default preset: its commit measures the
recall curve and the scan's cost) and an `exact` index over the same first N rows of
HySAC-like points (hyperret.testing.synthetic, the bench_search distribution), then
times one batch of --queries and single queries with the default settings and with
the exact preset (the exhaustive scan), and records which path the default chose.
Target: default q/s >= exact q/s at every N. Prints a markdown table; --json writes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, q: np.ndarray, single: int) -> tuple[float, float]:
    fn(q)  # warm: kernels loaded, pages touched, the same work as the timed call
    t = time.perf_counter()
    fn(q)
    batch = len(q) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(single):
        fn(q[i : i + 1])
    return batch, single / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()

    import hyperret
    from hyperret.testing.synthetic import make_points

    sizes = [int(v) for v in args.sizes.split(",")]
    kw = dict(curv=1.0, n_concepts=max(32, max(sizes) // 1000), intrinsic_dim=32, seed=11)
    x = np.concatenate([make_points(min(100_000, max(sizes) - s), args.dim, part=i + 1, **kw).space
                        for i, s in enumerate(range(0, max(sizes), 100_000))])
    q = make_points(args.queries, args.dim, part=10_000, **kw).space
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="hyperret-cost-"))
    try:
        for n in sizes:
            out = {"rows": n}
            for preset in ("fast", "exact"):
                ix = hyperret.Index.create(tmp / f"{preset}-{n}", dim=args.dim, preset=preset)
                ix.add(x[:n])
                t = time.perf_counter()
                ix.commit()
                out[f"{preset}_commit_s"] = time.perf_counter() - t
                batch, single = timed(lambda b, ix=ix: ix.search(b, k=10), q, args.single)
                out[f"{preset}_batch"], out[f"{preset}_single"] = batch, single
                if preset == "fast":
                    out["default_path"] = "scan" if ix.search(q[:1], k=10).plans[0].scanned else "graph"
                    cal = ix.info()["recall"]
                    out["setting"] = cal["settings_for"]["0.98"] if cal else None
                ix.close()
            rows.append(out)
            print(f"# {out}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.queries} queries, dim {args.dim}, k=10\n")
    print("| rows | default path (ef for 0.98) | default q/s batch / single | exact q/s batch / single "
          "| ratio batch / single |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rows']:,} | {r['default_path']} ({r['setting']}) "
              f"| {r['fast_batch']:,.0f} / {r['fast_single']:,.0f} "
              f"| {r['exact_batch']:,.0f} / {r['exact_single']:,.0f} | {r['fast_batch'] / r['exact_batch']:.2f}x / "
              f"{r['fast_single'] / r['exact_single']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
