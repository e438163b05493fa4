"""Kill a writer process mid-commit, repeatedly: the last committed snapshot stays whole."""

from __future__ import annotations

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

import hyperret

DIM, ROWS = 16, 50

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
    v = len(w) // 50
    print("ready", flush=True)
    while True:
        x, ids = batch(v)
        w.add(x, ids=ids, metadata={"batch": np.full(50, v)})
        w.commit()
        v += 1
    """
)


def _batch(v: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(v)
    return (rng.standard_normal((ROWS, DIM)) * 0.5).astype(np.float32), v * 1000 + np.arange(ROWS)


def _check_snapshot(path: Path) -> int:
    """The committed snapshot is exactly batches 0..n-1, verified byte for byte; returns n."""
    ix = hyperret.Index.open(path)
    ix.verify()
    n = len(ix) // ROWS
    assert len(ix) == n * ROWS and ix.version >= n
    expect_ids = np.concatenate([_batch(v)[1] for v in range(n)])
    np.testing.assert_array_equal(np.sort(ix.ids()), np.sort(expect_ids))
    x_last, ids_last = _batch(n - 1)
    np.testing.assert_array_equal(ix.vectors(ids_last), x_last)
    assert ix.get(ids_last[:1], columns=["batch"]).column("batch").to_pylist() == [n - 1]
    r = ix.search(x_last[:5], k=1)
    np.testing.assert_array_equal(r.ids[:, 0], ids_last[:5])
    return n


def _run_writer(script: Path, path: Path, kill_at: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(path), kill_at], stdout=subprocess.PIPE, text=True)


@pytest.fixture
def seeded(tmp_path):
    path = tmp_path / "ix"
    w = hyperret.Index.create(path, dim=DIM, curv=1.0, preset="exact")
    x, ids = _batch(0)
    w.add(x, ids=ids, metadata={"batch": np.zeros(ROWS, np.int64)})
    w.commit()
    w.close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return path, script


@pytest.mark.slow
@pytest.mark.parametrize("step", ["shards_written", "candidates_written", "committed"])
def test_kill_at_each_commit_step(seeded, step):
    path, script = seeded
    p = _run_writer(script, path, step)
    p.wait(timeout=120)
    assert p.returncode == -signal.SIGKILL
    n = _check_snapshot(path)
    assert n == (2 if step == "committed" else 1)
    # the next writer gets the lock (the dead one's is gone) and clears the debris
    w = hyperret.Index.open(path, writable=True, keep_versions=1)  # only the open version kept
    on_disk = {f"{d.name}/{f.name}" for d in (path / "shards", path / "faiss") for f in d.iterdir()}
    assert on_disk == set(w.manifest.files())
    w.close()


@pytest.mark.slow
def test_kill_at_random_instants_repeatedly(seeded):
    path, script = seeded
    rnd = random.Random(1234)
    seen = []
    for _ in range(8):
        p = _run_writer(script, path, "-")
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.6))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        seen.append(_check_snapshot(path))
    assert seen == sorted(seen) and seen[-1] > 1  # progress was made, never lost
