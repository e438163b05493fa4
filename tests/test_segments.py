"""Incremental commits: each commit indexes only what it adds (a bounded segment), readers never wait."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

import hyperret
from hyperret.storage.shardset import ShardSet

DIM = 16
GRAPH_PRESET = """
name = "graph-small"
proxy = "poincare"
factory = "HNSW16"
navigate = "lorentz"
k_factor = 4.0
k_extra = 32
min_rows = 0
search = { efSearch = 64 }
build = { efConstruction = 40 }
"""


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIM)) * 0.5).astype(np.float32)


def _files(path: Path) -> set[str]:
    return {f"{d}/{f.name}" for d in ("shards", "faiss") for f in (path / d).iterdir()}


@pytest.fixture
def graph_preset(tmp_path) -> str:
    p = tmp_path / "graph-small.toml"
    p.write_text(GRAPH_PRESET)
    return str(p)


def test_window_is_a_view_of_the_rows():
    a, b = np.arange(40, dtype=np.float32).reshape(10, 4), np.arange(40, 80, dtype=np.float32).reshape(10, 4)
    s = ShardSet([a, b], 4)
    w = s.window(7, 6)
    assert w.rows == 6 and np.shares_memory(w.arrays[0], a) and np.shares_memory(w.arrays[1], b)
    np.testing.assert_array_equal(w.gather(np.arange(6)), s.gather(np.arange(7, 13)))
    assert s.window(0, 20) is s


@pytest.mark.parametrize("preset", ["exact", "graph"])
def test_appends_make_bounded_segments_and_search_all_of_them(tmp_path, preset, graph_preset, exact_knn):
    """Each commit grows the last segment within segment_rows, else starts one; search sees every row."""
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="exact" if preset == "exact" else graph_preset)
    w.segment_rows = 500
    batches = [_rows(200, s) for s in range(6)]
    for b in batches:
        w.add(b)
        w.commit()
    segs = [c.rows for c in w.manifest.candidates]
    assert segs == [400, 400, 400]  # 200 grows to 400; 600 > 500 starts the next one
    x = np.concatenate(batches)
    q = x[::37] + 0.01
    r = w.search(q, k=10)
    want, dist = exact_knn(q, x, w.curv, 10)
    if preset == "exact":
        np.testing.assert_array_equal(r.ids, want)
        np.testing.assert_allclose(r.distances, dist, rtol=1e-5)
        assert r.exact
    else:
        recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(r.ids, want)])
        assert recall >= 0.97, recall
    ro = hyperret.Index.open(tmp_path / "ix")  # the same from disk
    np.testing.assert_array_equal(ro.search(q, k=10).ids, r.ids)
    assert ro.info()["segments"] == 3


def test_a_commit_writes_only_what_it_adds(tmp_path, graph_preset):
    """Past segment_rows, an append writes its shard and its own segment; no committed file is rewritten."""
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset=graph_preset)
    w.keep_versions, w.segment_rows = None, 1000
    w.add(_rows(3000, 1))
    w.commit()
    before = _files(tmp_path / "ix")
    first = w.manifest.candidates[0]
    for i in range(3):
        w.add(_rows(300, 10 + i))
        w.commit()
    after = _files(tmp_path / "ix")
    assert before <= after  # nothing rewritten or removed
    new = after - before
    assert len([f for f in new if f.startswith("shards/")]) == 3
    # the tail segment grew (on a copy) twice: three new structure files, the big one untouched
    assert len([f for f in new if f.startswith("faiss/")]) == 3
    assert w.manifest.candidates[0] == first and [c.rows for c in w.manifest.candidates] == [3000, 900]


def test_stage_dedup_finds_pairs_across_segments(tmp_path, graph_preset):
    """Walks from a row's own node in its segment and searches the others: the same pairs as the exact join."""
    base = _rows(600, 3)
    rng = np.random.default_rng(4)
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset=graph_preset)
    w.segment_rows = 400
    w.add(base[:300])
    w.commit()
    w.add(base[300:])
    w.commit()
    picked = rng.choice(600, 40, replace=False)
    assert (picked < 300).sum() > 10  # near copies in segment 1 of rows in segment 0 (and 1)
    w.add(base[picked] + 1e-5)
    w.commit()
    assert [c.rows for c in w.manifest.candidates] == [300, 340]
    cells = w.dedup(radius=1e-3)
    stage = w.dedup(radius=1e-3, method="stage")
    assert len(cells.to_delete) == 40
    np.testing.assert_array_equal(np.sort(stage.to_delete), np.sort(cells.to_delete))


def test_a_format_4_index_opens_searches_and_takes_commits(tmp_path):
    x = _rows(500, 5)
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="exact")
    w.add(x)
    w.commit()
    w.close()
    path = tmp_path / "ix"
    for f in [path / "manifest.json", *sorted((path / "versions").iterdir())[-1:]]:
        m = json.loads(f.read_text())
        m["format_version"], m["candidates"] = 4, m["candidates"][0]  # one structure object, as format 4 wrote
        f.write_text(json.dumps(m))
    ix = hyperret.Index.open(path)
    assert ix.manifest.format_version == 4 and len(ix.manifest.candidates) == 1
    assert ix.search(x[:3], k=1).ids[:, 0].tolist() == [0, 1, 2]
    w = hyperret.Index.open(path, writable=True)
    w.add(_rows(50, 6))
    w.commit()
    assert w.manifest.format_version == hyperret.storage.manifest.FORMAT_VERSION and len(w) == 550


def test_segments_must_cover_the_shards(tmp_path):
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="exact")
    w.add(_rows(100, 7))
    w.commit()
    w.close()
    f = tmp_path / "ix" / "manifest.json"
    m = json.loads(f.read_text())
    m["candidates"][0]["rows"] = 99
    f.write_text(json.dumps(m))
    with pytest.raises(hyperret.errors.IndexCorruptError, match="cover 99 rows"):
        hyperret.Index.open(tmp_path / "ix")


def test_searches_run_while_a_commit_is_under_way(tmp_path, graph_preset):
    """A search on the writer's handle, from another thread and from the commit's own callback, completes
    while the commit is stopped half-way: readers take no lock a commit holds (were they to wait, the
    commit's callback would wait forever for them)."""
    x = _rows(2000, 8)
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset=graph_preset)
    w.add(x[:1500])
    w.commit()
    seen: dict[str, object] = {}

    def during(step: str) -> None:
        if step != "candidates_written":
            return
        seen["inline"] = w.search(x[1600:1601], k=1).ids[0, 0]  # a callback that searches: no deadlock
        t = threading.Thread(target=lambda: seen.__setitem__("thread", w.search(x[:5], k=1).ids[:, 0]))
        t.start()
        t.join(timeout=60)
        seen["finished"] = not t.is_alive()

    w.on_commit_step = during
    w.add(x[1500:])
    w.commit()
    assert seen["finished"] is True
    assert seen["inline"] != 1600  # the search saw the previous snapshot, without the row being committed
    np.testing.assert_array_equal(seen["thread"], np.arange(5))
    assert w.search(x[1600:1601], k=1).ids[0, 0] == 1600  # and the new one once committed


def test_a_reader_refreshes_while_the_writer_commits(tmp_path):
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="exact")
    w.add(_rows(100, 9))
    w.commit()
    r = hyperret.Index.open(tmp_path / "ix")
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                r.refresh()
                assert len(r.search(_rows(2, 10), k=5).ids) == 2
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    t = threading.Thread(target=read)
    t.start()
    for i in range(10):
        w.add(_rows(50, 20 + i))
        w.commit()
    stop.set()
    t.join(timeout=60)
    assert not errors
    r.refresh()
    assert len(r) == 600


def test_a_tail_segment_gets_the_preset_structure_early(tmp_path):
    """A small index is a flat scan (exact); a small tail of a larger one is a graph from 1,024 rows on."""
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="fast")  # min_rows 10,000
    w.segment_rows = 2000
    w.add(_rows(2000, 11))
    w.commit()
    w.add(_rows(500, 12))
    w.commit()
    assert [(c.rows, c.factory) for c in w.manifest.candidates] == [(2000, "Flat"), (500, "Flat")]
    w.close()
    w = hyperret.Index.open(tmp_path / "ix", writable=True)  # the rule holds for a reopened segment too
    w.segment_rows = 2000
    w.add(_rows(600, 13))
    w.commit()
    assert [(c.rows, c.factory) for c in w.manifest.candidates] == [(2000, "Flat"), (1100, "HNSW32")]
    assert w.search(_rows(3, 13)[:3] + 1e-4, k=1).ids[:, 0].tolist() == [2500, 2501, 2502]


def test_a_full_segment_is_kept_as_its_saved_graph(tmp_path, graph_preset):
    """A segment no commit will grow is held as readers hold it (mapped arrays), not as the FAISS graph."""
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset=graph_preset)
    w.segment_rows = 1000
    x = _rows(1500, 14)
    w.add(x[:1000])
    w.commit()
    w.add(x[1000:])
    w.commit()
    full, tail = w._snap.stage.parts
    assert full.stage.index is None and tail.stage.index is not None  # the tail may still grow
    assert w.search(x[[5, 1200]] + 1e-4, k=1).ids[:, 0].tolist() == [5, 1200]
