"""Ray benchmark: indexing embedding tables and sharded search against the number of Ray workers.

    python tools/bench_ray.py --n 200000 --dim 768 --workers 1,2 --parts 1,2,3 --json ray.json

* Indexing: a folder of --files Parquet files (HySAC-like rows, generated once under
  --data) built locally (``build_index``) and on local Ray with each worker count
  (``ray.init(num_cpus=W)``). The Ray figure splits into the workers' phase (read,
  check, write shards) and the driver's commit (candidate structure, manifest); the
  local figure into reading + buffering and the same commit.
* Search: the same rows split into P parts, ``ShardedIndex`` (one actor per part)
  against one local ``Index`` over all rows, exact (``recall=1.0``), batches of
  --queries and single queries.

* Images (``--images N``): N generated JPEGs (``tools/bench_encode.py``'s photos) embedded
  with a random-weight HySAC-layout checkpoint of --image-arch (``small``: 768-d, the
  forward, not the decoding, bounds a CPU run), by the local indexer (one decoding
  worker, the model on the main process) and by ``index_images_on_ray`` with one
  embedder actor of --actor-cpus CPUs and the decoders the rest of ``ray.init(num_cpus=2)``
  allows. Images/s and the model's share of each run.

* Dedup (``--dedup N``): N HySAC-like rows with N/50 injected near-duplicate groups
  over HySAC-like rows (``make_duplicates``, as ``tools/bench_dedup.py``), ``exact`` preset, radius 0.05:
  ``Index.dedup`` locally and with ``ray=True`` on ``ray.init(num_cpus=W)`` per worker
  count; the same groups are checked, and what the tasks sent the driver is counted.

Each number is one run on this machine; the 1-billion-image estimate in
docs/benchmarks.md is written from these rates and the stated model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--data", default="/tmp/bench_ray")
    ap.add_argument("--json", default=None)
    ap.add_argument("--images", type=int, default=0, help="also (or, with --n 0, only) index this many images")
    ap.add_argument("--image-arch", default="small", help="tiny or small (tools/bench_encode.py)")
    ap.add_argument("--image-batch", type=int, default=16)
    ap.add_argument("--actor-cpus", default="1", help="comma-separated CPUs per embedder actor to try")
    ap.add_argument("--dedup", type=int, default=0, help="also dedup this many rows locally and on Ray")
    a = ap.parse_args(argv)
    import ray

    extra: dict[str, Any] = {}
    if a.dedup:
        extra["dedup"] = dedup(Path(a.data), a.dedup, a.dim, [int(x) for x in a.workers.split(",")])

    if a.images:
        res = images(Path(a.data), a.images, a.image_arch, a.image_batch, [float(x) for x in a.actor_cpus.split(",")])
        extra["images"] = res
    if not a.n:
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), **extra}, indent=1))
        return 0

    from hyperret.testing.synthetic import make_points, make_queries

    data = Path(a.data)
    pts = make_points(a.n, a.dim, curv=1.0, n_concepts=max(32, a.n // 1000), intrinsic_dim=32, seed=11)
    folder = tables(pts.space, data / f"tables-{a.n}-{a.dim}", a.files)
    out: dict[str, Any] = {"args": vars(a), "indexing": [], "search": [], **extra}
    local = time_build(folder, data / "local", ray_cpus=None)
    out["indexing"].append(local)
    print(f"local: {local['seconds']:.1f} s ({a.n / local['seconds']:,.0f} rows/s); commit {local['commit_s']:.1f} s",
          flush=True)
    for w in (int(x) for x in a.workers.split(",")):
        r = time_build(folder, data / f"ray{w}", ray_cpus=w)
        out["indexing"].append(r)
        print(f"ray, {w} worker(s): {r['seconds']:.1f} s; workers' phase {r['workers_s']:.1f} s "
              f"({a.n / r['workers_s']:,.0f} rows/s); commit {r['commit_s']:.1f} s", flush=True)
    q = make_queries(pts, a.queries, seed=3)
    out["search"] = search(pts.space, q, data, [int(x) for x in a.parts.split(",")])
    ray.shutdown()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


def images(data: Path, n: int, arch_name: str, batch: int, actor_cpus: list[float]) -> list[dict[str, Any]]:
    """Images/s of the local indexer and of the Ray pipeline (one embedder actor) on ``n`` generated JPEGs."""
    import ray

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_encode import ARCHS, hf_checkpoint, make_images

    from hyperret.distributed.images import ModelSpec, index_images_on_ray
    from hyperret.embed.encoder import HySACEncoder
    from hyperret.embed.indexer import index_images

    folder, ckpt = data / f"images-{n}", data / f"hysac-{arch_name}.pth"
    if len(list(folder.glob("*.jpg"))) != n:
        make_images(folder, n)
    if not ckpt.exists():
        hf_checkpoint(ARCHS[arch_name], ckpt)
    arch = ARCHS[arch_name]
    res = []
    out = data / "img-local"
    shutil.rmtree(out, ignore_errors=True)
    enc = HySACEncoder.from_checkpoint(ckpt, arch=arch)
    s = index_images(folder, out, enc, batch_size=batch, workers=1, compact=False)
    res.append({"mode": "local", "workers": 1, "images_per_s": s.indexed / s.seconds, "seconds": s.seconds,
                "model_seconds": s.model_seconds})
    print(f"images, local (1 decoding worker): {s.indexed / s.seconds:,.1f} img/s ({s.seconds:.1f} s, "
          f"model {s.model_seconds:.1f} s)", flush=True)
    for c in actor_cpus:
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        shutil.rmtree(out, ignore_errors=True)
        s = index_images_on_ray(folder, out, ModelSpec(str(ckpt), arch), batch_size=batch, actor_cpus=c,
                                compact=False)
        res.append({"mode": "ray", "actor_cpus": c, "images_per_s": s.indexed / s.seconds, "seconds": s.seconds,
                    "model_seconds": s.model_seconds})
        print(f"images, ray (1 embedder of {c:g} CPUs, decoders on the rest): {s.indexed / s.seconds:,.1f} img/s "
              f"({s.seconds:.1f} s, model {s.model_seconds:.1f} s)", flush=True)
    ray.shutdown()
    return res


def dedup(data: Path, n: int, dim: int, workers: list[int]) -> list[dict[str, Any]]:
    """Seconds of ``Index.dedup`` locally and on Ray per worker count, on rows with injected groups."""
    import ray

    import hyperret
    from hyperret.testing.synthetic import make_duplicates, make_points

    out = data / f"dedup-{n}-{dim}"
    if not (out / "manifest.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        base = make_points(n, dim, seed=5).space  # HySAC-like rows, as tools/bench_dedup.py
        ds = make_duplicates(n, dim, groups=n // 50, base=base, seed=5)
        with hyperret.Index.create(out, dim=dim, preset="exact") as w:
            w.add(ds.space)
            w.commit()
    ix = hyperret.Index.open(out)
    res = []
    t = time.perf_counter()
    want = ix.dedup(radius=0.05)
    res.append({"mode": "local", "seconds": time.perf_counter() - t, "groups": want.summary["groups"]})
    print(f"dedup, local: {res[-1]['seconds']:.1f} s, {want.summary['groups']} groups", flush=True)
    for w in workers:
        ray.shutdown()
        ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
        t = time.perf_counter()
        got = ix.dedup(radius=0.05, ray=True)
        secs = time.perf_counter() - t
        same = bool(got.groups.sort_by("id").equals(want.groups.sort_by("id")))
        res.append({"mode": "ray", "workers": w, "seconds": secs, "same_groups": same, **got.summary["ray"]})
        print(f"dedup, ray {w} worker(s): {secs:.1f} s, same groups: {same}, {got.summary['ray']}", flush=True)
    ray.shutdown()
    return res


def tables(x: np.ndarray, folder: Path, files: int) -> Path:
    """``x`` as ``files`` Parquet files (written once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if folder.exists() and len(list(folder.glob("*.parquet"))) == files:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for j, part in enumerate(np.array_split(np.arange(len(x)), files)):
        t = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[part].ravel()), x.shape[1]),
                      "caption": [f"row {i}" for i in part]})
        pq.write_table(t.replace_schema_metadata({b"hyperret.curv": b"1.0"}), folder / f"part-{j:03d}.parquet")
    return folder


def time_build(folder: Path, out: Path, ray_cpus: int | None) -> dict[str, Any]:
    """One build of ``folder`` into ``out``: total seconds, the workers' (or reading) phase, the commit."""
    import ray

    import hyperret
    from hyperret.storage.folders import open_source

    shutil.rmtree(out, ignore_errors=True)
    src = open_source(folder)
    first = next(src.batches())
    t0 = time.perf_counter()
    ix = hyperret.Index.create(out, dim=first.vectors.shape[1], curv=1.0, preset="fast")
    if ray_cpus is None:
        for b in src.batches():
            ix.add(b.vectors, metadata=b.metadata)
    else:
        from hyperret.distributed.indexing import index_on_ray

        ray.shutdown()
        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        index_on_ray(ix, src)
    t1 = time.perf_counter()
    ix.commit()
    t2 = time.perf_counter()
    rows = len(ix)
    ix.close()
    return {"mode": "local" if ray_cpus is None else "ray", "workers": ray_cpus, "rows": rows,
            "seconds": t2 - t0, "workers_s": t1 - t0, "commit_s": t2 - t1}


def search(x: np.ndarray, q: np.ndarray, data: Path, parts: list[int]) -> list[dict[str, Any]]:
    """Exact q/s of one local index and of ShardedIndex over P parts (batch and single queries)."""
    import ray

    import hyperret

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    res = []
    whole = hyperret.Index.open(data / "local")
    res.append(rate("local", whole, q))
    for p in parts:
        dirs = []
        for j, sel in enumerate(np.array_split(np.arange(len(x)), p)):
            d = data / f"parts{p}-{j}"
            if not (d / "manifest.json").exists():
                with hyperret.Index.create(d, dim=x.shape[1], curv=1.0, preset="fast") as ix:
                    ix.add(x[sel], ids=sel)
                    ix.commit()
            dirs.append(d)
        sh = hyperret.ShardedIndex.open(dirs)
        res.append(rate(f"sharded, {p} part(s)", sh, q))
        sh.close()
    return res


def rate(name: str, ix: Any, q: np.ndarray) -> dict[str, Any]:
    ix.search(q[:4], 10, recall=1.0)  # warm: actors started, kernels loaded
    t = time.perf_counter()
    ix.search(q, 10, recall=1.0)
    batch = len(q) / (time.perf_counter() - t)
    single_q = q[: min(50, len(q))]
    t = time.perf_counter()
    for v in single_q:
        ix.search(v[None], 10, recall=1.0)
    single = len(single_q) / (time.perf_counter() - t)
    print(f"search {name}: {batch:,.0f} q/s in a batch of {len(q)}, {single:,.0f} q/s single", flush=True)
    return {"name": name, "batch_qps": batch, "single_qps": single}


if __name__ == "__main__":
    sys.exit(main())
