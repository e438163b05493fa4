"""Deletes: deletion files, search and reads without the deleted rows, and crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import hyperret
from hyperret.errors import DuplicateIdError, InvalidInputError
from hyperret.storage.manifest import FORMAT_VERSION

DIM = 16


def _rows(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIM)) * 0.5).astype(np.float32)


@pytest.mark.parametrize("preset", ["exact", "fast", "compact"])
def test_deleted_rows_leave_search_reads_and_ids(tmp_path, preset, exact_knn):
    x = _rows(2000 if preset != "exact" else 400)
    n = len(x)
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset=preset)
    w.add(x, metadata={"k": np.arange(n)})
    w.commit()
    gone = np.arange(0, n, 3)
    assert w.delete(gone) == len(gone) and w.pending_deletes == len(gone)
    assert len(w) == n  # not before the commit
    w.commit()
    assert len(w) == n - len(gone) and w.info()["deleted_rows"] == len(gone)
    keep = np.setdiff1d(np.arange(n), gone)
    np.testing.assert_array_equal(w.ids(), keep)
    r = w.search(x[:50], k=10)
    assert not np.isin(r.ids, gone).any() and (r.ids >= 0).all()
    if preset == "exact":  # exact: the k nearest live rows, as brute force says
        want, _ = exact_knn(x[:50], x[keep], 1.0, 10)
        np.testing.assert_array_equal(r.ids, keep[want])
    with pytest.raises(InvalidInputError, match="not in the index"):
        w.get(gone[:1])
    with pytest.raises(InvalidInputError, match="not in the index"):
        w.vectors(gone[:1])
    w.close()
    ix = hyperret.Index.open(tmp_path / "ix")
    ix.verify()
    assert len(ix) == n - len(gone) and ix.manifest.format_version == FORMAT_VERSION


def test_delete_errors_missing_ok_rollback_and_readding(tmp_path):
    x = _rows(100)
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="exact")
    w.add(x)
    w.commit()
    with pytest.raises(InvalidInputError, match="id 500: it is not in the index"):
        w.delete([3, 500])
    assert w.pending_deletes == 0  # nothing marked by a failed call
    assert w.delete([3, 500], missing_ok=True) == 1
    w.rollback()
    assert w.pending_deletes == 0 and w.commit() == 1
    new = w.add(x[:1])
    with pytest.raises(InvalidInputError, match="not committed yet"):
        w.delete(new)
    w.rollback()
    with pytest.raises(InvalidInputError, match="integers"):
        w.delete(np.array([1.5]))
    # an id deleted in this commit may come back in the same commit (a replacement)
    w.delete([7])
    w.add(x[8:9] * 0.5, ids=[7])
    w.commit()
    np.testing.assert_array_equal(w.vectors([7]), x[8:9] * 0.5)
    assert len(w) == 100
    with pytest.raises(DuplicateIdError):
        w.add(x[:1], ids=[7])
    w.close()
    ro = hyperret.Index.open(tmp_path / "ix")
    with pytest.raises(hyperret.errors.ReadOnlyIndexError):
        ro.delete([1])


def test_filter_with_deleted_rows_counts_only_unsafe_skips(tmp_path):
    from hyperret.geometry import lorentz
    from hyperret.safety import calibrate
    from hyperret.testing.synthetic import make_points

    cal = make_points(4000, DIM, seed=3, n_concepts=50)
    b = calibrate(lorentz.radius(cal.space, 1.0), cal.modality, cal.unsafe, curv=1.0)
    pts = make_points(800, DIM, seed=4, n_concepts=50)
    img = pts.space[pts.modality == "image"]
    w = hyperret.Index.create(tmp_path / "ix", dim=DIM, preset="exact", bounds=b, modality="image")
    w.add(img)
    w.commit()
    unsafe = w._snap.unsafe_rows()
    safe_ids = np.flatnonzero(~unsafe)
    w.delete(safe_ids[::2])
    w.commit()
    q = img[np.flatnonzero(unsafe)[:5]]
    r = w.search(q, k=5, policy="filter", modality="image")
    assert not np.isin(r.ids, safe_ids[::2]).any() and not unsafe[r.ids].any()
    # the same search on an index that never had the deleted rows gives the same ids
    w2 = hyperret.Index.create(tmp_path / "ix2", dim=DIM, preset="exact", bounds=b, modality="image")
    keep = np.setdiff1d(np.arange(len(img)), safe_ids[::2])
    w2.add(img[keep], ids=keep)
    w2.commit()
    r2 = w2.search(q, k=5, policy="filter", modality="image")
    np.testing.assert_array_equal(r.ids, r2.ids)
    # deleted rows are left out uncounted: with every unsafe row deleted, the filter skips none
    w.delete(np.flatnonzero(unsafe))
    w.commit()
    r3 = w.search(q, k=5, policy="filter", modality="image")
    assert all(p.unsafe_skipped == 0 for p in r3.plans) and (r3.ids >= 0).all()
    assert any(p.unsafe_skipped > 0 for p in r.plans)


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import hyperret

    def batch(v):
        rng = np.random.default_rng(v)
        return (rng.standard_normal((50, 16)) * 0.5).astype(np.float32), v * 1000 + np.arange(50)

    path, kill_at = sys.argv[1], sys.argv[2]
    w = hyperret.Index.open(path, writable=True)
    if kill_at != "-":
        w.on_commit_step = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None
    v = int(w.ids().max()) // 1000 + 1
    print("ready", flush=True)
    while True:
        x, ids = batch(v)
        w.add(x, ids=ids)
        w.delete((v - 1) * 1000 + np.arange(10))  # the previous batch's first ten rows
        w.commit()
        v += 1
    """
)


def _batch(v):
    rng = np.random.default_rng(v)
    return (rng.standard_normal((50, DIM)) * 0.5).astype(np.float32), v * 1000 + np.arange(50)


def _check(path) -> int:
    """The snapshot is batches 0..n-1 less the first ten rows of every batch but the last; returns n."""
    ix = hyperret.Index.open(path)
    ix.verify()
    n = int(ix.ids().max()) // 1000 + 1
    want = np.concatenate([_batch(v)[1][10 if v < n - 1 else 0:] for v in range(n)])
    np.testing.assert_array_equal(np.sort(ix.ids()), np.sort(want))
    x, ids = _batch(n - 1)
    r = ix.search(x[:3], k=1)
    np.testing.assert_array_equal(r.ids[:, 0], ids[:3])
    if n > 1:
        xp, idp = _batch(n - 2)
        assert not np.isin(ix.search(xp[:10], k=3).ids, idp[:10]).any()
    return n


@pytest.fixture
def seeded(tmp_path):
    path = tmp_path / "ix"
    w = hyperret.Index.create(path, dim=DIM, preset="exact")
    x, ids = _batch(0)
    w.add(x, ids=ids)
    w.commit()
    w.close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return path, script


@pytest.mark.slow
@pytest.mark.parametrize("step", ["shards_written", "candidates_written", "deletions_written", "committed"])
def test_kill_during_a_commit_with_deletes(seeded, step):
    path, script = seeded
    p = subprocess.Popen([sys.executable, str(script), str(path), step], stdout=subprocess.PIPE, text=True)
    p.wait(timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert _check(path) == (2 if step == "committed" else 1)
    w = hyperret.Index.open(path, writable=True, keep_versions=1)  # the next writer clears the debris
    on_disk = {f"{d.name}/{f.name}" for d in (path / "shards", path / "faiss", path / "deletions")
               if d.is_dir() for f in d.iterdir()}
    assert on_disk == set(w.manifest.files())
    w.close()


@pytest.mark.slow
def test_kill_adds_and_deletes_at_random_instants(seeded):
    import random
    import time

    path, script = seeded
    rnd = random.Random(99)
    seen = []
    for _ in range(6):
        p = subprocess.Popen([sys.executable, str(script), str(path), "-"], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.6))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        seen.append(_check(path))
    assert seen == sorted(seen) and seen[-1] > 1
