"""The library contract: create, add, commit, open, search, appends, snapshots, errors."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

import hyperret
from hyperret import errors
from hyperret.testing.synthetic import make_points, make_queries


def _build(path, points, preset="exact", **kw):
    w = hyperret.Index.create(path, dim=points.space.shape[1], curv=points.curv, preset=preset, **kw)
    w.add(points.space, metadata={"cls": points.cls, "concept": points.concept})
    w.commit()
    return w


def test_exact_preset_equals_float64_knn(tmp_path, points, exact_knn):
    _build(tmp_path / "ix", points).close()
    ix = hyperret.Index.open(tmp_path / "ix")
    assert (len(ix), ix.dim, ix.curv) == (2000, 16, 1.3)
    q = make_queries(points, 40, seed=9)
    r = ix.search(q, k=10)
    ref_rows, ref_d = exact_knn(q, points.space, points.curv, 10)
    np.testing.assert_array_equal(r.ids, ref_rows)  # assigned ids are 0..n-1
    np.testing.assert_allclose(r.distances, ref_d, rtol=1e-6)
    assert r.ids.dtype == np.int64 and r.distances.dtype == np.float32 and r.exact


@pytest.mark.parametrize("preset", ["fast", "compact"])
def test_approximate_presets_recall(tmp_path, preset, exact_knn):
    """Above min_rows the graph / IVF-PQ structures are built; recall@10 stays high after the rerank."""
    pts = make_points(24_000, 32, curv=1.0, n_concepts=60, intrinsic_dim=8, seed=3)
    w = hyperret.Index.create(tmp_path / preset, dim=32, curv=1.0, preset=preset)
    w.add(pts.space)
    w.commit()
    structure = w.info()["candidate_structure"]
    assert structure.startswith("HNSW" if preset == "fast" else "IVF")
    q = make_points(200, 32, curv=1.0, n_concepts=60, intrinsic_dim=8, seed=3, part=99).space
    ref_rows, _ = exact_knn(q, pts.space, 1.0, 10)
    got = w.search(q, k=10).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref_rows)])
    assert recall >= 0.95, recall
    assert not w.search(q[:1]).exact


def test_ids_metadata_and_get(tmp_path, points):
    w = hyperret.Index.create(tmp_path / "ix", dim=16, curv=1.3, preset="exact")
    ids = np.arange(1000, 3000) * 7
    uris = [f"s3://b/{i}.jpg" for i in range(2000)]
    assert np.array_equal(w.add(points.space, ids=ids, metadata=pa.table({"uri": uris})), ids)
    w.commit()
    t = w.get([7000, 20993], columns=["id", "uri"])
    assert t.to_pylist() == [{"id": 7000, "uri": "s3://b/0.jpg"}, {"id": 20993, "uri": "s3://b/1999.jpg"}]
    np.testing.assert_array_equal(w.vectors([7007]), points.space[1:2])
    r = w.search(points.space[5], k=1)  # a 1-D query is one query
    assert r.ids[0, 0] == ids[5] and r.distances[0, 0] == 0
    assert r.to_list()[0][0]["uri"] == "s3://b/5.jpg"
    # assigned ids continue after the largest user id
    assert w.add(points.space[:2])[0] == ids.max() + 1
    with pytest.raises(errors.InvalidInputError):
        w.get([1])


def test_appends_add_shards_and_readers_keep_their_snapshot(tmp_path, points):
    w = hyperret.Index.create(tmp_path / "ix", dim=16, curv=1.3, preset="exact")
    w.add(points.space[:1000], metadata={"cls": points.cls[:1000]})
    assert w.commit() == 1
    reader = hyperret.Index.open(tmp_path / "ix")
    w.add(points.space[1000:], metadata={"cls": points.cls[1000:], "extra": np.ones(1000)})
    assert w.commit() == 2
    assert len(reader) == 1000 and reader.version == 1
    assert reader.search(points.space[1500], k=1).ids[0, 0] != 1500  # not in its snapshot
    assert reader.refresh() and len(reader) == 2000
    assert reader.search(points.space[1500], k=1).ids[0, 0] == 1500
    assert len(reader.manifest.shards) == 2
    # a column only later rows have reads as null for earlier ones
    assert reader.get([0, 1999], columns=["extra"]).column("extra").to_pylist() == [None, 1.0]


def test_search_k_beyond_rows_and_empty_index(tmp_path, points):
    w = hyperret.Index.create(tmp_path / "ix", dim=16, curv=1.3, preset="exact")
    r = w.search(points.space[:2], k=3)
    assert (r.ids == -1).all() and np.isinf(r.distances).all()
    w.add(points.space[:4])
    w.commit()
    r = w.search(points.space[:1], k=6)
    assert sorted(r.ids[0, :4].tolist()) == [0, 1, 2, 3] and (r.ids[0, 4:] == -1).all()
    assert r.to_list()[0][-1]["id"] in (0, 1, 2, 3)


def test_concurrent_searches_are_safe(tmp_path, points):
    _build(tmp_path / "ix", points).close()
    ix = hyperret.Index.open(tmp_path / "ix")
    q = make_queries(points, 64, seed=4)
    want = ix.search(q, k=5).ids
    got, errs = {}, []

    def worker(i):
        try:
            for _ in range(5):
                got[i] = ix.search(q[i % 8 * 8 : i % 8 * 8 + 8], k=5).ids
        except Exception as e:  # collected: the assertion below reports it
            errs.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errs
    for i, ids in got.items():
        np.testing.assert_array_equal(ids, want[i % 8 * 8 : i % 8 * 8 + 8])


def test_search_during_commit_on_one_handle(tmp_path, points):
    w = hyperret.Index.create(tmp_path / "ix", dim=16, curv=1.3, preset="exact")
    w.add(points.space[:500])
    w.commit()
    stop, errs = threading.Event(), []

    def searcher():
        while not stop.is_set():
            try:
                r = w.search(points.space[:3], k=2)
                assert r.ids[0, 0] == 0
            except Exception as e:
                errs.append(e)

    t = threading.Thread(target=searcher)
    t.start()
    for s in range(500, 2000, 300):
        w.add(points.space[s : s + 300])
        w.commit()
    stop.set()
    t.join()
    assert not errs and len(w) == 2000


def test_one_writer_at_a_time(tmp_path, points):
    w = _build(tmp_path / "ix", points)
    with pytest.raises(errors.IndexLockedError):
        hyperret.Index.open(tmp_path / "ix", writable=True)
    w.close()
    hyperret.Index.open(tmp_path / "ix", writable=True).close()
    ro = hyperret.Index.open(tmp_path / "ix")
    with pytest.raises(errors.ReadOnlyIndexError):
        ro.add(points.space[:1])


@pytest.mark.parametrize(
    "bad, err",
    [
        (np.full((2, 16), np.nan), errors.NonFiniteError),
        (np.full((2, 16), np.inf), errors.NonFiniteError),
        (np.full((2, 16), 1e39), errors.NonFiniteError),  # beyond float32
        (np.zeros((2, 15)), errors.DimensionMismatchError),
        ([[0.0] * 16, [0.0] * 15], errors.DimensionMismatchError),
        (np.zeros((2, 2, 16)), errors.DimensionMismatchError),
        ([["a"] * 16], errors.DimensionMismatchError),
    ],
)
def test_bad_vectors_leave_the_snapshot_alone(tmp_path, points, bad, err):
    w = _build(tmp_path / "ix", points)
    before = w.manifest.to_json()
    with pytest.raises(err):
        w.add(bad)
    with pytest.raises(err):
        w.search(bad)
    assert w.pending == 0
    assert w.commit() == 1 and w.manifest.to_json() == before


def test_bad_ids_and_metadata(tmp_path, points):
    w = _build(tmp_path / "ix", points)
    x = points.space[:3]
    with pytest.raises(errors.DuplicateIdError):
        w.add(x, ids=[5, 6, 5])
    with pytest.raises(errors.DuplicateIdError):
        w.add(x, ids=[0, 10_001, 10_002])  # 0 is committed
    w.add(x, ids=[10_001, 10_002, 10_003])
    with pytest.raises(errors.DuplicateIdError):
        w.add(x, ids=[10_003, 10_004, 10_005])  # pending
    with pytest.raises(errors.InvalidInputError):
        w.add(x, ids=[-1, 1, 2])
    with pytest.raises(errors.InvalidInputError):
        w.add(x, ids=[1.5, 2.0, 3.0])
    with pytest.raises(errors.InvalidInputError):
        w.add(x, metadata={"cls": ["a", "b"]})
    with pytest.raises(errors.InvalidInputError):
        w.add(x, metadata={"space": [1, 2, 3]})
    with pytest.raises(errors.InvalidInputError):
        w.add(x, metadata={"cls": [1, 2, 3]})  # committed as strings
    w.rollback()
    assert w.pending == 0 and len(w) == 2000
    assert w.add(x)[0] == 2000  # the counter was rolled back too


def test_create_and_open_errors(tmp_path, points):
    with pytest.raises(errors.IndexNotFoundError):
        hyperret.Index.open(tmp_path / "nothing")
    with pytest.raises(errors.IndexNotFoundError):
        hyperret.Index.open(tmp_path / "nothing", writable=True)
    assert not (tmp_path / "nothing").exists()
    _build(tmp_path / "ix", points).close()
    with pytest.raises(errors.IndexExistsError):
        hyperret.Index.create(tmp_path / "ix", dim=16)
    with pytest.raises(errors.InvalidInputError):
        hyperret.Index.create(tmp_path / "c", dim=16, curv=-1)
    with pytest.raises(errors.InvalidInputError):
        hyperret.Index.create(tmp_path / "d", dim=0)
    with pytest.raises(errors.PresetError):
        hyperret.Index.create(tmp_path / "e", dim=4, preset="nope")
    ix = hyperret.Index.open(tmp_path / "ix")
    with pytest.raises(errors.InvalidInputError):
        ix.search(points.space[:1], k=0)
    with pytest.raises(errors.InvalidInputError):
        ix.search(points.space[:1], k=5, candidates=2)


def test_verify_detects_a_damaged_shard(tmp_path, points):
    _build(tmp_path / "ix", points).close()
    ix = hyperret.Index.open(tmp_path / "ix")
    ix.verify()
    shard = tmp_path / "ix" / ix.manifest.shards[0].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(errors.IndexCorruptError):
        hyperret.Index.open(tmp_path / "ix").verify()


def test_missing_committed_file_is_reported(tmp_path, points):
    _build(tmp_path / "ix", points).close()
    m = hyperret.Index.open(tmp_path / "ix").manifest
    (tmp_path / "ix" / m.candidates[0].file).unlink()
    with pytest.raises(errors.IndexCorruptError):
        hyperret.Index.open(tmp_path / "ix")


def test_growing_past_min_rows_rebuilds_the_structure(tmp_path):
    pts = make_points(12_000, 8, curv=1.0, seed=1, intrinsic_dim=4)
    w = hyperret.Index.create(tmp_path / "ix", dim=8, curv=1.0, preset="fast")
    w.add(pts.space[:2000])
    w.commit()
    assert w.info()["candidate_structure"] == "Flat"  # below min_rows: flat, exact
    assert w.search(pts.space[:1]).exact
    w.add(pts.space[2000:])
    w.commit()
    assert w.info()["candidate_structure"] == "HNSW32"
    assert w.search(pts.space[11_999]).ids[0, 0] == 11_999


def test_info_and_repr(tmp_path, points):
    w = _build(tmp_path / "ix", points, producer={"model": "synthetic"})
    info = w.info()
    assert info["rows"] == 2000 and info["preset"] == "exact" and info["version"] == 1
    assert info["metadata_columns"] == {"cls": "string", "concept": "int64"}
    assert info["producer"]["model"] == "synthetic" and info["producer"]["tool"].startswith("hyperret")
    assert info["total_bytes"] == info["shard_bytes"] + info["candidate_bytes"] > 0
    assert "rows=2000" in repr(w)


@pytest.mark.parametrize("preset, rows", [("fast", 11_000), ("compact", 21_000), ("exact", 3_000)])
def test_appends_extend_the_structure_in_place(tmp_path, preset, rows):
    """Above min_rows an append extends the graph / IVF lists (no retraining); new rows are found."""
    pts = make_points(rows + 1500, 16, curv=0.9, n_concepts=40, intrinsic_dim=6, seed=8)
    w = hyperret.Index.create(tmp_path / preset, dim=16, curv=0.9, preset=preset)
    w.add(pts.space[:rows])
    w.commit()
    (before,) = w.manifest.candidates
    w.close()
    w = hyperret.Index.open(tmp_path / preset, writable=True)  # a fresh writer grows the saved structure
    w.add(pts.space[rows:])
    w.commit()
    (after,) = w.manifest.candidates  # the one segment grew (a copy): still one
    assert after.factory == before.factory and after.trained_rows == before.trained_rows
    assert after.rows == rows + 1500 and after.file != before.file
    w.close()
    ix = hyperret.Index.open(tmp_path / preset)
    new = np.arange(rows, rows + 1500, 50)
    found = ix.search(pts.space[new], k=1).ids[:, 0]
    assert np.mean(found == new) >= 0.95
    assert ix.search(pts.space[:5], k=1).ids[:, 0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("step", ["candidates_written", "committed"])
def test_failed_commit_leaves_the_handle_in_step_with_the_disk(tmp_path, points, step):
    w = _build(tmp_path / "ix", points)

    def boom(name):
        if name == step:
            raise RuntimeError("injected")

    w.on_commit_step = boom
    w.add(points.space[:3], ids=[10_001, 10_002, 10_003])
    with pytest.raises(RuntimeError):
        w.commit()
    w.on_commit_step = None
    committed = step == "committed"
    assert w.version == (2 if committed else 1) and len(w) == (2003 if committed else 2000)
    assert w.pending == (0 if committed else 3)
    w.commit()  # retries what was not committed; adds nothing twice
    assert len(w) == 2003 and len(np.unique(w.ids())) == 2003
    assert len(hyperret.Index.open(tmp_path / "ix")) == 2003


def test_garbage_collection_spares_shards_workers_are_writing(tmp_path):
    from hyperret.storage.shards import write_shard
    from hyperret.testing.synthetic import make_points

    x = make_points(60, 8, curv=1.0, seed=1).space
    with hyperret.Index.create(tmp_path / "ix", dim=8, curv=1.0) as ix:
        with ix.spare_shards("run-1"):
            early = write_shard(ix.path, ix.shard_rows(x[:20], np.arange(100, 120)), tag="run-1")
            stray = write_shard(ix.path, ix.shard_rows(x[20:30], np.arange(200, 210)), tag="other")
            ix.add(x[30:])
            ix.commit()  # its garbage collection runs while "workers" still write run-1 shards
            assert (ix.path / early.file).exists() and not (ix.path / stray.file).exists()
            ix.adopt_shards([early])
            ix.commit()
            late = write_shard(ix.path, ix.shard_rows(x[:5], np.arange(300, 305)), tag="run-1")
        assert len(ix) == 50 and (ix.path / late.file).exists()  # never adopted...
        ix.add(x[:1], ids=[400])
        ix.commit()
        assert not (ix.path / late.file).exists()  # ...so it goes with the next collection
