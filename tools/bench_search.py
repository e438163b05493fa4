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

Search-v2 sweeps (same run, each in its own worker process):

* ``--dist synthetic,concepts,heavy``: the data distributions, one block of results
  each (cached under --data as ``x-DIST-N-DIM-Q.npy`` etc.). ``synthetic``: HySAC-like
  (``make_points``; its text and image queries are reported apart); ``concepts``:
  isotropic Gaussian clouds round 20 tangent-space centres (``make_concept_cloud``);
  ``heavy``: low-rank directions, log-normal radii (``make_heavy_tailed``).
* ``usearch`` baseline (in --baselines; ``pip install hyperret[bench]``): a usearch HNSW
  over ``[x_s, x_t]`` with a Numba cfunc metric in the true hyperbolic order,
  ``x_t y_t - x_s.y_s`` summed in float64 (``--usearch-metric gap``: the
  cancellation-free ``(|x_s - y_s|^2 - (x_t - y_t)^2) / 2``, as hyperret's walk);
  M and efConstruction default to the ``fast`` preset's (``--usearch-m``,
  ``--usearch-ef-construction``), ``--threads`` build and batch-search threads. Its
  distances are its metric's values, not geodesic distances: only ids are scored.
* ``--ladder 16,24,...,512``: the search-time ef of usearch (``expansion_search``) and
  of the presets in ``--sweep`` (``Index.search(q, k, ef=...)``; an index whose search
  does not take ``ef`` yet is swept through ``candidates=max(ef, k)`` instead, flagged
  in the output). Each point: recall@k, q/s for one batch and for --single queries.
* ``--targets 0.95,0.98,0.99``: from the sweeps, each library's best q/s (batch,
  single) among its points with recall@k >= target ("never" if none), and the
  hyperret/usearch ratios, as a markdown table.
* ``--min-rows 0`` builds the presets' structure even below their ``min_rows`` (small
  smoke runs; ``fast`` is a flat scan below 10,000 rows otherwise).

Full runs (2 threads for usearch, as hyperret's Numba pool on this machine):

    python tools/bench_search.py --n 100000 --dim 768 --queries 1000 --dist synthetic,concepts,heavy \
        --presets exact,fast --baselines faiss,usearch --json bench-100k.json
    python tools/bench_search.py --n 1000000 --dim 768 --queries 1000 --dist synthetic,concepts,heavy \
        --presets fast --baselines faiss,usearch --no-cold --json bench-1m.json

Smoke run: ``--n 3000 --dim 32 --queries 50 --min-rows 0 --data /tmp/bench_smoke``.
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
DISTS = ("synthetic", "concepts", "heavy")
QUERY_PART = 10_000  # the queries are this part of the collection's generator: new points, same law


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
    tag = f"{args.dist}-{args.n}-{args.dim}-{args.queries}"
    d = Path(args.data)
    return {"x": d / f"x-{tag}.npy", "q": d / f"q-{tag}.npy", "gt": d / f"gt-{tag}.npy", "gtd": d / f"gtd-{tag}.npy",
            "qmod": d / f"qmod-{tag}.npy"}


def generate(args, n: int, part: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` points of part ``part`` of the ``args.dist`` collection -> space ``(n, dim)`` float32, modality or None."""
    from hyperret.testing import synthetic

    if args.dist == "synthetic":
        pts = synthetic.make_points(n, args.dim, curv=CURV, n_concepts=max(32, args.n // 1000), intrinsic_dim=32,
                                    seed=11, part=part)
        return pts.space, pts.modality
    if args.dist == "concepts":
        return synthetic.make_concept_cloud(n, args.dim, curv=CURV, n_concepts=20, seed=11, part=part), None
    if args.dist == "heavy":
        return synthetic.make_heavy_tailed(n, args.dim, curv=CURV, seed=11, part=part), None
    raise SystemExit(f"unknown --dist {args.dist!r} (one of: {', '.join(DISTS)})")


def make_data(args) -> None:
    from hyperret.geometry import lorentz

    p = data_paths(args)
    if all(v.exists() for k, v in p.items() if k != "qmod"):
        return
    Path(args.data).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x = np.lib.format.open_memmap(p["x"], mode="w+", dtype=np.float32, shape=(args.n, args.dim))
    for i, s in enumerate(range(0, args.n, PART)):
        x[s : s + PART] = generate(args, min(PART, args.n - s), i + 1)[0]
    x.flush()
    q, qmod = generate(args, args.queries, QUERY_PART)
    np.save(p["q"], q)
    if qmod is not None:
        np.save(p["qmod"], qmod)
    else:
        p["qmod"].unlink(missing_ok=True)
    print(f"# {args.dist}: generated {args.n} points in {time.time() - t0:.1f}s", file=sys.stderr)
    # Exact k-NN: float64 Lorentz inner products (monotone in distance) in blocks, then
    # the stable float64 distance over the best 4k to settle near-ties.
    t0 = time.time()
    q64 = q.astype(np.float64)
    qt = lorentz.time_component(q64, CURV)
    keep = min(4 * args.k, args.n)
    best_i = np.zeros((len(q), 0), np.int64)
    best_s = np.zeros((len(q), 0))
    for s in range(0, args.n, PART):
        xb = np.asarray(x[s : s + PART], dtype=np.float64)
        score = q64 @ xb.T - qt[:, None] * lorentz.time_component(xb, CURV)[None, :]
        part = np.argpartition(-score, min(keep, xb.shape[0]) - 1, axis=1)[:, :keep]
        best_i = np.hstack([best_i, part + s])
        best_s = np.hstack([best_s, np.take_along_axis(score, part, 1)])
        top = np.argpartition(-best_s, keep - 1, axis=1)[:, :keep]
        best_i, best_s = np.take_along_axis(best_i, top, 1), np.take_along_axis(best_s, top, 1)
    dist = lorentz.distance(q64[:, None, :], np.asarray(x)[best_i].astype(np.float64), CURV)
    order = np.lexsort((best_i, dist), axis=1)[:, : args.k]
    np.save(p["gt"], np.take_along_axis(best_i, order, 1))
    np.save(p["gtd"], np.take_along_axis(dist, order, 1))
    print(f"# {args.dist}: exact float64 k-NN in {time.time() - t0:.1f}s", file=sys.stderr)


def recall(found: np.ndarray, gt: np.ndarray) -> float:
    k = gt.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(g.tolist())) / k for f, g in zip(found, gt)]))


def recall_by_modality(args, found: np.ndarray, gt: np.ndarray) -> dict:
    """``recall_text_queries`` / ``recall_image_queries`` where the distribution labels its queries, else {}."""
    qmod = data_paths(args)["qmod"]
    if not qmod.exists():
        return {}
    mod = np.load(qmod)
    return {f"recall_{m}_queries": recall(found[mod == m], gt[mod == m]) for m in ("text", "image")
            if np.any(mod == m)}


def ladder(args) -> list[int]:
    """The ef values swept (those below k are dropped: a beam narrower than k cannot return k)."""
    return [e for e in (int(v) for v in args.ladder.split(",") if v) if e >= args.k]


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
def index_dir(args, preset: str) -> Path:
    return Path(args.data) / f"index-{args.dist}-{preset}-{args.n}"


def worker_build(args) -> dict:
    import dataclasses

    import hyperret
    from hyperret.search.presets import load_preset

    p = data_paths(args)
    x = np.load(p["x"], mmap_mode="r")
    out = index_dir(args, args.worker)
    shutil.rmtree(out, ignore_errors=True)
    preset = load_preset(args.worker)
    if args.min_rows is not None:
        preset = dataclasses.replace(preset, min_rows=args.min_rows)
    t = time.perf_counter()
    w = hyperret.Index.create(out, dim=args.dim, curv=CURV, preset=preset)
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
    ix = hyperret.Index.open(index_dir(args, args.worker))
    res = ix.search(q, k=args.k)
    out = {}
    if args.worker == "exact":
        out.update(paired_with_faiss(args, ix, q))
    hit = res.ids == gt
    out.update({
        "recall": recall(res.ids, gt), **recall_by_modality(args, res.ids, gt),
        "max_abs_distance_error": float(np.max(np.abs(res.distances.astype(np.float64) - np.load(p["gtd"]))[hit]))
        if hit.any() else None,
        "qps_batch": timed_batch(lambda b: ix.search(b, k=args.k), q),
        "qps_single": timed_single(lambda b: ix.search(b, k=args.k), q, args.single),
    })
    out.update(self_and_prediction(args, ix))
    if args.worker in args.sweep.split(","):
        out.update(sweep_hyperret(args, ix, q, gt, out))
    out["serve_peak_rss_mb"] = peak_rss_mb()
    return out


def self_and_prediction(args, ix) -> dict:
    """Self-query (a stored row's own vector finds it first) and the recall the index predicts for itself."""
    rng = np.random.default_rng(5)
    rows = np.sort(rng.choice(len(ix), size=min(1000, len(ix)), replace=False))
    ids = ix.ids()[rows] if hasattr(ix, "ids") else rows
    found = ix.search(ix.vectors(ids), k=args.k).ids[:, 0]
    out = {"self_first": float(np.mean(found == ids))}
    cal = ix.info().get("recall")
    if cal:
        from hyperret.search.recall import Calibration

        c = Calibration.from_dict(ix.manifest.calibration)
        out["calibration"] = cal
        if c is not None:
            target = ix.manifest.preset.get("default_recall") or 0.98
            for t in {float(target), *(float(v) for v in args.targets.split(",") if v)}:
                s = c.setting_for(t)
                out[f"predicted_recall={t:g}"] = None if s is None else {"setting": s, "predicted": c.predicted(s)}
    return out


def sweep_hyperret(args, ix, q: np.ndarray, gt: np.ndarray, default: dict) -> dict:
    """The ef ladder through ``search(..., ef=)``, else through ``candidates=max(ef, k)`` (the knob is recorded).

    The default settings (no ef) join the points as ``ef: "default"``, and with ``ef`` the
    library's own ``recall=`` targets (--targets) as ``ef: "recall=T"``.
    """
    knob = "ef"
    try:
        ix.search(q[:1], k=args.k, ef=ladder(args)[0])
    except TypeError:
        knob = "candidates"  # Index.search does not take ef yet: the rerank width is what can be swept
        print("# hyperret: Index.search takes no ef= yet; sweeping candidates=max(ef, k) instead", file=sys.stderr)
    points = [{"ef": "default", "recall": default["recall"],
               **{k: v for k, v in default.items() if k.startswith("recall_")},
               "qps_batch": default["qps_batch"], "qps_single": default["qps_single"]}]
    for ef in ladder(args):
        kw = {"ef": ef} if knob == "ef" else {"candidates": max(ef, args.k)}
        try:
            found = ix.search(q, k=args.k, **kw).ids
        except Exception as e:  # a preset that rejects the knob: recorded, not fatal
            return {"sweep": points, "sweep_knob": knob, "sweep_error": f"{type(e).__name__}: {e}"}
        points.append({"ef": ef, "recall": recall(found, gt), **recall_by_modality(args, found, gt),
                       "qps_batch": timed_batch(lambda b, kw=kw: ix.search(b, k=args.k, **kw), q),
                       "qps_single": timed_single(lambda b, kw=kw: ix.search(b, k=args.k, **kw), q, args.single)})
        print(f"# hyperret {args.worker} {knob}={kw[knob]}: {points[-1]}", file=sys.stderr)
    if knob == "ef":  # the library's own recall= targets, beside the ladder (not used for the best-q/s table)
        for t in (float(v) for v in args.targets.split(",") if v):
            try:
                found = ix.search(q, k=args.k, recall=t).ids
            except TypeError:
                break
            kw = {"recall": t}
            points.append({"ef": f"recall={t:g}", "recall": recall(found, gt), **recall_by_modality(args, found, gt),
                           "qps_batch": timed_batch(lambda b, kw=kw: ix.search(b, k=args.k, **kw), q),
                           "qps_single": timed_single(lambda b, kw=kw: ix.search(b, k=args.k, **kw), q,
                                                      args.single)})
    return {"sweep": points, "sweep_knob": knob}


def lorentz_cfunc(dim: int, curv: float, kind: str):
    """A Numba cfunc over stored rows ``[x_s, x_t]`` (``dim + 1`` float32) in the true hyperbolic order.

    ``lorentz``: ``x_t y_t - x_s.y_s`` (``= -<x, y>_L = cosh(sqrt(c) d) / c``), float64 sums.
    ``gap``: the same less ``1/c``, computed without cancellation as
    ``(|x_s - y_s|^2 - (x_t - y_t)^2) / 2`` with ``x_t - y_t = (|x_s|^2 - |y_s|^2) / (x_t + y_t)``
    (float32 sums, as hyperret's graph walk).
    """
    from numba import carray, cfunc, types

    n = dim + 1
    sig = types.float32(types.CPointer(types.float32), types.CPointer(types.float32))
    if kind == "lorentz":

        @cfunc(sig, fastmath=True, error_model="numpy")
        def metric(a, b):
            x = carray(a, n)
            y = carray(b, n)
            dot = 0.0
            for j in range(n - 1):
                dot += np.float64(x[j]) * np.float64(y[j])
            return np.float32(np.float64(x[n - 1]) * np.float64(y[n - 1]) - dot)

    elif kind == "gap":

        @cfunc(sig, fastmath=True, error_model="numpy")
        def metric(a, b):
            x = carray(a, n)
            y = carray(b, n)
            d2 = np.float32(0.0)
            nx = np.float32(0.0)
            ny = np.float32(0.0)
            for j in range(n - 1):
                t = x[j] - y[j]
                d2 += t * t
                nx += x[j] * x[j]
                ny += y[j] * y[j]
            t = (np.float64(nx) - np.float64(ny)) / (np.float64(x[n - 1]) + np.float64(y[n - 1]))
            return np.float32(max(0.5 * (np.float64(d2) - t * t), 0.0))

    else:
        raise SystemExit(f"unknown --usearch-metric {kind!r} (lorentz or gap)")
    return metric


def with_time(x: np.ndarray) -> np.ndarray:
    """``[x_s, x_t]`` float32 rows, ``x_t = sqrt(1/c + |x_s|^2)`` computed in float64."""
    from hyperret.geometry import lorentz

    x = np.asarray(x, dtype=np.float32)
    return np.hstack([x, lorentz.time_component(x.astype(np.float64), CURV)[:, None].astype(np.float32)])


def worker_usearch(args) -> dict:
    from usearch.index import CompiledMetric, Index, MetricKind, MetricSignature

    from hyperret.search.presets import load_preset

    fast = load_preset("fast")
    m = args.usearch_m or int("".join(c for c in fast.factory if c.isdigit()) or 32)
    efc = args.usearch_ef_construction or int(fast.build.get("efConstruction", 64))
    p = data_paths(args)
    x = np.load(p["x"], mmap_mode="r")
    q, gt = np.load(p["q"]), np.load(p["gt"])
    metric = lorentz_cfunc(args.dim, CURV, args.usearch_metric)
    t = time.perf_counter()
    index = Index(ndim=args.dim + 1, dtype="f32", connectivity=m, expansion_add=efc,
                  metric=CompiledMetric(pointer=metric.address, kind=MetricKind.Unknown,
                                        signature=MetricSignature.ArrayArray))
    for s in range(0, args.n, PART):
        xb = np.asarray(x[s : s + PART])
        index.add(np.arange(s, s + len(xb), dtype=np.uint64), with_time(xb), threads=args.threads)
    build = time.perf_counter() - t
    xq = with_time(q)

    def batch(b):
        return index.search(b, args.k, threads=args.threads)

    def single(b):
        return index.search(b[0], args.k, threads=1)

    points = []
    for ef in ladder(args):
        index.expansion_search = ef
        found = batch(xq).keys.astype(np.int64)
        points.append({"ef": ef, "recall": recall(found, gt), **recall_by_modality(args, found, gt),
                       "qps_batch": timed_batch(batch, xq), "qps_single": timed_single(single, xq, args.single)})
        print(f"# usearch ef={ef}: {points[-1]}", file=sys.stderr)
    # The main table's row: usearch at the fast preset's efSearch (or the ladder point nearest it).
    ef0 = int(fast.search.get("efSearch", 128))
    main = min(points, key=lambda r: abs(r["ef"] - ef0)) if points else {}
    import usearch

    return {**{k: v for k, v in main.items() if k != "ef"}, "build_s": build, "memory_bytes": index.memory_usage,
            "structure": f"usearch {usearch.__version__} HNSW M={m} efC={efc} ef={main.get('ef')} "
                         f"metric={args.usearch_metric}",
            "sweep": points, "sweep_knob": "expansion_search", "threads": args.threads,
            "distances": f"usearch metric values ({args.usearch_metric}), not geodesic; ids scored only",
            "serve_peak_rss_mb": peak_rss_mb()}


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
    idx = index_dir(args, preset)
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


FORWARDED = ("n", "dim", "queries", "k", "data", "single", "torch_queries", "dist", "ladder", "sweep", "targets",
             "threads", "min_rows", "usearch_m", "usearch_ef_construction", "usearch_metric")


def run_worker(args, kind: str, name: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--worker-kind", kind]
    for a in FORWARDED:
        if getattr(args, a) is not None:
            cmd += [f"--{a.replace('_', '-')}", str(getattr(args, a))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"worker {kind}:{name} on {args.dist} failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _f(v, fmt: str) -> str:
    return fmt % v if v is not None else "-"


def render_main(results: dict[str, dict], args) -> list[str]:
    """The per-method table of one distribution."""
    raw = args.n * args.dim * 4
    lines = [
        "| method | structure | recall@k | recall text / image queries | q/s (batch) | q/s (single) | build s | "
        "disk (memory) MB | candidates / raw | peak RSS build / serve MB | cold CLI search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cand = r.get("candidate_bytes")
        size = (f"{r['disk_bytes'] / 2**20:.0f}" if "disk_bytes" in r
                else f"({r['memory_bytes'] / 2**20:.0f})" if "memory_bytes" in r else "-")
        lines.append(
            f"| {name} | {r.get('structure', '-')} | {r['recall']:.4f} | "
            f"{_f(r.get('recall_text_queries'), '%.4f')} / {_f(r.get('recall_image_queries'), '%.4f')} | "
            f"{r['qps_batch']:.0f} | {r['qps_single']:.0f} | {_f(r.get('build_s'), '%.1f')} | "
            f"{size} | {_f(100 * cand / raw if cand else None, '%.1f%%')} | "
            f"{_f(r.get('build_peak_rss_mb'), '%.0f')} / {r['serve_peak_rss_mb']:.0f} | "
            f"{_f(r.get('cold_search_s_median'), '%.2f')} |")
    for name, r in results.items():
        if "paired_ratio" in r:
            lines.append(f"\n{name}: {r['paired_qps_batch']:.0f} q/s against bare FAISS flat "
                         f"{r['paired_faiss_qps_batch']:.0f} q/s in alternating batch rounds of one process "
                         f"(medians of 5): ratio {r['paired_ratio']:.3f}")
        if "distances" in r:
            lines.append(f"\n{name}: distances are {r['distances']}.")
        if r.get("sweep_knob") == "candidates":
            lines.append(f"\n{name}: Index.search took no ef= when this ran: swept candidates=max(ef, k) instead "
                         "(the rerank width; the graph's beam stays max(efSearch, candidates)).")
        if "sweep_error" in r:
            lines.append(f"\n{name}: the sweep stopped: {r['sweep_error']}")
    return lines


def render_sweeps(results: dict[str, dict]) -> list[str]:
    """One row per ladder point: recall@k and q/s of every swept method side by side."""
    swept = {name: {p["ef"]: p for p in r["sweep"]} for name, r in results.items() if r.get("sweep")}
    if not swept:
        return []
    efs = sorted({e for pts in swept.values() for e in pts},
                 key=lambda e: (2, e, "") if isinstance(e, int) else (e != "default", 0, e))
    head = "| ef |" + "".join(f" {n} recall (text / image) | {n} q/s batch / single |" for n in swept)
    lines = ["", head, "|---|" + "---|---|" * len(swept)]
    for ef in efs:
        row = f"| {ef} |"
        for pts in swept.values():
            p = pts.get(ef)
            if p is None:
                row += " - | - |"
                continue
            mod = (f" ({p['recall_text_queries']:.4f} / {p['recall_image_queries']:.4f})"
                   if "recall_text_queries" in p and "recall_image_queries" in p else "")
            row += f" {p['recall']:.4f}{mod} | {p['qps_batch']:.0f} / {p['qps_single']:.0f} |"
        lines.append(row)
    return lines


def best_at(points: list[dict], target: float, key: str) -> dict | None:
    """The point of highest ``key`` q/s among those with recall >= target (None: never reached)."""
    ok = [p for p in points if p["recall"] >= target]
    return max(ok, key=lambda p: p[key]) if ok else None


def library_points(results: dict[str, dict]) -> dict[str, list[dict]]:
    """Each library's operating points: its ef ladder, or its one measured setting (flat scans, torch)."""
    return {name: [p for p in r["sweep"] if isinstance(p["ef"], int)] if r.get("sweep") else [{"ef": None, **r}]
            for name, r in results.items()}


def render_targets(by_dist: dict[str, dict[str, dict]], targets: list[float]) -> list[str]:
    """Best q/s at each recall target per library and distribution, and hyperret / usearch ratios."""
    cols = [(key, t) for key in ("qps_batch", "qps_single") for t in targets]
    lines = ["", "Best q/s at recall@k >= target over the ef ladder (the ef that gives it in brackets; \"never\": no "
             "ladder point reaches it; methods without a sweep: their one setting); ratio rows: hyperret / usearch.",
             "",
             "| dist | library | " + " | ".join(f"{'batch' if k == 'qps_batch' else 'single'} @{t:g}"
                                               for k, t in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for dist, results in by_dist.items():
        pts = library_points(results)
        best = {name: [best_at(p, t, k) for k, t in cols] for name, p in pts.items()}
        for name, bs in best.items():
            cells = [("never" if b is None else f"{b[k]:.0f}" if b["ef"] is None else f"{b[k]:.0f} (ef {b['ef']})")
                     for b, (k, _) in zip(bs, cols)]
            lines.append(f"| {dist} | {name} | " + " | ".join(cells) + " |")
        us = best.get("baseline:usearch")
        for name in results:
            if us is None or not results[name].get("sweep") or name.startswith("baseline:"):
                continue
            cells = []
            for h, u, (k, _) in zip(best[name], us, cols):
                cells.append(f"{h[k] / u[k]:.2f}x" if h and u else "hyperret never" if u else
                             "usearch never" if h else "-")
            lines.append(f"| {dist} | **{name} / usearch** | " + " | ".join(cells) + " |")
    return lines


def render(by_dist: dict[str, dict[str, dict]], args) -> str:
    """The markdown tables of a run (per distribution: methods, then sweeps; then the recall-target table)."""
    if by_dist and "recall" in next(iter(by_dist.values())):  # a run saved before --dist: one distribution
        by_dist = {getattr(args, "dist", None) or "synthetic": by_dist}
    lines = [f"{args.n:,} points, dim {args.dim}, {args.queries} queries, k={args.k}, {os.cpu_count()} cores"]
    for dist, results in by_dist.items():
        lines += ["", f"### {dist}", ""] + render_main(results, args) + render_sweeps(results)
    targets = [float(t) for t in getattr(args, "targets", "0.95,0.98,0.99").split(",") if t]
    if any(r.get("sweep") for res in by_dist.values() for r in res.values()):
        lines += render_targets(by_dist, targets)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dist", default="synthetic", help=f"comma-separated, of: {', '.join(DISTS)}")
    ap.add_argument("--presets", default="exact,fast,compact")
    ap.add_argument("--baselines", default="faiss,torch,usearch", help="of: faiss, torch, usearch")
    ap.add_argument("--sweep", default="fast", help="presets whose search-time ef is swept over --ladder")
    ap.add_argument("--ladder", default="16,24,32,48,64,96,128,192,256,384,512", help="ef values swept")
    ap.add_argument("--targets", default="0.95,0.98,0.99", help="recall@k targets of the best-q/s table")
    ap.add_argument("--threads", type=int, default=2, help="usearch build and batch-search threads")
    ap.add_argument("--usearch-m", type=int, default=None, help="usearch connectivity (default: the fast preset's M)")
    ap.add_argument("--usearch-ef-construction", type=int, default=None,
                    help="usearch expansion_add (default: the fast preset's efConstruction)")
    ap.add_argument("--usearch-metric", default="lorentz", choices=("lorentz", "gap"),
                    help="lorentz: x_t y_t - x_s.y_s in float64; gap: the cancellation-free form")
    ap.add_argument("--min-rows", type=int, default=None,
                    help="override the presets' min_rows (0: build the structure even for tiny smoke runs)")
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
        fn = {"build": worker_build, "search": worker_search, "faiss": worker_faiss, "torch": worker_torch,
              "usearch": worker_usearch}
        print(json.dumps(fn[args.worker_kind](args)))
        return

    dists = [d for d in args.dist.split(",") if d]
    for d in dists:
        if d not in DISTS:
            raise SystemExit(f"unknown --dist {d!r} (one of: {', '.join(DISTS)})")
    by_dist: dict[str, dict[str, dict]] = {}
    for d in dists:
        a = argparse.Namespace(**{**vars(args), "dist": d})
        make_data(a)
        results: dict[str, dict] = {}
        for b in filter(None, args.baselines.split(",")):
            results[f"baseline:{b}"] = run_worker(a, b, b)
            print(f"# {d} {b}: {results[f'baseline:{b}']}", file=sys.stderr)
        for preset in filter(None, args.presets.split(",")):
            kept = index_dir(a, preset)
            r = {"index": str(kept)} if args.reuse and kept.exists() else run_worker(a, "build", preset)
            r.update(run_worker(a, "search", preset))
            if not args.no_cold:
                r.update(cold_start(a, preset))
            results[preset] = r
            print(f"# {d} {preset}: {r}", file=sys.stderr)
            if not args.keep:
                shutil.rmtree(r["index"], ignore_errors=True)
        by_dist[d] = results

    print(render(by_dist, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": by_dist}, indent=1))


if __name__ == "__main__":
    main()
