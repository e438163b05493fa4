"""Search benchmark: hyperret presets against bare FAISS flat and a reference-style torch loop.

    python tools/bench_search.py --n 100000 --dim 768 --queries 1000

Generates HySAC-like points (hyperret.testing.synthetic, cached under --data), computes the
exact float64 k-NN, then measures for each preset (each in its own process, so peak
memory is its own): build time, size on disk, recall@k, queries/s for one batch of
--queries and for single queries, and serving memory; and the cold-start wall time of
``hyperret search DIR --vectors q.npy``. Baselines in the same run: (a) bare FAISS
IndexFlatIP on the exact inner-product reduction, (b) a torch loop in the reference
code's style (one query at a time, acosh of the Lorentzian inner product against every
point). Prints a markdown table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CURV = 1.0
PART = 100_000


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------ data
def data_paths(args) -> dict[str, Path]:
    tag = f"{args.n}-{args.dim}-{args.queries}"
    d = Path(args.data)
    return {"x": d / f"x-{tag}.npy", "q": d / f"q-{tag}.npy", "gt": d / f"gt-{tag}.npy", "gtd": d / f"gtd-{tag}.npy"}


def make_data(args) -> None:
    from hyperret.geometry import lorentz
    from hyperret.testing.synthetic import make_points

    p = data_paths(args)
    if all(v.exists() for v in p.values()):
        return
    Path(args.data).mkdir(parents=True, exist_ok=True)
    kw = dict(curv=CURV, n_concepts=max(32, args.n // 1000), intrinsic_dim=32, seed=11)
    t0 = time.time()
    x = np.lib.format.open_memmap(p["x"], mode="w+", dtype=np.float32, shape=(args.n, args.dim))
    for i, s in enumerate(range(0, args.n, PART)):
        x[s : s + PART] = make_points(min(PART, args.n - s), args.dim, part=i + 1, **kw).space
    x.flush()
    q = make_points(args.queries, args.dim, part=10_000, **kw).space
    np.save(p["q"], q)
    print(f"# generated {args.n} points in {time.time() - t0:.1f}s", file=sys.stderr)
    # Exact k-NN: float64 Lorentz inner products (monotone in distance) in blocks, then
    # the stable float64 distance over the best 4k to settle near-ties.
    t0 = time.time()
    q64 = q.astype(np.float64)
    qt = lorentz.time_component(q64, CURV)
    keep = 4 * args.k
    best_i = np.zeros((len(q), 0), np.int64)
    best_s = np.zeros((len(q), 0))
    for s in range(0, args.n, PART):
        xb = np.asarray(x[s : s + PART], dtype=np.float64)
        score = q64 @ xb.T - qt[:, None] * lorentz.time_component(xb, CURV)[None, :]
        part = np.argpartition(-score, keep - 1, axis=1)[:, :keep]
        best_i = np.hstack([best_i, part + s])
        best_s = np.hstack([best_s, np.take_along_axis(score, part, 1)])
        top = np.argpartition(-best_s, keep - 1, axis=1)[:, :keep]
        best_i, best_s = np.take_along_axis(best_i, top, 1), np.take_along_axis(best_s, top, 1)
    dist = lorentz.distance(q64[:, None, :], np.asarray(x)[best_i].astype(np.float64), CURV)
    order = np.lexsort((best_i, dist), axis=1)[:, : args.k]
    np.save(p["gt"], np.take_along_axis(best_i, order, 1))
    np.save(p["gtd"], np.take_along_axis(dist, order, 1))
    print(f"# exact float64 k-NN in {time.time() - t0:.1f}s", file=sys.stderr)


def recall(found: np.ndarray, gt: np.ndarray) -> float:
    k = gt.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(g.tolist())) / k for f, g in zip(found, gt)]))


def timed_single(fn, q: np.ndarray, limit: int) -> float:
    m = min(limit, len(q))
    fn(q[:1])  # warm
    t = time.perf_counter()
    for i in range(m):
        fn(q[i : i + 1])
    return m / (time.perf_counter() - t)


def timed_batch(fn, q: np.ndarray, repeat: int = 2) -> float:
    fn(q[:8])  # warm
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(q)
        best = min(best, time.perf_counter() - t)
    return len(q) / best


# --------------------------------------------------------------- workers
def worker_build(args) -> dict:
    import hyperret

    p = data_paths(args)
    x = np.load(p["x"], mmap_mode="r")
    out = Path(args.data) / f"index-{args.worker}-{args.n}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    w = hyperret.Index.create(out, dim=args.dim, curv=CURV, preset=args.worker)
    for s in range(0, args.n, PART):
        w.add(np.asarray(x[s : s + PART]))
    w.commit()
    info = w.info()
    w.close()
    return {"build_s": time.perf_counter() - t, "disk_bytes": dir_bytes(out), "shard_bytes": info["shard_bytes"],
            "candidate_bytes": info["candidate_bytes"], "structure": info["candidate_structure"],
            "build_peak_rss_mb": peak_rss_mb(), "index": str(out)}


def worker_search(args) -> dict:
    import hyperret

    p = data_paths(args)
    q, gt = np.load(p["q"]), np.load(p["gt"])
    ix = hyperret.Index.open(Path(args.data) / f"index-{args.worker}-{args.n}")
    res = ix.search(q, k=args.k)
    by_mod = {}
    from hyperret.testing.synthetic import make_points  # modality labels of the queries
    labels = make_points(args.queries, args.dim, curv=CURV, n_concepts=max(32, args.n // 1000), intrinsic_dim=32,
                         seed=11, part=10_000)
    for mod in ("text", "image"):
        sel = labels.modality == mod
        by_mod[mod] = recall(res.ids[sel], gt[sel])
    out = {}
    if args.worker == "exact":
        out.update(paired_with_faiss(args, ix, q))
    return {
        **out,
        "recall": recall(res.ids, gt),
        "recall_text_queries": by_mod["text"], "recall_image_queries": by_mod["image"],
        "max_abs_distance_error": float(np.nanmax(np.abs(res.distances.astype(np.float64)
                                                         - np.load(p["gtd"]))[res.ids == gt])),
        "qps_batch": timed_batch(lambda b: ix.search(b, k=args.k), q),
        "qps_single": timed_single(lambda b: ix.search(b, k=args.k), q, args.single),
        "serve_peak_rss_mb": peak_rss_mb(),
    }


def paired_with_faiss(args, ix, q: np.ndarray, rounds: int = 5) -> dict:
    """Alternate batch timings of ``ix`` and bare FAISS flat IP in one process: medians and their ratio.

    Separate processes drift by +-10% on this machine; alternating rounds cancels that.
    """
    import faiss

    from hyperret.search.proxies import PROXIES

    x = np.load(data_paths(args)["x"], mmap_mode="r")
    pr = PROXIES["ip"]
    bare = faiss.IndexFlatIP(args.dim + 1)
    for s in range(0, args.n, PART):
        bare.add(pr.database(np.asarray(x[s : s + PART]), CURV, {}))
    xq = pr.query(q, CURV, {})
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(timed_batch(lambda b: ix.search(b, k=args.k), q, repeat=1))
        theirs.append(timed_batch(lambda b: bare.search(b, args.k), xq, repeat=1))
    return {"paired_qps_batch": float(np.median(ours)), "paired_faiss_qps_batch": float(np.median(theirs)),
            "paired_ratio": float(np.median(ours) / np.median(theirs))}


def worker_faiss(args) -> dict:
    import faiss

    from hyperret.search.proxies import PROXIES

    p = data_paths(args)
    x = np.load(p["x"], mmap_mode="r")
    q, gt = np.load(p["q"]), np.load(p["gt"])
    pr = PROXIES["ip"]
    t = time.perf_counter()
    index = faiss.IndexFlatIP(args.dim + 1)
    for s in range(0, args.n, PART):
        index.add(pr.database(np.asarray(x[s : s + PART]), CURV, {}))
    build = time.perf_counter() - t
    xq = pr.query(q, CURV, {})
    _, found = index.search(xq, args.k)
    return {"build_s": build, "disk_bytes": index.ntotal * index.d * 4, "recall": recall(found, gt),
            "qps_batch": timed_batch(lambda b: index.search(b, args.k), xq),
            "qps_single": timed_single(lambda b: index.search(b, args.k), xq, args.single),
            "serve_peak_rss_mb": peak_rss_mb()}


def worker_torch(args) -> dict:
    import torch

    p = data_paths(args)
    x = torch.from_numpy(np.load(p["x"]))
    q, gt = torch.from_numpy(np.load(p["q"])), np.load(p["gt"])
    xt = torch.sqrt(1 / CURV + (x * x).sum(-1))

    def one(qi: torch.Tensor):  # the reference style: acosh of the Lorentzian inner product, per query
        qt = torch.sqrt(1 / CURV + (qi * qi).sum(-1))
        inner = x @ qi - xt * qt
        d = torch.acosh(torch.clamp(-CURV * inner, min=1 + 1e-8)) / CURV**0.5
        return torch.topk(d, args.k, largest=False).indices

    m = min(args.torch_queries, len(q))
    with torch.inference_mode():
        one(q[0])
        t = time.perf_counter()
        found = np.stack([one(q[i]).numpy() for i in range(m)])
        qps = m / (time.perf_counter() - t)
    return {"recall": recall(found, gt[:m]), "qps_batch": qps, "qps_single": qps, "queries_timed": m,
            "serve_peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads()}


def cold_start(args, preset: str) -> dict:
    """Wall time of `hyperret search DIR --vectors q.npy` from a fresh process; torch never imported."""
    p = data_paths(args)
    qfile = Path(args.data) / "cold-q.npy"
    np.save(qfile, np.load(p["q"])[:4])
    idx = Path(args.data) / f"index-{preset}-{args.n}"
    probe = (f"import sys, runpy; sys.argv=['hyperret','search',{str(idx)!r},'--vectors',{str(qfile)!r},'--json'];"
             "\ntry:\n runpy.run_module('hyperret.cli', run_name='__main__')\nexcept SystemExit: pass\n"
             "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True)  # numba cache warm
    times = []
    for _ in range(args.cold_repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hyperret.cli", "search", str(idx), "--vectors", str(qfile), "--json"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return {"cold_search_s_median": float(np.median(times)), "cold_search_s_min": float(min(times))}


def run_worker(args, kind: str, name: str) -> dict:
    cmd = [sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim), "--queries", str(args.queries),
           "--k", str(args.k), "--data", args.data, "--single", str(args.single),
           "--torch-queries", str(args.torch_queries), "--worker", name, "--worker-kind", kind]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(results: dict[str, dict], args) -> str:
    """The markdown table of a run."""
    raw = args.n * args.dim * 4

    def f(v, fmt: str) -> str:
        return fmt % v if v is not None else "-"

    lines = [
        f"{args.n:,} points, dim {args.dim}, {args.queries} queries, k={args.k}, {os.cpu_count()} cores",
        "",
        "| method | structure | recall@k | recall text / image queries | q/s (batch) | q/s (single) | build s | "
        "disk MB | candidates / raw | peak RSS build / serve MB | cold CLI search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cand = r.get("candidate_bytes")
        lines.append(
            f"| {name} | {r.get('structure', '-')} | {r['recall']:.4f} | "
            f"{f(r.get('recall_text_queries'), '%.4f')} / {f(r.get('recall_image_queries'), '%.4f')} | "
            f"{r['qps_batch']:.0f} | {r['qps_single']:.0f} | {f(r.get('build_s'), '%.1f')} | "
            f"{r.get('disk_bytes', 0) / 2**20:.0f} | {f(100 * cand / raw if cand else None, '%.1f%%')} | "
            f"{f(r.get('build_peak_rss_mb'), '%.0f')} / {r['serve_peak_rss_mb']:.0f} | "
            f"{f(r.get('cold_search_s_median'), '%.2f')} |")
    for name, r in results.items():
        if "paired_ratio" in r:
            lines.append(f"\n{name}: {r['paired_qps_batch']:.0f} q/s against bare FAISS flat "
                         f"{r['paired_faiss_qps_batch']:.0f} q/s in alternating batch rounds of one process "
                         f"(medians of 5): ratio {r['paired_ratio']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--presets", default="exact,fast,compact")
    ap.add_argument("--baselines", default="faiss,torch")
    ap.add_argument("--single", type=int, default=200, help="single queries timed")
    ap.add_argument("--torch-queries", type=int, default=100, help="queries timed in the torch loop")
    ap.add_argument("--cold-repeat", type=int, default=5)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start CLI timing")
    ap.add_argument("--data", default="bench-data")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the built indexes")
    ap.add_argument("--reuse", action="store_true", help="search indexes kept by --keep instead of building")
    ap.add_argument("--report", default=None, help="print the table of a saved --json run and exit")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-kind", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(render(saved["results"], argparse.Namespace(**saved["args"])))
        return
    if args.worker:
        fn = {"build": worker_build, "search": worker_search, "faiss": worker_faiss, "torch": worker_torch}
        print(json.dumps(fn[args.worker_kind](args)))
        return

    make_data(args)
    results: dict[str, dict] = {}
    for b in filter(None, args.baselines.split(",")):
        results[f"baseline:{b}"] = run_worker(args, b, b)
        print(f"# {b}: {results[f'baseline:{b}']}", file=sys.stderr)
    for preset in filter(None, args.presets.split(",")):
        kept = Path(args.data) / f"index-{preset}-{args.n}"
        r = {"index": str(kept)} if args.reuse and kept.exists() else run_worker(args, "build", preset)
        r.update(run_worker(args, "search", preset))
        if not args.no_cold:
            r.update(cold_start(args, preset))
        results[preset] = r
        print(f"# {preset}: {r}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(r["index"], ignore_errors=True)

    print(render(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
