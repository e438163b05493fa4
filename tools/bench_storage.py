r"""Storage benchmark: commit cost as the index grows, readers during writes, compaction, and a SIGKILL soak.

    python tools/bench_storage.py --sizes 20000,100000,1000000 --dim 768 --appends 8 --batch 4096 \
        --reader-size 100000 --compact-size 100000 --kills 60 --data bench-data --json storage.json

Sections (``--only commit,readers,compact,soak``; all by default); commit, readers and compact each run in a
process of their own (peak RSS is that process's VmHWM):

- commit: for each ``--sizes`` N, an index of N rows (``--preset``) built by one commit (timed; the rows are
  added in 100k-row parts), then ``--appends`` appends of ``--batch`` rows, each ``add`` then ``commit``; the
  commit alone is timed (``perf_counter`` around ``commit()``). Bytes written per commit: the sizes of the
  files the new manifest references that the previous one did not (shards/, faiss/, deletions/); its two
  manifest copies are counted apart.
- readers: an index of ``--reader-size`` rows; one thread per handle in ``--readers`` searches, single
  queries with k=10 back to back: ``writer`` (default), the writer's own handle; ``ro``, a read-only handle
  (``refresh()`` every 50 searches, timed apart). Phases:
  idle (``--idle-seconds``), appends (the writer's ``--appends`` add + commit), delete (10% of the rows
  deleted, one commit), compact (``compact()``). Per phase and thread: p50 / p99 / max search latency and
  p99 over the idle p99.
- compact: an index of ``--compact-size`` rows after ``--appends`` appends and 10% of its rows deleted:
  disk bytes of the directory before, after ``compact()`` and after ``cleanup(keep=1)``; compaction
  seconds; shards and candidate segments before and after; recall@10 against an exact float64 brute force
  over the live rows, before and after, and whether the results changed.
- soak: ``--kills`` SIGKILLs, each at a delay uniform in [``--kill-min``, ``--kill-max``] s after a child
  writer (this file, ``--worker soak-child``) prints ``ready``. The child loops over random operations on an
  index seeded with ``--soak-rows`` rows: add ``--soak-batch`` rows + commit; delete 1-5% of the live ids
  (10-30% above twice the seed) + commit; ``compact()``; ``cleanup(keep=2)``. It logs each operation as a
  ``begin`` and a ``done`` line, fsync'd before and after it. After each kill the parent opens the index
  read-only and ``verify()``s it, then checks that every completed operation is there in full, that the one
  in flight is there in full or not at all, that no other id appears, that a search returns live ids only,
  and that stored vectors match what was added.

Data: ``hyperret.testing.synthetic`` HySAC-like points (256 concepts, 32 intrinsic dimensions, curvature 1),
generated once in 100k-row parts into ``--data`` (``storage-x-ROWS-DIM.npy``, memory-mapped; the largest
cached file of the same dim is reused, its prefix being the same points) and sliced; the ids are row numbers
of that file. Prints Markdown tables (``--report FILE.json`` re-prints a saved run's) and writes JSON
(``--json``) with every figure, the command line and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CURV = 1.0
PART = 100_000
K = 10
N_CONCEPTS = 256
SECTIONS = ("commit", "readers", "compact", "soak")


# ---------------------------------------------------------------- helpers
def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def dir_bytes(path: Path) -> int:
    """Bytes of every regular file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def candidate_entries(manifest: Any) -> list[Any]:
    """The candidate segments of a manifest: a tuple of entries, or (older formats) one entry or None."""
    c = manifest.candidates
    if c is None:
        return []
    return list(c) if isinstance(c, (tuple, list)) else [c]


def manifest_files(manifest: Any) -> dict[str, int]:
    """Every file a manifest references -> its recorded size in bytes."""
    out = {e.file: int(e.bytes) for e in manifest.shards}
    out.update({e.file: int(e.bytes) for e in candidate_entries(manifest)})
    if manifest.deletions is not None:
        out[manifest.deletions.file] = int(manifest.deletions.bytes)
    out.update({e.file: int(e.bytes) for e in manifest.files_entries()})
    return out


def layout(manifest: Any) -> dict[str, Any]:
    """Shards, candidate segments (and their rows) and deleted rows of a manifest."""
    segs = candidate_entries(manifest)
    return {"shards": len(manifest.shards), "segments": len(segs), "segment_rows": [int(e.rows) for e in segs],
            "structures": sorted({str(e.factory) for e in segs}), "deleted_rows": int(manifest.deleted_rows)}


def written_since(before: dict[str, int], manifest: Any) -> dict[str, int]:
    """Bytes of the files ``manifest`` references that ``before`` did not, by directory, and the manifest's."""
    out = {"shards": 0, "faiss": 0, "deletions": 0, "other": 0}
    for f, b in manifest_files(manifest).items():
        if f not in before:
            top = f.split("/", 1)[0]
            out[top if top in out else "other"] += b
    out["files"] = sum(out[k] for k in ("shards", "faiss", "deletions", "other"))
    out["manifests"] = 2 * len(manifest.to_json())  # versions/vNNNNNNNN.json and manifest.json
    return out


def pct(values: list[float] | np.ndarray) -> dict[str, Any]:
    """n, p50, p99, max (milliseconds in, milliseconds out) of latencies."""
    a = np.asarray(values, dtype=np.float64)
    if not len(a):
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": int(len(a)), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "processor": platform.processor(), "python": platform.python_version(),
                            "numpy": np.__version__}
    try:
        info["mem_total_gb"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for mod in ("faiss", "numba", "pyarrow"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # machine info is best effort
            info[mod] = f"unavailable: {e}"
    try:
        import hyperret

        info["hyperret"] = hyperret.__version__
        git = ["git", "-C", str(ROOT)]
        info["git_head"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                                capture_output=True, text=True).stdout.strip())
    except Exception as e:
        info["hyperret"] = f"unavailable: {e}"
    return info


# ------------------------------------------------------------------- data
def make_data(data: Path, rows: int, dim: int) -> Path:
    """A ``(>= rows, dim)`` float32 .npy of HySAC-like points in ``data``, generated in parts (or reused)."""
    data.mkdir(parents=True, exist_ok=True)
    for f in sorted(data.glob(f"storage-x-*-{dim}.npy")):
        try:
            have = int(f.name.split("-")[2])
        except ValueError:
            continue
        if have >= rows:
            return f
    from hyperret.testing.synthetic import make_points

    path = data / f"storage-x-{rows}-{dim}.npy"
    tmp = data / f".storage-x-{rows}-{dim}.{os.getpid()}.npy"
    t0 = time.perf_counter()
    x = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    for i, s in enumerate(range(0, rows, PART)):
        x[s : s + PART] = make_points(PART, dim, curv=CURV, n_concepts=N_CONCEPTS, intrinsic_dim=32, seed=11,
                                      part=i + 1).space[: rows - s]
    x.flush()
    del x
    tmp.rename(path)
    print(f"# generated {rows} x {dim} points in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return path


def make_queries(m: int, dim: int) -> np.ndarray:
    from hyperret.testing.synthetic import make_points

    return make_points(m, dim, curv=CURV, n_concepts=N_CONCEPTS, intrinsic_dim=32, seed=11, part=10_000).space


def build_index(path: Path, x: np.ndarray, n: int, dim: int, preset: str) -> tuple[Any, float]:
    """A writable index of rows ``0..n`` of ``x`` (ids = row numbers), one add + commit; and its seconds."""
    import hyperret

    t = time.perf_counter()
    w = hyperret.Index.create(path, dim=dim, curv=CURV, preset=preset)
    for s in range(0, n, PART):
        e = min(n, s + PART)
        w.add(np.asarray(x[s:e]), ids=np.arange(s, e, dtype=np.int64))
    w.commit()
    return w, time.perf_counter() - t


def append(w: Any, x: np.ndarray, start: int, batch: int) -> float:
    """Add rows ``start .. start + batch`` of ``x`` and commit; returns the commit's seconds."""
    w.add(np.asarray(x[start : start + batch]), ids=np.arange(start, start + batch, dtype=np.int64))
    t = time.perf_counter()
    w.commit()
    return time.perf_counter() - t


def exact_topk(x: np.ndarray, live: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids (= rows of ``x``) among ``live`` for ``q`` (float64 Lorentz inner products)."""
    from hyperret.geometry import lorentz

    q64 = q.astype(np.float64)
    qt = lorentz.time_component(q64, CURV)
    best_i = np.zeros((len(q), 0), np.int64)
    best_s = np.zeros((len(q), 0))
    for s in range(0, len(live), 20_000):
        ids = live[s : s + 20_000]
        xb = np.asarray(x[ids], dtype=np.float64)
        score = q64 @ xb.T - qt[:, None] * lorentz.time_component(xb, CURV)[None, :]  # larger: nearer
        kk = min(k, len(ids))
        part = np.argpartition(-score, kk - 1, axis=1)[:, :kk]
        best_i = np.hstack([best_i, ids[part]])
        best_s = np.hstack([best_s, np.take_along_axis(score, part, 1)])
    order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(best_i, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


# ---------------------------------------------------------------- workers
def worker_commit(spec: dict[str, Any]) -> dict[str, Any]:
    """Build N rows, then ``appends`` timed add + commit rounds."""
    n, dim, batch = spec["n"], spec["dim"], spec["batch"]
    x = np.load(spec["data"], mmap_mode="r")
    path = Path(spec["work"]) / f"commit-{n}"
    shutil.rmtree(path, ignore_errors=True)
    w, build_s = build_index(path, x, n, dim, spec["preset"])
    out: dict[str, Any] = {"rows": n, "dim": dim, "preset": spec["preset"], "batch": batch, "build_s": build_s,
                           "build_layout": layout(w.manifest), "build_disk_bytes": dir_bytes(path),
                           "segment_rows": getattr(w, "segment_rows", None)}
    commits: list[dict[str, Any]] = []
    for i in range(spec["appends"]):
        before = manifest_files(w.manifest)
        start = n + i * batch
        w.add(np.asarray(x[start : start + batch]), ids=np.arange(start, start + batch, dtype=np.int64))
        t = time.perf_counter()
        version = w.commit()
        el = time.perf_counter() - t
        commits.append({"seconds": el, "version": version, "written": written_since(before, w.manifest),
                        **layout(w.manifest)})
        print(f"# commit {n}+{(i + 1) * batch}: {el:.3f}s", file=sys.stderr, flush=True)
    secs = [c["seconds"] for c in commits]
    written = [c["written"]["files"] for c in commits]
    out.update({
        "commits": commits, "commit_s": secs,
        "commit_s_median": float(np.median(secs)) if secs else None, "commit_s_max": max(secs) if secs else None,
        "written_bytes_median": float(np.median(written)) if written else None,
        "written_bytes_max": max(written) if written else None,
        "batch_raw_bytes": batch * dim * 4, "final_layout": layout(w.manifest), "final_disk_bytes": dir_bytes(path),
        "peak_rss_mb": peak_rss_mb(),
    })
    w.close()
    if not spec["keep"]:
        shutil.rmtree(path, ignore_errors=True)
    return out


class Searcher(threading.Thread):
    """Single-query k=10 searches on one handle in a loop, each timed; optionally ``refresh()`` every so often."""

    def __init__(self, name: str, ix: Any, queries: np.ndarray, refresh_every: int = 0):
        super().__init__(name=name, daemon=True)
        self.ix, self.queries, self.refresh_every = ix, queries, refresh_every
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, bool]] = []  # (start, seconds, k live hits)
        self.refreshes: list[tuple[float, float, bool]] = []  # (start, seconds, changed)
        self.errors: list[tuple[float, str]] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            q = self.queries[i % len(self.queries)][None, :]
            t = time.perf_counter()
            try:
                r = self.ix.search(q, k=K)
                self.samples.append((t, time.perf_counter() - t, bool((r.ids >= 0).sum() == K)))
            except Exception as e:  # a failed search is a result here
                self.errors.append((t, f"{type(e).__name__}: {e}"))
                time.sleep(0.01)
            i += 1
            if self.refresh_every and i % self.refresh_every == 0:
                t = time.perf_counter()
                try:
                    changed = bool(self.ix.refresh())
                    self.refreshes.append((t, time.perf_counter() - t, changed))
                except Exception as e:
                    self.errors.append((t, f"refresh: {type(e).__name__}: {e}"))


def fresh_index(spec: dict[str, Any], name: str) -> tuple[np.ndarray, Path, Any, float]:
    """The data, and a new ``spec["n"]``-row index built from it under ``work/NAME-N``: (x, path, writer, build s)."""
    x = np.load(spec["data"], mmap_mode="r")
    path = Path(spec["work"]) / f"{name}-{spec['n']}"
    shutil.rmtree(path, ignore_errors=True)
    w, build_s = build_index(path, x, spec["n"], spec["dim"], spec["preset"])
    return x, path, w, build_s


def worker_readers(spec: dict[str, Any]) -> dict[str, Any]:
    """Search latencies of a read-only handle and of the writer's handle while the writer idles, appends, compacts."""
    import hyperret

    n, dim, batch = spec["n"], spec["dim"], spec["batch"]
    x, path, w, build_s = fresh_index(spec, "readers")
    r = hyperret.Index.open(path)
    q = make_queries(256, dim)
    for h in (r, w):  # warm (Numba kernels, page cache)
        for i in range(20):
            h.search(q[i : i + 1], k=K)
    threads = []
    if "ro" in spec["readers"]:
        threads.append(Searcher("read-only handle", r, q, refresh_every=50))
    if "writer" in spec["readers"]:
        threads.append(Searcher("writer handle", w, q[::-1].copy()))
    phases: list[dict[str, Any]] = []

    def phase(name: str, fn: Any) -> None:
        t0 = time.perf_counter()
        info: dict[str, Any] = {"phase": name}
        try:
            info.update(fn() or {})
        except Exception as e:  # e.g. compact() missing: the phase records why
            info["error"] = f"{type(e).__name__}: {e}"
            print(f"# readers: {name}: {info['error']}", file=sys.stderr, flush=True)
        info.update(start=t0, end=time.perf_counter())
        info["seconds"] = info["end"] - t0
        phases.append(info)

    def appends() -> dict[str, Any]:
        return {"commit_s": [append(w, x, n + i * batch, batch) for i in range(spec["appends"])]}

    def delete() -> dict[str, Any]:
        ids = w.ids()
        gone = np.random.default_rng(5).choice(ids, len(ids) // 10, replace=False)
        w.delete(gone)
        t = time.perf_counter()
        w.commit()
        return {"deleted": int(len(gone)), "commit_s": time.perf_counter() - t}

    def compact() -> dict[str, Any]:
        before = layout(w.manifest)
        res = w.compact()
        return {"result": _jsonable(res), "layout_before": before, "layout_after": layout(w.manifest)}

    for t in threads:
        t.start()
    phase("idle", lambda: time.sleep(spec["idle_seconds"]))
    phase("appends", appends)
    phase("delete", delete)
    phase("compact", compact)
    time.sleep(0.2)
    for t in threads:
        t.stop.set()
    for t in threads:
        t.join(timeout=60)

    out: dict[str, Any] = {"rows": n, "dim": dim, "preset": spec["preset"], "batch": batch, "appends": spec["appends"],
                           "build_s": build_s, "phases": [], "threads": {}}
    for th in threads:
        s = np.array([(a, b, c) for a, b, c in th.samples], dtype=np.float64).reshape(-1, 3)
        per: dict[str, Any] = {}
        for ph in phases:
            sel = (s[:, 0] >= ph["start"]) & (s[:, 0] < ph["end"])
            errs = [e for t0, e in th.errors if ph["start"] <= t0 < ph["end"]]
            per[ph["phase"]] = {**pct(1e3 * s[sel, 1]), "short_results": int((s[sel, 2] == 0).sum()),
                                "errors": len(errs), "first_error": errs[0] if errs else None}
        idle_p99 = per["idle"]["p99"]
        for v in per.values():
            v["p99_over_idle"] = v["p99"] / idle_p99 if v["p99"] is not None and idle_p99 else None
        ref = np.array(th.refreshes, dtype=np.float64).reshape(-1, 3)
        out["threads"][th.name] = {"phases": per, "searches": int(len(s)), "errors": len(th.errors),
                                   "refreshes": {**pct(1e3 * ref[:, 1]), "changed": int(ref[:, 2].sum())}}
    t_start = phases[0]["start"]
    for ph in phases:
        out["phases"].append({k: (v - t_start if k in ("start", "end") else v) for k, v in ph.items()})
    out["peak_rss_mb"] = peak_rss_mb()
    w.close()
    if not spec["keep"]:
        shutil.rmtree(path, ignore_errors=True)
    return out


def worker_compact(spec: dict[str, Any]) -> dict[str, Any]:
    """Disk, layout, time and recall around ``compact()`` and ``cleanup(keep=1)``."""
    import hyperret

    n, dim, batch = spec["n"], spec["dim"], spec["batch"]
    x, path, w, build_s = fresh_index(spec, "compact")
    append_s = [append(w, x, n + i * batch, batch) for i in range(spec["appends"])]
    ids = w.ids()
    gone = np.random.default_rng(7).choice(ids, len(ids) // 10, replace=False)
    w.delete(gone)
    w.commit()
    live = np.sort(w.ids())
    q = make_queries(spec["queries"], dim)
    truth = exact_topk(x, live, q, K)
    res_before = w.search(q, k=K).ids
    out: dict[str, Any] = {
        "rows": n, "dim": dim, "preset": spec["preset"], "appends": spec["appends"], "batch": batch,
        "build_s": build_s, "append_commit_s": append_s, "deleted": int(len(gone)), "live": int(len(live)),
        "queries": len(q), "disk_bytes_before": dir_bytes(path), "layout_before": layout(w.manifest),
        "snapshot_bytes_before": sum(manifest_files(w.manifest).values()), "versions_before": len(w.versions()),
        "recall_before": recall(res_before, truth),
    }
    t = time.perf_counter()
    try:
        res = w.compact()
    except Exception as e:  # reported, the rest of the section is skipped
        out["error"] = f"{type(e).__name__}: {e}"
        w.close()
        return out
    out["compact_s"] = time.perf_counter() - t
    out["result"] = _jsonable(res)
    out["disk_bytes_after_compact"] = dir_bytes(path)
    out["layout_after"] = layout(w.manifest)
    out["snapshot_bytes_after"] = sum(manifest_files(w.manifest).values())
    after = w.search(q, k=K).ids
    out["recall_after"] = recall(after, truth)
    out["results_unchanged"] = float(np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(after, res_before)]))
    out["ids_unchanged"] = bool(np.array_equal(np.sort(w.ids()), live))
    out["deleted_returned"] = int(np.isin(after, gone).sum())
    t = time.perf_counter()
    w.verify()
    out["verify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out["cleanup"] = _jsonable(w.cleanup(keep=1))
    out["cleanup_s"] = time.perf_counter() - t
    out["disk_bytes_after_cleanup"] = dir_bytes(path)
    w.close()
    r = hyperret.Index.open(path)  # a fresh reader of the compacted, cleaned-up index
    r.verify()
    out["reopened_recall"] = recall(r.search(q, k=K).ids, truth)
    out["peak_rss_mb"] = peak_rss_mb()
    if not spec["keep"]:
        shutil.rmtree(path, ignore_errors=True)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


# ------------------------------------------------------------------- soak
def soak_batch(op: int, batch: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and ids that add operation ``op`` writes."""
    from hyperret.testing.synthetic import make_points

    x = make_points(batch, dim, curv=CURV, n_concepts=32, seed=3, part=op + 1).space
    return x, op * batch + np.arange(batch, dtype=np.int64)


def soak_child(spec: dict[str, Any]) -> None:
    """The writer to be killed: random operations forever, each logged (fsync'd) before and after."""
    import hyperret

    batch, dim = spec["batch"], spec["dim"]
    rng = np.random.default_rng(spec["seed"])
    log = open(spec["log"], "a")  # open until the SIGKILL

    def note(rec: dict[str, Any]) -> None:
        log.write(json.dumps(rec) + "\n")
        log.flush()
        os.fsync(log.fileno())

    w: Any = hyperret.Index.open(spec["path"], writable=True)
    can_compact = hasattr(w, "compact")
    if not can_compact:
        note({"note": "compact unavailable"})
    kinds = ["add", "delete", "compact", "cleanup"] if can_compact else ["add", "delete", "cleanup"]
    probs = np.array([0.52, 0.3, 0.06, 0.12] if can_compact else [0.55, 0.3, 0.15])
    print("ready", flush=True)
    op = spec["op_start"]
    while True:
        kind = str(rng.choice(kinds, p=probs / probs.sum()))
        live = w.ids()
        t0 = time.perf_counter()
        if kind == "delete" and len(live) < 2 * batch:
            kind = "add"
        if kind == "add":
            x, ids = soak_batch(op, batch, dim)
            note({"op": op, "phase": "begin", "kind": "add", "first": int(ids[0]), "count": len(ids)})
            w.add(x, ids=ids)
            v = w.commit()
        elif kind == "delete":
            share = rng.uniform(0.1, 0.3) if len(live) > 2 * spec["rows"] else rng.uniform(0.01, 0.05)
            gone = np.sort(rng.choice(live, max(1, int(len(live) * share)), replace=False))
            note({"op": op, "phase": "begin", "kind": "delete", "ids": gone.tolist()})
            w.delete(gone)
            v = w.commit()
        elif kind == "compact":
            note({"op": op, "phase": "begin", "kind": "compact"})
            v = int(w.compact()["version"])
        else:
            note({"op": op, "phase": "begin", "kind": "cleanup"})
            w.cleanup(keep=2)
            v = w.version
        note({"op": op, "phase": "done", "kind": kind, "version": int(v), "seconds": time.perf_counter() - t0})
        op += 1


def read_log(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """Completed operations in order, the one begun but not done (or None), and notes; torn lines are skipped."""
    begun: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    done: set[int] = set()
    notes: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            if "note" in rec:
                notes.append(rec["note"])
            elif rec["phase"] == "begin":
                begun[rec["op"]] = rec
                order.append(rec["op"])
            else:
                done.add(rec["op"])
                begun[rec["op"]].update(version=rec.get("version"), seconds=rec.get("seconds"))
    completed = [begun[o] for o in order if o in done]
    open_ops = [begun[o] for o in order if o not in done]
    return completed, (open_ops[-1] if open_ops else None), notes


def op_ids(op: dict[str, Any]) -> set[int]:
    if op["kind"] == "add":
        return set(range(op["first"], op["first"] + op["count"]))
    if op["kind"] == "delete":
        return set(op["ids"])
    return set()


def apply_op(state: set[int], op: dict[str, Any]) -> set[int]:
    if op["kind"] == "add":
        return state | op_ids(op)
    if op["kind"] == "delete":
        return state - op_ids(op)
    return state


def run_soak(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """SIGKILL a writer at random instants; after each kill, check the committed state against the logs."""
    import hyperret

    dim, batch = a.soak_dim, a.soak_batch
    path = work / "soak"
    shutil.rmtree(path, ignore_errors=True)
    w = hyperret.Index.create(path, dim=dim, curv=CURV, preset=a.preset)
    next_op = max(1, -(-a.soak_rows // batch))  # the seed rows are add operations 0 .. next_op - 1
    for seed_op in range(next_op):
        w.add(*soak_batch(seed_op, batch, dim))
    w.commit()
    expected: set[int] = set(w.ids().tolist())
    last_version = w.version
    w.close()
    rnd = random.Random(a.seed)
    c: dict[str, Any] = {"kills": 0, "child_exits": 0, "child_start_failures": 0, "ops_completed": 0,
                         "lost_commits": 0, "half_applied": 0, "unexpected_ids": 0, "corrupt_opens": 0,
                         "bad_searches": 0, "vector_mismatches": 0, "self_hits": 0, "searches": 0}
    inflight: dict[str, dict[str, int]] = {}
    done_kinds: dict[str, int] = {}
    op_seconds: dict[str, list[float]] = {}
    problems: list[str] = []
    notes: set[str] = set()
    startup: list[float] = []
    t_all = time.perf_counter()
    for i in range(a.kills):
        log = work / f"soak-log-{i:04d}.jsonl"
        err = work / f"soak-err-{i:04d}.txt"
        spec = {"path": str(path), "log": str(log), "op_start": next_op, "seed": a.seed * 100_003 + i,
                "batch": batch, "dim": dim, "rows": a.soak_rows}
        t0 = time.perf_counter()
        with open(err, "w") as ef:
            p = subprocess.Popen([sys.executable, __file__, "--worker", "soak-child", "--spec", json.dumps(spec)],
                                 stdout=subprocess.PIPE, stderr=ef, text=True)
        assert p.stdout is not None
        ready = select.select([p.stdout], [], [], 300)[0] and p.stdout.readline().strip() == "ready"
        if not ready:
            p.kill()
            p.wait()
            c["child_start_failures"] += 1
            problems.append(f"kill {i}: child did not start: {_tail(err)}")
        else:
            startup.append(time.perf_counter() - t0)
            time.sleep(rnd.uniform(a.kill_min, a.kill_max))
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                c["kills"] += 1
            else:
                c["child_exits"] += 1
                problems.append(f"kill {i}: child exited by itself ({p.returncode}): {_tail(err)}")
            p.wait()
        p.stdout.close()
        completed, pending, ns = read_log(log)
        notes.update(ns)
        for op in completed:
            done_kinds[op["kind"]] = done_kinds.get(op["kind"], 0) + 1
            op_seconds.setdefault(op["kind"], []).append(float(op.get("seconds") or 0.0))
        c["ops_completed"] += len(completed)
        began = [op["op"] for op in completed] + ([pending["op"]] if pending else [])
        next_op = max([next_op - 1, *began]) + 1
        base = expected
        for op in completed:
            base = apply_op(base, op)
        with_pending = apply_op(base, pending) if pending else base
        try:
            ix = hyperret.Index.open(path)
            ix.verify()
            actual = set(ix.ids().tolist())
        except Exception as e:  # a corrupt open is a result here
            c["corrupt_opens"] += 1
            problems.append(f"kill {i}: open/verify: {type(e).__name__}: {e}")
            expected = base  # the next writer's open decides what is there
            continue
        pend_ids = op_ids(pending) if pending else set()
        pend_add = pend_ids if pending and pending["kind"] == "add" else set()
        pend_del = pend_ids if pending and pending["kind"] == "delete" else set()
        # versions: the last completed operation's, or what the previous check saw; one more if the op in
        # flight committed; never less (a lost commit)
        done_version = max([last_version, *(int(op["version"]) for op in completed if op.get("version") is not None)])
        if ix.version < done_version:
            c["lost_commits"] += 1
            problems.append(f"kill {i}: the index is at version {ix.version}, a completed operation made "
                            f"{done_version}")
        elif ix.version > done_version + (pending is not None and pending["kind"] != "cleanup"):
            problems.append(f"kill {i}: the index is at version {ix.version}, at most "
                            f"{done_version + 1} was possible")
        if pending is not None:
            slot = inflight.setdefault(pending["kind"], {"landed": 0, "not_landed": 0})
            landed = ix.version > done_version
            slot["landed" if landed else "not_landed"] += 1
            if pend_ids and actual != (with_pending if landed else base):
                problems.append(f"kill {i}: {pending['kind']} op {pending['op']} in flight: version says "
                                f"{'landed' if landed else 'not landed'}, the ids disagree")
        last_version = ix.version
        missing = base - actual - pend_del
        extra = actual - base - pend_add
        if missing or extra:
            lost = [op["op"] for op in completed if (op["kind"] == "add" and op_ids(op) & missing)
                    or (op["kind"] == "delete" and op_ids(op) & extra)]
            c["lost_commits"] += len(lost)
            c["unexpected_ids"] += len(extra - set().union(*(op_ids(o) for o in completed)))
            problems.append(f"kill {i}: {len(missing)} ids missing, {len(extra)} unexpected; lost ops {lost[:10]}")
        if pending is not None and pend_ids:
            hit = len(pend_ids & actual)
            whole = len(pend_ids & base) if pend_del else len(pend_ids)
            if 0 < hit < whole:
                c["half_applied"] += 1
                problems.append(f"kill {i}: {pending['kind']} op {pending['op']} half applied ({hit} of {whole} "
                                f"ids present)")
        expected = actual
        # a search returns live ids only, and finds a stored row itself; stored vectors are what was added
        live = np.fromiter(actual, dtype=np.int64)
        if len(live):
            pick = np.random.default_rng(i).choice(live, min(4, len(live)), replace=False)
            op_of = {int(v): int(v) // batch for v in pick}
            vecs = ix.vectors(pick)
            for v, row in zip(pick.tolist(), vecs):
                xs, _ = soak_batch(op_of[v], batch, dim)
                if not np.array_equal(xs[v - op_of[v] * batch], row):
                    c["vector_mismatches"] += 1
                    problems.append(f"kill {i}: stored vector of id {v} differs from the one added")
            try:
                res = ix.search(vecs, k=K).ids
                c["searches"] += len(pick)
                want = min(K, len(live))
                ok = all((r >= 0).sum() == want for r in res) and bool(np.isin(res[res >= 0], live).all())
                if not ok:
                    c["bad_searches"] += 1
                    problems.append(f"kill {i}: search returned {res.tolist()[:1]} (non-live or too few ids)")
                c["self_hits"] += int((res[:, 0] == pick).sum())
            except Exception as e:
                c["bad_searches"] += 1
                problems.append(f"kill {i}: search: {type(e).__name__}: {e}")
        ix.close()
        if (i + 1) % 10 == 0:
            print(f"# soak: {i + 1} kills, {c['ops_completed']} ops, {len(expected)} live ids, "
                  f"{len(problems)} problems", file=sys.stderr, flush=True)
    out: dict[str, Any] = {**c, "dim": dim, "batch": batch, "preset": a.preset,
                           "kill_delay_s": [a.kill_min, a.kill_max],
                           "seconds": time.perf_counter() - t_all, "ops_completed_by_kind": done_kinds,
                           "op_seconds_median": {k: float(np.median(v)) for k, v in op_seconds.items()},
                           "inflight_at_kill": inflight, "live_ids_at_end": len(expected), "notes": sorted(notes),
                           "child_startup_s_median": float(np.median(startup)) if startup else None,
                           "problems": problems[:50], "problem_count": len(problems)}
    # A last writer cleans up (the dead writers' debris, all but the newest version); then every file in
    # shards/, faiss/ and deletions/ is one the manifest names.
    try:
        w = hyperret.Index.open(path, writable=True)
        out["final_cleanup"] = _jsonable(w.cleanup(keep=1))
        named = set(manifest_files(w.manifest))
        on_disk = {f"{d.name}/{f.name}" for d in (path / "shards", path / "faiss", path / "deletions")
                   if d.is_dir() for f in d.iterdir()}
        out["stray_files"] = sorted(on_disk - named)[:20]
        out["stray_file_count"] = len(on_disk - named)
        out["missing_files"] = sorted(named - on_disk)[:20]
        out["final_version"] = w.version
        out["final_layout"] = layout(w.manifest)
        w.close()
        out["final_disk_bytes"] = dir_bytes(path)
    except Exception as e:
        out["final_error"] = f"{type(e).__name__}: {e}"
    if not a.keep:
        shutil.rmtree(path, ignore_errors=True)
    return out


def _tail(p: Path, n: int = 600) -> str:
    try:
        return p.read_text()[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


# ---------------------------------------------------------------- parent
def run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run a worker in its own process (its stderr passed through as it comes); its JSON, or what it died of."""
    cmd = [sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)]
    tail: deque[str] = deque(maxlen=12)
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        assert p.stderr is not None
        for line in p.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())
        p.wait()
        out.seek(0)
        lines = out.read().strip().splitlines()
    if p.returncode != 0 or not lines:
        print(f"# {kind} worker failed (exit {p.returncode})", file=sys.stderr, flush=True)
        return {"error": tail[-1] if tail else f"exit {p.returncode}", "traceback": list(tail)}
    return json.loads(lines[-1])


def mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def num(v: Any, fmt: str = "%.3f") -> str:
    return "-" if v is None else fmt % v


def render(report: dict[str, Any]) -> str:
    """The Markdown tables of a run."""
    a = report["args"]
    m = report["machine"]
    res = report["results"]
    lines = [f"`{' '.join(report['command'])}`", "",
             f"{m.get('cpu_count')} cores ({m.get('cpu_model', m.get('processor', '?'))}), "
             f"{m.get('mem_total_gb', '?')} GB, {m.get('platform')}, faiss {m.get('faiss')}, numba {m.get('numba')}, "
             f"hyperret at {m.get('git_head')}{' with local changes' if m.get('git_dirty') else ''}"]
    if "commit" in res:
        lines += ["", f"### Commit cost (preset {a['preset']}, dim {a['dim']}, {a['appends']} appends of "
                  f"{a['batch']} rows)", "",
                  "| rows | build s | commit s median | commit s max | commit s (each) | MB written / commit "
                  "median (max) | of which faiss/ (median) | batch raw MB | segments after | disk MB after | "
                  "peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["commit"]:
            if "error" in r:
                lines.append(f"| {r.get('rows', '?')} | error: {r['error']} |" + " |" * 9)
                continue
            faiss_b = [c["written"]["faiss"] for c in r["commits"]]
            lines.append(
                f"| {r['rows']:,} | {r['build_s']:.2f} | {num(r['commit_s_median'])} | {num(r['commit_s_max'])} | "
                f"{' '.join(f'{s:.3g}' for s in r['commit_s'])} | {mb(r['written_bytes_median'])} "
                f"({mb(r['written_bytes_max'])}) | {mb(float(np.median(faiss_b)) if faiss_b else None)} | "
                f"{mb(r['batch_raw_bytes'])} | {r['final_layout']['segments']} | {mb(r['final_disk_bytes'])} | "
                f"{r['peak_rss_mb']:.0f} |")
    if "readers" in res:
        r = res["readers"]
        lines += ["", f"### Readers during writes ({a['reader_size']:,} rows, preset {a['preset']}, single queries, "
                  f"k={K})", ""]
        if "error" in r and "threads" not in r:
            lines.append(f"error: {r['error']}")
        else:
            ph = {p["phase"]: p for p in r["phases"]}
            lines.append("phases: " + "; ".join(
                f"{p['phase']} {p['seconds']:.2f} s" + (f" (error: {p['error']})" if "error" in p else "")
                for p in r["phases"]))
            if "commit_s" in ph.get("appends", {}):
                lines.append(f"appends' commits: {' '.join(f'{s:.2f}' for s in ph['appends']['commit_s'])} s")
            lines += ["", "| phase | handle | searches | p50 ms | p99 ms | max ms | p99 / idle p99 | errors |",
                      "|---|---|---|---|---|---|---|---|"]
            for name in ph:
                for th, t in r["threads"].items():
                    v = t["phases"][name]
                    err = str(v["errors"]) + (f" ({v['first_error']})" if v["first_error"] else "")
                    if v.get("short_results"):
                        err += f"; {v['short_results']} searches returned fewer than {K} hits"
                    lines.append(f"| {name} | {th} | {v['n']} | {num(v['p50'], '%.2f')} | {num(v['p99'], '%.2f')} "
                                 f"| {num(v['max'], '%.1f')} | {num(v['p99_over_idle'], '%.2f')} | {err} |")
            for th, t in r["threads"].items():
                f = t["refreshes"]
                if f["n"]:
                    lines.append(f"\n{th}: {f['n']} refresh() calls ({f['changed']} moved to a newer version), "
                                 f"p50 {f['p50']:.2f} ms, max {f['max']:.1f} ms")
    if "compact" in res:
        r = res["compact"]
        lines += ["", f"### Compaction ({r.get('rows', a['compact_size']):,} rows + {a['appends']} x {a['batch']} "
                  f"appended, 10% deleted, preset {a['preset']})", ""]
        if "compact_s" not in r:
            lines.append(f"error: {r.get('error')}")
            if "recall_before" in r:
                lines.append(f"before: recall@10 {r['recall_before']:.4f}, layout {r['layout_before']}, "
                             f"disk {mb(r['disk_bytes_before'])} MB")
        else:
            lb, la = r["layout_before"], r["layout_after"]
            lines += ["| live rows | deleted | compact s | shards | segments | disk MB before / after compact / "
                      "after cleanup(keep=1) | snapshot MB before / after | recall@10 before / after (exact) | "
                      "same results | deleted ids returned |",
                      "|---|---|---|---|---|---|---|---|---|---|",
                      f"| {r['live']:,} | {r['deleted']:,} | {r['compact_s']:.2f} | {lb['shards']} -> {la['shards']} | "
                      f"{lb['segments']} -> {la['segments']} | {mb(r['disk_bytes_before'])} / "
                      f"{mb(r['disk_bytes_after_compact'])} / {mb(r['disk_bytes_after_cleanup'])} | "
                      f"{mb(r['snapshot_bytes_before'])} / {mb(r['snapshot_bytes_after'])} | "
                      f"{r['recall_before']:.4f} / {r['recall_after']:.4f} | {r['results_unchanged']:.3f} | "
                      f"{r['deleted_returned']} |"]
            lines.append(f"\ncompact() returned {r['result']}; cleanup(keep=1) removed {r['cleanup']}")
    if "soak" in res:
        r = res["soak"]
        lines += ["", f"### Crash soak ({a['soak_rows']:,} rows to start, dim {a['soak_dim']}, batches of "
                  f"{a['soak_batch']}, preset {a['preset']}, kill "
                  f"{a['kill_min']}-{a['kill_max']} s after ready)", ""]
        if "kills" not in r:
            lines.append(f"error: {r.get('error')}")
        else:
            lines += ["| kills | ops completed | in flight at the kill: landed / not landed | lost commits | "
                      "half-applied ops | unexpected ids | corrupt opens | bad searches | vector mismatches | "
                      "stray files after cleanup | minutes |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            fl = r["inflight_at_kill"]
            landed = sum(v["landed"] for v in fl.values())
            not_landed = sum(v["not_landed"] for v in fl.values())
            lines.append(f"| {r['kills']} | {r['ops_completed']} | {landed} / {not_landed} | {r['lost_commits']} | "
                         f"{r['half_applied']} | {r['unexpected_ids']} | {r['corrupt_opens']} | {r['bad_searches']} "
                         f"| {r['vector_mismatches']} | {r.get('stray_file_count', '-')} | {r['seconds'] / 60:.1f} |")
            med = r.get("op_seconds_median", {})
            kinds = ", ".join(f"{k} {v}" + (f" (median {med[k]:.2f} s)" if k in med else "")
                              for k, v in sorted(r["ops_completed_by_kind"].items()))
            flk = ", ".join(f"{k} {v['landed']}/{v['not_landed']}" for k, v in sorted(fl.items()))
            lines.append(f"\nops completed: {kinds}; in flight at the kill (landed/not): {flk}; "
                         f"child exits before the kill: {r['child_exits']}, start failures: "
                         f"{r['child_start_failures']}; searches {r['searches']}, self hits {r['self_hits']}; "
                         f"live ids at the end {r['live_ids_at_end']}"
                         + (f"; notes: {', '.join(r['notes'])}" if r["notes"] else ""))
            for p in r["problems"][:10]:
                lines.append(f"- {p}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections to run: commit,readers,compact,soak")
    ap.add_argument("--sizes", default="20000,100000,1000000", help="commit section: index sizes")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--appends", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reader-size", type=int, default=100_000)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--readers", default="writer", help="handles searched, one thread each: writer (the writer's "
                    "own handle, which a commit used to lock), ro (a read-only handle that refreshes), or ro,writer "
                    "(two threads: with 2 cores they leave the writer none)")
    ap.add_argument("--compact-size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=32, help="compact section: queries checked against brute force")
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--kill-min", type=float, default=0.05)
    ap.add_argument("--kill-max", type=float, default=1.5)
    ap.add_argument("--soak-dim", type=int, default=64)
    ap.add_argument("--soak-batch", type=int, default=500)
    ap.add_argument("--soak-rows", type=int, default=12_000,
                    help="soak: rows the index starts with (deletes grow to 10-30%% of the live rows above twice that)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--data", default="bench-data")
    ap.add_argument("--keep", action="store_true", help="keep the indexes built")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--report", default=None, help="print the tables of a saved --json run and exit")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.report:
        print(render(json.loads(Path(a.report).read_text())))
        return
    if a.worker:
        spec = json.loads(a.spec)
        if a.worker == "soak-child":
            soak_child(spec)
            return
        fn = {"commit": worker_commit, "readers": worker_readers, "compact": worker_compact}[a.worker]
        print(json.dumps(fn(spec)))
        return

    t_start = time.perf_counter()
    only = [s for s in a.only.split(",") if s]
    bad = set(only) - set(SECTIONS)
    if bad:
        ap.error(f"unknown section(s) {', '.join(sorted(bad))} (of {', '.join(SECTIONS)})")
    sizes = sorted(int(s) for s in a.sizes.split(",") if s)
    data = Path(a.data)
    need = [0]
    if "commit" in only:
        need.append(max(sizes) + a.appends * a.batch)
    if "readers" in only:
        need.append(a.reader_size + a.appends * a.batch)
    if "compact" in only:
        need.append(a.compact_size + a.appends * a.batch)
    x_path = make_data(data, max(need), a.dim) if max(need) else None
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=data if data.is_dir() else None))
    base = {"data": str(x_path), "dim": a.dim, "preset": a.preset, "batch": a.batch, "appends": a.appends,
            "work": str(work), "keep": a.keep}
    results: dict[str, Any] = {}
    report: dict[str, Any] = {"command": [Path(sys.executable).name, *sys.argv], "args": vars(a), "machine": machine(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}
    if "commit" in only:
        results["commit"] = []
        for n in sizes:
            r = run_worker("commit", {**base, "n": n})
            r.setdefault("rows", n)
            results["commit"].append(r)
            print(f"# commit {n}: build {r.get('build_s', 0):.1f}s, commit median {r.get('commit_s_median')}",
                  file=sys.stderr, flush=True)
    if "readers" in only:
        results["readers"] = run_worker("readers", {**base, "n": a.reader_size, "idle_seconds": a.idle_seconds,
                                                    "readers": a.readers.split(",")})
    if "compact" in only:
        results["compact"] = run_worker("compact", {**base, "n": a.compact_size, "queries": a.queries})
    if "soak" in only:
        try:
            results["soak"] = run_soak(a, work)
        except Exception as e:  # the other sections' figures still get written
            results["soak"] = {"error": f"{type(e).__name__}: {e}"}
    report["seconds"] = time.perf_counter() - t_start
    print(render(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=_jsonable))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
