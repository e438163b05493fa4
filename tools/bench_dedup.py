"""Benchmark batch deduplication: hyperret's exact join against FAISS range search + a Python union-find.

Data: the search benchmark's HySAC-like points (``tools/bench_search.py``'s
``x-N-DIM-1000.npy`` when present in ``--data``, else generated) with injected
near-duplicate groups (2-6 members at geodesic distances log-uniform in
1e-4..1e-2 from a base row). Each method runs in its own process, so its peak
RSS (VmHWM) is its own; ``RssAnon`` at the end separates private memory from the
memory-mapped shards' page cache.

    python tools/bench_dedup.py --n 1000000 --dim 768 --radius 0.05 --data bench-data --json dedup1m.json

Methods:
- hyperret: ``Index.dedup(radius)`` (the ``cells`` join), on an index built with the ``exact`` preset.
- baseline: FAISS ``IndexIVFFlat`` (L2, over the tangent vectors, nlist 1024, nprobe 8) ``range_search``
  with the same radius, every returned pair confirmed with the exact distance (NumPy, float64), and a
  union-find in plain Python.
- brute force (``--subset`` rows): every pair's Lorentz inner product (float64 GEMM), pairs within a
  generous margin confirmed with the exact distance; compared with hyperret on an index of that subset.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _mem() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    return out


def _pairs_of_groups(labels: np.ndarray) -> set[tuple[int, int]]:
    """Unordered row pairs sharing a label (label -1: none)."""
    out = set()
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(lab)]):
        if lab[a] < 0 or b - a < 2:
            continue
        out.update(itertools.combinations(sorted(order[a:b].tolist()), 2))
    return out


def _score(pred: set, true: set) -> dict[str, float]:
    tp = len(pred & true)
    return {"pairs_true": len(true), "pairs_found": len(pred), "precision": tp / max(len(pred), 1),
            "recall": tp / max(len(true), 1)}


# ------------------------------------------------------------------ data
def make_data(n: int, dim: int, groups: int, data: Path, seed: int) -> tuple[Path, Path]:
    """Points with injected groups, saved as .npy (cached in ``data``)."""
    from hyperret.testing.synthetic import make_duplicates, make_points

    x_path = data / f"dedup-x-{n}-{dim}-{groups}.npy"
    g_path = data / f"dedup-g-{n}-{dim}-{groups}.npy"
    if x_path.exists() and g_path.exists():
        return x_path, g_path
    base_path = data / f"x-{n}-{dim}-1000.npy"
    if base_path.exists():
        base = np.load(base_path, mmap_mode="r")
    else:
        base = make_points(n, dim, seed=seed).space
    ds = make_duplicates(n, dim, groups=groups, base=base, seed=seed)
    np.save(x_path, ds.space)
    np.save(g_path, ds.group)
    return x_path, g_path


def build(x_path: Path, out: Path, preset: str) -> float:
    import hyperret

    x = np.load(x_path, mmap_mode="r")
    t = time.perf_counter()
    w = hyperret.Index.create(out, dim=x.shape[1], preset=preset)
    for s in range(0, len(x), 100_000):
        w.add(np.asarray(x[s : s + 100_000]))
    w.commit()
    w.close()
    return time.perf_counter() - t


# --------------------------------------------------------------- methods
def run_hyperret(index: Path, radius: float, method: str) -> dict:
    import hyperret

    ix = hyperret.Index.open(index)
    t = time.perf_counter()
    res = ix.dedup(radius=radius, method=method)
    el = time.perf_counter() - t
    ids = res.groups.column("id").to_numpy()
    grp = res.groups.column("group").to_numpy()
    labels = np.full(len(ix), -1, np.int64)
    labels[ids] = grp  # ids are rows here (assigned 0..n-1)
    return {"seconds": el, "summary": res.summary, "labels": labels.tolist(), **_mem()}


def run_auto(index: Path) -> dict:
    import hyperret

    ix = hyperret.Index.open(index)
    t = time.perf_counter()
    res = ix.dedup(auto=True)
    return {"seconds": time.perf_counter() - t, "radius": res.radius, "auto": res.summary["auto"],
            "groups": res.summary["groups"], **_mem()}


def run_baseline(x_path: Path, radius: float, curv: float = 1.0, nlist: int = 1024, nprobe: int = 8) -> dict:
    import faiss

    from hyperret.geometry import lorentz

    x = np.load(x_path, mmap_mode="r")
    n, d = x.shape
    nlist = max(1, min(nlist, n // 40))
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    train = lorentz.log_map0(np.asarray(x[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))],
                                        np.float64), curv).astype(np.float32)
    quant = faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFFlat(quant, d, nlist)
    ivf.train(train)
    for s in range(0, n, 100_000):
        ivf.add(lorentz.log_map0(np.asarray(x[s : s + 100_000], np.float64), curv).astype(np.float32))
    t_build = time.perf_counter() - t0
    ivf.nprobe = nprobe
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.get(i, i) != i:
            parent[i] = parent.get(parent[i], parent[i])
            i = parent[i]
        return i

    checked = within = 0
    r2 = (radius * (1 + 1e-6) + 1e-6) ** 2  # tangent distance <= geodesic: a superset, then confirmed
    for s in range(0, n, 20_000):
        q = lorentz.log_map0(np.asarray(x[s : s + 20_000], np.float64), curv).astype(np.float32)
        lims, _, labels = ivf.range_search(q, r2)
        qi = np.repeat(np.arange(len(q)) + s, np.diff(lims).astype(np.int64))
        keep = labels > qi
        a, b = qi[keep], labels[keep]
        checked += len(a)
        if len(a):
            dist = lorentz.distance(np.asarray(x[a], np.float64), np.asarray(x[b], np.float64), curv)
            ok = dist <= radius
            within += int(ok.sum())
            for u, v in zip(a[ok].tolist(), b[ok].tolist()):
                ru, rv = find(u), find(v)
                if ru != rv:
                    parent[max(ru, rv)] = min(ru, rv)
    el = time.perf_counter() - t0
    labels = np.full(n, -1, np.int64)
    roots = {i: find(i) for i in list(parent)}
    for i, r in roots.items():
        labels[i] = r
    labels[np.array(list(set(roots.values())), dtype=np.int64)] = np.array(list(set(roots.values())))
    return {"seconds": el, "build_seconds": t_build, "checked": checked, "within": within,
            "labels": labels.tolist(), **_mem()}


def run_brute(x_path: Path, rows: int, radius: float, curv: float = 1.0) -> dict:
    from hyperret.geometry import lorentz

    x = np.asarray(np.load(x_path, mmap_mode="r")[:rows], np.float64)
    t0 = time.perf_counter()
    xt = lorentz.time_component(x, curv)
    thr = np.cosh(np.sqrt(curv) * radius * 1.01 + 1e-6) / curv  # -<x, y>_L <= thr: a superset
    pairs = []
    for s in range(0, rows, 4096):
        ip = xt[s : s + 4096, None] * xt[None, :] - x[s : s + 4096] @ x.T  # -<x, y>_L
        i, j = np.nonzero(ip <= thr)
        i = i + s
        keep = j > i
        pairs.append((i[keep], j[keep]))
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    ok = lorentz.distance(x[a], x[b], curv) <= radius
    return {"seconds": time.perf_counter() - t0, "pairs": [a[ok].tolist(), b[ok].tolist()], **_mem()}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--groups", type=int, default=0, help="injected groups (default n / 50)")
    ap.add_argument("--radius", type=float, default=0.05)
    ap.add_argument("--subset", type=int, default=50_000)
    ap.add_argument("--data", type=Path, default=Path("bench-data"))
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--auto", action="store_true", help="also time Index.dedup(auto=True) (a second full pass)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "hyperret":
            r = run_hyperret(Path(rest[0]), float(rest[1]), rest[2])
        elif kind == "auto":
            r = run_auto(Path(rest[0]))
        elif kind == "baseline":
            r = run_baseline(Path(rest[0]), float(rest[1]))
        else:
            r = run_brute(Path(rest[0]), int(rest[1]), float(rest[2]))
        print(json.dumps(r))
        return

    a.data.mkdir(parents=True, exist_ok=True)
    groups = a.groups or a.n // 50
    x_path, g_path = make_data(a.n, a.dim, groups, a.data, seed=7)
    truth = np.load(g_path)
    report: dict = {"n": a.n, "dim": a.dim, "groups": groups, "radius": a.radius,
                    "rows_in_groups": int((truth >= 0).sum())}
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-", dir=a.data))
    ix_path = tmp / "ix"
    report["build_seconds"] = build(x_path, ix_path, "exact")
    print(f"built {a.n} rows in {report['build_seconds']:.1f}s", flush=True)

    h = _child(["hyperret", str(ix_path), repr(a.radius), "cells"])
    true_pairs = _pairs_of_groups(truth)
    report["hyperret"] = {"seconds": h["seconds"], "peak_rss_mb": h["VmHWM"], "rss_anon_mb": h["RssAnon"],
                          "rss_file_mb": h["RssFile"], "summary": h["summary"],
                          **_score(_pairs_of_groups(np.array(h["labels"])), true_pairs)}
    found = np.array(h["labels"])
    merged = sum(len(set(truth[found == g]) - {-1}) > 1 for g in np.unique(found[found >= 0]))
    report["hyperret"]["groups_merging_injected_groups"] = int(merged)
    print("hyperret", {k: v for k, v in report["hyperret"].items() if k != "summary"}, flush=True)

    if a.auto:
        au = _child(["auto", str(ix_path)])
        report["auto"] = {k: au[k] for k in ("seconds", "radius", "auto", "groups")}
        print("auto", report["auto"]["radius"], report["auto"]["seconds"], flush=True)

    if not a.skip_baseline:
        b = _child(["baseline", str(x_path), repr(a.radius)])
        report["baseline"] = {"seconds": b["seconds"], "build_seconds": b["build_seconds"], "checked": b["checked"],
                              "peak_rss_mb": b["VmHWM"], "rss_anon_mb": b["RssAnon"],
                              **_score(_pairs_of_groups(np.array(b["labels"])), true_pairs)}
        print("baseline", report["baseline"], flush=True)

    # Brute force on a subset, against hyperret on an index of that subset.
    sub = min(a.subset, a.n)
    sub_x = tmp / "sub.npy"
    np.save(sub_x, np.load(x_path, mmap_mode="r")[:sub])
    build(sub_x, tmp / "sub-ix", "exact")
    bf = _child(["brute", str(sub_x), str(sub), repr(a.radius)])
    hs = _child(["hyperret", str(tmp / "sub-ix"), repr(a.radius), "cells"])
    bf_pairs = set(zip(*bf["pairs"]))
    # brute force lists pairs within R; hyperret groups are components: compare as components
    lab = np.arange(sub)
    par = list(range(sub))

    def f(i: int) -> int:
        while par[i] != i:
            par[i] = par[par[i]]
            i = par[i]
        return i

    for u, v in bf_pairs:
        ru, rv = f(u), f(v)
        if ru != rv:
            par[max(ru, rv)] = min(ru, rv)
    lab = np.array([f(i) for i in range(sub)])
    single = np.bincount(lab, minlength=sub)[lab] < 2
    lab[single] = -1
    report["subset"] = {"rows": sub, "brute_seconds": bf["seconds"], "hyperret_seconds": hs["seconds"],
                        "brute_pairs_within_radius": len(bf_pairs),
                        **_score(_pairs_of_groups(np.array(hs["labels"])), _pairs_of_groups(lab))}
    print("subset", report["subset"], flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=float))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
