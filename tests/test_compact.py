"""Compaction: deleted rows and small shards rewritten away, segments merged; crash-safe, searchable throughout."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hyperret
from hyperret.cli import app
from hyperret.errors import InvalidInputError
from hyperret.index.compaction import plan_compaction

DIM = 16


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIM)) * 0.5).astype(np.float32)


def _grown(path: Path, preset: str = "exact", batches: int = 6, rows: int = 200) -> hyperret.Index:
    """An index of ``batches`` commits (one shard each, several segments) with every third row deleted."""
    w = hyperret.Index.create(path, dim=DIM, preset=preset)
    w.segment_rows = 500
    for b in range(batches):
        w.add(_rows(rows, b), metadata={"batch": np.full(rows, b), "tag": [f"r{b}-{i}" for i in range(rows)]})
        w.commit()
    w.delete(np.arange(0, batches * rows, 3))
    w.commit()
    return w


def _state(ix: hyperret.Index, q: np.ndarray) -> tuple:
    r = ix.search(q, k=10)
    t = ix.get(ix.ids())
    return ix.ids().tolist(), t.column("tag").to_pylist(), ix.vectors(ix.ids()), r.ids, r.distances


def test_compaction_drops_deleted_rows_merges_shards_and_segments(tmp_path):
    w = _grown(tmp_path / "ix")
    q = _rows(20, 99)
    before = _state(w, q)
    m = w.manifest
    assert len(m.shards) == 6 and len(m.candidates) == 3 and m.deleted_rows == 400
    out = w.compact()
    assert out["compacted"] and out["version"] == m.version + 1
    assert out["rows_removed"] == 400 and out["shards_after"] == 1 and out["segments_after"] == 1
    assert out["bytes_after"] < out["bytes_before"]
    after = _state(w, q)
    assert after[0] == before[0] and after[1] == before[1]
    np.testing.assert_array_equal(after[2], before[2])
    np.testing.assert_array_equal(after[3], before[3])  # the exact preset: the same hits, the same distances
    np.testing.assert_array_equal(after[4], before[4])
    assert w.manifest.deletions is None and w.info()["deleted_rows"] == 0 and len(w) == 800
    w.verify()
    ro = hyperret.Index.open(tmp_path / "ix")
    np.testing.assert_array_equal(ro.search(q, k=10).ids, before[3])
    assert w.compact()["compacted"] is False  # nothing left to do
    w.add(_rows(10, 50))  # ids go on from the counter; deleted ids may come back
    w.add(_rows(1, 51), ids=[0])
    w.commit()
    assert len(w) == 811 and w.get([0]).num_rows == 1


def test_compaction_without_deletions_grows_the_first_segment(tmp_path, exact_knn):
    p = tmp_path / "g.toml"
    p.write_text('name = "g"\nproxy = "poincare"\nfactory = "HNSW16"\nnavigate = "lorentz"\nmin_rows = 0\n'
                 'k_factor = 4.0\nk_extra = 32\nsearch = { efSearch = 64 }\nbuild = { efConstruction = 40 }\n')
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset=str(p))
    w.segment_rows = 400
    xs = [_rows(300, s) for s in range(4)]
    for x in xs:
        w.add(x)
        w.commit()
    first = w.manifest.candidates[0]
    assert len(w.manifest.candidates) == 4
    out = w.compact()
    (seg,) = w.manifest.candidates
    assert out["segments_after"] == 1 and seg.rows == 1200 and seg.file != first.file
    x = np.concatenate(xs)
    q = x[::29] + 0.01
    want, _ = exact_knn(q, x, w.curv, 10)
    got = w.search(q, k=10).ids
    assert np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(got, want)]) >= 0.97


def test_plan_keeps_large_clean_shards_and_merges_the_rest(tmp_path):
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="exact")
    for n in (3000, 100, 100, 3000, 100):
        w.add(_rows(n, n))
        w.commit()
    shards = w._snap.shards
    plan = plan_compaction(shards, None, shard_rows=4000)
    assert plan.outputs[0] == 0 and plan.outputs[2] == 3 and plan.dropped == 0
    assert [(i, len(r)) for i, r in plan.outputs[1]] == [(1, 100), (2, 100)]
    assert plan.outputs[3] == 4  # one whole clean shard alone: kept, not rewritten
    deleted = np.zeros(6300, bool)
    deleted[5] = True
    plan = plan_compaction(shards, deleted, shard_rows=4000)
    assert plan.dropped == 1 and [(i, len(r)) for i, r in plan.outputs[0]] == [(0, 2999), (1, 100), (2, 100)]


def test_compaction_refuses_uncommitted_changes_and_readers(tmp_path):
    w = _grown(tmp_path / "ix", batches=2)
    w.add(_rows(5, 7))
    with pytest.raises(InvalidInputError, match="uncommitted"):
        w.compact()
    with pytest.raises(hyperret.errors.ReadOnlyIndexError):
        hyperret.Index.open(tmp_path / "ix").compact()


def test_searches_during_compaction_see_the_previous_snapshot(tmp_path):
    w = _grown(tmp_path / "ix")
    q = _rows(5, 98)
    want = w.search(q, k=10).ids
    seen = []
    w.on_commit_step = lambda step: seen.append((step, w.search(q, k=10).ids))
    w.compact()
    assert [s for s, _ in seen] == ["shards_written", "candidates_written", "committed"]
    for _, ids in seen:
        np.testing.assert_array_equal(ids, want)


def test_compact_cli(tmp_path):
    _grown(tmp_path / "ix").close()
    r = CliRunner().invoke(app, ["compact", str(tmp_path / "ix"), "--cleanup", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["rows_removed"] == 400 and out["cleanup"]["bytes"] > 0
    assert [v["version"] for v in hyperret.Index.open(tmp_path / "ix").versions()] == [out["version"]]
    r = CliRunner().invoke(app, ["compact", str(tmp_path / "ix")])
    assert r.exit_code == 0 and "nothing to compact" in r.output
    r = CliRunner().invoke(app, ["compact", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1


# ------------------------------------------------------------------ crashes
WORKER = textwrap.dedent(
    """
    import os, signal, sys
    import hyperret

    path, op, kill_at = sys.argv[1], sys.argv[2], sys.argv[3]
    if op == "repair":
        print("ready", flush=True)
        hyperret.Index.repair(path)
        sys.exit(0)
    w = hyperret.Index.open(path, writable=True, keep_versions=None)
    if kill_at != "-":
        w.on_commit_step = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None
    print("ready", flush=True)
    if op == "compact":
        w.compact()
    else:
        w.cleanup(keep=1)
    """
)


@pytest.fixture
def crashable(tmp_path):
    path = tmp_path / "ix"
    w = _grown(path, batches=8, rows=300)
    w.keep_versions = None
    q = _rows(10, 97)
    expect = (w.ids().tolist(), w.search(q, k=10).ids)
    w.close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return path, script, q, expect


def _intact(path: Path, q: np.ndarray, expect: tuple) -> hyperret.Index:
    ix = hyperret.Index.open(path)
    ix.verify()
    assert ix.ids().tolist() == expect[0]
    np.testing.assert_array_equal(ix.search(q, k=10).ids, expect[1])
    return ix


def _run(script: Path, path: Path, op: str, kill_at: str = "-") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(path), op, kill_at], stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["shards_written", "candidates_written", "committed"])
def test_kill_at_each_compaction_step(crashable, step):
    path, script, q, expect = crashable
    v0 = hyperret.Index.open(path).version
    p = _run(script, path, "compact", step)
    p.wait(timeout=120)
    assert p.returncode == -signal.SIGKILL
    ix = _intact(path, q, expect)
    assert ix.version == (v0 + 1 if step == "committed" else v0)
    w = hyperret.Index.open(path, writable=True, keep_versions=1)  # the next writer clears the debris
    assert {f"{d}/{f.name}" for d in ("shards", "faiss", "deletions") for f in (path / d).iterdir()} == \
        set(w.manifest.files())
    w.compact()
    _intact(path, q, expect)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["compact", "cleanup", "repair"])
def test_kill_at_random_instants(crashable, op):
    """SIGKILL compaction, cleanup or repair at random instants: the index opens, verifies, and answers the same."""
    path, script, q, expect = crashable
    rnd = random.Random(hash(op) % 1000)
    if op == "repair":  # a damaged manifest to repair
        (path / "manifest.json").write_text("{")
    for _ in range(6):
        p = _run(script, path, op)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.15))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        if op == "repair" and not (path / "manifest.json").read_text().startswith("{\n"):
            continue  # killed before the restore: the manifest is still the damaged one
        _intact(path, q, expect)
    if op == "repair":
        hyperret.Index.repair(path)
    _intact(path, q, expect)
