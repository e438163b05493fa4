"""The GPU path: CUDA kernels against the CPU kernels and the float64 reference; the GPU-resident index.

Without a GPU these run on Numba's CUDA simulator (tests/conftest.py sets
``NUMBA_ENABLE_CUDASIM=1``), where a block sorts 64 pairs: a few hundred rows cross
block and selection-pass boundaries. On a GPU machine they run on the device.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import hyperret
from hyperret.cli import app
from hyperret.cuda import CudaExact, Device, DeviceRows, parse_device
from hyperret.cuda import kernels as K
from hyperret.errors import InvalidInputError
from hyperret.geometry import lorentz
from hyperret.search.exact import CpuExact
from hyperret.storage.shardset import ShardSet
from hyperret.testing.cudasim import fast_simulator
from hyperret.testing.synthetic import make_points, make_queries

DIM = 8
CURV = 1.3


@pytest.fixture(autouse=True)
def _simulator():
    """On the simulator: a short switch interval (7x faster) and race-free shared arrays (see cudasim)."""
    with fast_simulator():
        yield


@pytest.fixture(scope="module")
def pts():
    return make_points(400, DIM, curv=CURV, n_concepts=6, seed=4)


def _device_exact(parts, names=None, storage="float32", method="auto"):
    dev = Device.open("cuda")
    rows = DeviceRows(dev, DIM, CURV, storage)
    shards = ShardSet(parts, DIM)
    view = rows.sync(names or [f"s{i}" for i in range(len(parts))], shards)
    return CudaExact(dev, view, shards, CURV, method=method), rows, shards


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("method", ["fused", "gemm"])
def test_scan_matches_the_cpu_scan_across_blocks_and_passes(pts, method, monkeypatch):
    from hyperret.cuda import exact as cuda_exact

    monkeypatch.setattr(cuda_exact, "_MAX_GRID_Y", 3)  # 5 queries in two launches
    data = pts.space[:300]
    ex, _, shards = _device_exact([data[:130], data[130:]], method=method)
    q = make_queries(pts, 5, seed=2)
    kc = 26  # 5 blocks of 64 rows keep 26 each: two selection passes
    assert -(-300 // K.CHUNK) * kc > K.CHUNK or K.CHUNK > 300  # (on a GPU one block holds them all)
    got = ex.scan(q, kc)
    want = CpuExact(shards, CURV).scan(q, kc)
    assert ex.cpu_fallbacks == 0
    np.testing.assert_array_equal(got, want)


def test_rerank_matches_the_float64_reference(pts, exact_knn, monkeypatch):
    from hyperret.cuda import exact as cuda_exact

    monkeypatch.setattr(cuda_exact, "_MAX_GRID_Y", 3)  # launches split by CUDA's grid limit: 4 queries in 2
    data = pts.space[:300]
    ex, _, _ = _device_exact([data])
    q = make_queries(pts, 4, seed=3)
    cand = np.tile(np.r_[np.arange(300)[::-1], np.arange(20), -1], (4, 1))  # duplicates count once
    rows, dist = ex.rerank(q, cand, 10)
    want_rows, want_dist = exact_knn(q, data, CURV, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-9, atol=1e-12)
    # the distance to itself is exactly zero, as on the CPU
    r, d = ex.rerank(data[[7]], np.array([[7, 3]]), 1)
    assert r[0, 0] == 7 and d[0, 0] == 0.0


def test_skip_masks_are_honoured_in_scan_and_rerank(pts, exact_knn):
    data = pts.space[:300]
    ex, _, shards = _device_exact([data], method="fused")
    q = make_queries(pts, 4, seed=5)
    skip = np.zeros(300, np.uint8)
    skip[::3] = 1  # unsafe
    skip[1::7] = 2  # deleted
    cand = ex.scan(q, 20, skip=skip)
    assert (skip[cand[cand >= 0]] == 0).all()
    np.testing.assert_array_equal(cand, CpuExact(shards, CURV).scan(q, 20, skip=skip))
    every = np.tile(np.arange(300), (4, 1))
    skipped = np.zeros(4, np.int64)
    rows, _ = ex.rerank(q, every, 10, skip=skip, skipped=skipped)
    keep = np.flatnonzero(skip == 0)
    want, _ = exact_knn(q, data[keep], CURV, 10)
    np.testing.assert_array_equal(rows, keep[want])
    assert (skipped == np.count_nonzero(skip == 1)).all()  # rows marked 1 are counted, deleted ones (2) are not
    cpu_skipped = np.zeros(4, np.int64)
    CpuExact(shards, CURV).rerank(q, every, 10, skip=skip, skipped=cpu_skipped)
    np.testing.assert_array_equal(skipped, cpu_skipped)


def test_a_partial_dimension_tile(exact_knn):
    odd = make_points(150, 7, curv=CURV, n_concepts=4, seed=8)  # 7 = one full tile and a part (simulator)
    dev = Device.open("cuda")
    shards = ShardSet([odd.space], 7)
    ex = CudaExact(dev, DeviceRows(dev, 7, CURV).sync(["o"], shards), shards, CURV, method="fused")
    q = make_queries(odd, 3, seed=1)
    r, d = ex.rerank(q, ex.scan(q, 20), 5)
    want, want_d = exact_knn(q, odd.space, CURV, 5)
    np.testing.assert_array_equal(r, want)
    np.testing.assert_allclose(d, want_d, rtol=1e-9)


def test_requests_beyond_the_kernels_fall_back_to_the_cpu(pts):
    data = pts.space[:200]
    ex, _, shards = _device_exact([data])
    q = make_queries(pts, 2, seed=6)
    got = ex.scan(q, K.MAX_KC + 1)
    assert ex.cpu_fallbacks == 1
    np.testing.assert_array_equal(got, CpuExact(shards, CURV).scan(q, K.MAX_KC + 1))
    wide = np.random.default_rng(0).normal(0, 0.1, (40, K.MAX_DIM + 1)).astype(np.float32)
    dev = Device.open("cuda")
    wide_shards = ShardSet([wide], K.MAX_DIM + 1)
    big = CudaExact(dev, DeviceRows(dev, K.MAX_DIM + 1, CURV).sync(["w"], wide_shards), wide_shards, CURV,
                    method="fused")
    cpu = CpuExact(wide_shards, CURV)
    r, d = big.rerank(wide[:2], big.scan(wide[:2], 5), 3)  # the query does not fit in shared memory
    assert big.cpu_fallbacks == 2
    np.testing.assert_array_equal(r, cpu.rerank(wide[:2], cpu.scan(wide[:2], 5), 3)[0])


def test_device_rows_upload_only_new_shards(pts):
    a, b, c = pts.space[:100], pts.space[100:250], pts.space[250:400]
    dev = Device.open("cuda")
    rows = DeviceRows(dev, DIM, CURV)
    v1 = rows.sync(["a"], ShardSet([a], DIM))
    assert v1.n == 100 and rows.uploaded_bytes == a.nbytes
    v2 = rows.sync(["a", "b"], ShardSet([a, b], DIM))  # a commit appended a shard
    assert v2.n == 250 and rows.uploaded_bytes == a.nbytes + b.nbytes and rows.full_uploads == 1
    np.testing.assert_array_equal(v2.rows.copy_to_host()[:250], np.concatenate([a, b]))
    np.testing.assert_allclose(v2.xn.copy_to_host()[:250], np.einsum("ij,ij->i", *(np.concatenate([a, b]),) * 2,
                                                                     dtype=np.float64), rtol=1e-12)
    assert v1.n == 100  # a search holding the old view still sees its rows
    rows.sync(["c"], ShardSet([c], DIM))  # a compaction rewrote the shards: everything again
    assert rows.full_uploads == 2
    mem = rows.memory()
    assert mem["rows"] == 150 and mem["rows_bytes"] >= 150 * DIM * 4 and mem["device"] == "cuda:0"


def test_float16_rows_still_rank_exactly(pts, exact_knn):
    data = pts.space[:300]
    ex, rows, _ = _device_exact([data], storage="float16")
    assert rows.memory()["rows_bytes"] == 300 * DIM * 2
    q = make_queries(pts, 4, seed=7)
    cand = ex.scan(q, ex.width(10))
    r, d = ex.rerank(q, cand, 10)  # the rerank reads the float32 rows on the host
    want, want_d = exact_knn(q, data, CURV, 10)
    np.testing.assert_array_equal(r, want)
    np.testing.assert_allclose(d, want_d, rtol=1e-5)


def test_device_names_are_checked():
    assert parse_device("cpu") is None and parse_device("cuda") == 0 and parse_device("cuda:1") == 1
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:1:2", 3):
        with pytest.raises(InvalidInputError):
            parse_device(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="only"):
        Device.open("cuda:9")
    with pytest.raises(InvalidInputError, match="storage"):
        DeviceRows(Device.open("cuda"), DIM, CURV, "int8")


# -------------------------------------------------------- resident index
@pytest.fixture()
def index_dir(tmp_path, pts):
    ix = hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV, preset="fast")
    ix.add(pts.space[:300], metadata={"width": np.arange(300) % 10})
    ix.commit()
    ix.close()
    return tmp_path / "ix"


def test_index_on_device_matches_the_cpu_and_follows_commits(index_dir, pts):
    cpu = hyperret.Index.open(index_dir)
    gpu = hyperret.Index.open(index_dir, device="cuda")
    assert gpu.device == "cuda:0" and cpu.device == "cpu" and cpu.device_memory() is None
    q = make_queries(pts, 3, seed=8)
    r, r0 = gpu.search(q, 5), cpu.search(q, 5, recall=1.0)
    assert r.exact
    np.testing.assert_array_equal(r.ids, r0.ids)
    np.testing.assert_allclose(r.distances, r0.distances, rtol=1e-5)
    uploaded = gpu.device_memory()["uploaded_bytes"]
    with hyperret.Index.open(index_dir, writable=True) as w:
        w.add(pts.space[300:], metadata={"width": np.arange(100) % 10})
        w.delete(np.arange(0, 300, 4))
        w.commit()
    assert gpu.refresh() and cpu.refresh()
    mem = gpu.device_memory()
    assert mem["uploaded_bytes"] - uploaded == 100 * DIM * 4 and mem["rows"] == 400  # the new shard only
    r, r0 = gpu.search(q, 5, where="width >= 5"), cpu.search(q, 5, recall=1.0, where="width >= 5")
    np.testing.assert_array_equal(r.ids, r0.ids)
    assert ((r.ids % 4 != 0) | (r.ids >= 300)).all() and (r.ids >= 0).all()  # deleted rows never return
    assert gpu.info()["device"] == "cuda:0" and gpu.info()["device_memory"]["rows"] == 400
    # a knob asks for the structure: the graph walk (CPU) and the rerank on the device
    np.testing.assert_array_equal(gpu.search(q, 5, ef=64).ids, cpu.search(q, 5, ef=64).ids)
    gpu.close()
    assert gpu.device == "cpu" and gpu.device_memory() is None


def test_filter_policy_on_device(tmp_path, pts):
    from hyperret.safety import calibrate

    cal = make_points(3000, DIM, curv=CURV, seed=3, n_concepts=6)
    b = calibrate(lorentz.radius(cal.space, CURV), cal.modality, cal.unsafe, curv=CURV)
    img = pts.space[pts.modality == "image"]
    with hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV, preset="fast", bounds=b,
                               modality="image") as ix:
        ix.add(img)
        ix.commit()
    cpu = hyperret.Index.open(tmp_path / "ix")
    gpu = hyperret.Index.open(tmp_path / "ix", device="cuda")
    q = img[:3]
    r, r0 = gpu.search(q, 5, policy="filter", modality="image"), cpu.search(q, 5, policy="filter", modality="image",
                                                                          recall=1.0)
    np.testing.assert_array_equal(r.ids, r0.ids)
    assert not r.unsafe[r.rows >= 0].any()


def test_search_cli_on_device(index_dir, pts, tmp_path):
    qf = tmp_path / "q.npy"
    np.save(qf, make_queries(pts, 2, seed=11))
    runner = CliRunner()
    res = runner.invoke(app, ["search", str(index_dir), "--vectors", str(qf), "--device", "cuda", "-k", "3",
                              "--json"])
    assert res.exit_code == 0, res.output
    hits = [json.loads(line) for line in res.output.splitlines()]
    cpu = hyperret.Index.open(index_dir).search(np.load(qf), 3, recall=1.0)
    assert [[h["id"] for h in rec["hits"]] for rec in hits] == cpu.ids.tolist()
    bad = runner.invoke(app, ["search", str(index_dir), "--vectors", str(qf), "--device", "tpu"])
    assert bad.exit_code != 0 and "unknown device" in bad.output and "Traceback" not in bad.output


# ----------------------------------------------------------------- faiss-gpu
class _Counting:
    """A real FAISS index that counts its searches (the stand-in for a GPU copy: faiss-cpu has none)."""

    def __init__(self, index):
        self.index, self.calls = index, 0

    def search(self, *a, **kw):
        self.calls += 1
        return self.index.search(*a, **kw)


def test_faiss_gpu_limits_route_searches_to_the_cpu_copy(tmp_path, pts):
    import faiss

    from hyperret.cuda import faiss_gpu

    assert faiss_gpu.available() == (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
    with hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV, preset="compact") as ix:
        ix.add(pts.space)
        ix.commit()
    ix = hyperret.Index.open(tmp_path / "ix")
    stage = ix._snap.stage.parts[0].stage
    assert stage.movable_to_gpu  # IVF (or flat, this small): what faiss-gpu holds
    q = make_queries(pts, 3, seed=12)
    want = ix.search(q, 5, nprobe=4)
    cpu, gpu = _Counting(stage.index), _Counting(faiss.clone_index(stage.index))
    stage.on_gpu = faiss_gpu.GpuStructure(cpu, gpu)
    got = ix.search(q, 5, nprobe=4)
    np.testing.assert_array_equal(got.ids, want.ids)
    assert gpu.calls == 1  # within the limit: the GPU copy answered
    assert not stage.on_gpu.takes(faiss_gpu.GPU_MAX_K + 1, None)  # above FAISS's k limit: the CPU copy answers
    sel = faiss.SearchParameters()
    sel.sel = faiss.IDSelectorRange(0, 10)
    assert not stage.on_gpu.takes(5, sel)  # GPU indexes take no IDSelector
    assert stage.on_gpu.takes(5, faiss.SearchParameters())
