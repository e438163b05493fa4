"""The indexer's writer thread: same index as the synchronous path, errors surface, one thread touches the index."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("peft")
Image = pytest.importorskip("PIL.Image")

sys.path.insert(0, str(Path(__file__).parent))
from test_images import _jpeg  # noqa: E402
from tiny_models import ARCH, TinyHySAC, save_hysac  # noqa: E402

import hyperret  # noqa: E402
from hyperret.embed import indexer  # noqa: E402
from hyperret.embed.committer import Committer  # noqa: E402
from hyperret.embed.encoder import HySACEncoder  # noqa: E402

N_GOOD = 30


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_hysac(TinyHySAC(seed=3), d / "hysac_model.pth")
    return HySACEncoder.from_checkpoint(d / "hysac_model.pth", arch=ARCH)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """30 small photos, one exact copy under another name, two files that cannot be decoded."""
    d = tmp_path_factory.mktemp("images")
    for i in range(N_GOOD):
        rng = np.random.default_rng(100 + i)
        (d / f"{i:03d}.jpg").write_bytes(_jpeg(Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))))
    (d / "014-copy.jpg").write_bytes((d / "013.jpg").read_bytes())
    (d / "020-broken.jpg").write_bytes(b"not a jpeg")
    (d / "025-empty.png").write_bytes(b"")
    return d


def _run(enc, folder, out, **kw):
    kw = {"batch_size": 4, "workers": 0, "commit_every": 6, **kw}
    return indexer.index_images(folder, out, enc, report=out.parent / f"{out.name}.jsonl", **kw)


def _contents(out: Path) -> tuple:
    ix = hyperret.Index.open(out)
    try:
        ids = ix.ids()
        meta = ix.get(ids, columns=["uri", "sha256", "width", "height"]).to_pylist()
        return ids, ix.vectors(ids), meta, ix.version
    finally:
        ix.close()


def _hook(monkeypatch, hook) -> None:
    """Every index ``index_images`` opens gets ``on_commit_step = hook``."""
    real = indexer.open_or_create

    def opened(*a, **kw):
        ix, resumed, note = real(*a, **kw)
        ix.on_commit_step = hook
        return ix, resumed, note

    monkeypatch.setattr(indexer, "open_or_create", opened)


# ---------------------------------------------------------------- Committer alone
def test_jobs_run_in_order_on_one_other_thread():
    seen: list[tuple[int, int]] = []
    c = Committer(depth=2)
    writer = c.thread_id
    for i in range(20):
        c.submit(lambda i=i: seen.append((i, threading.get_ident())))
    c.finish()
    assert [i for i, _ in seen] == list(range(20))
    assert {t for _, t in seen} == {writer} and writer != threading.get_ident()
    c.close()  # after finish: nothing left, no error


def test_a_full_queue_blocks_the_caller_until_the_writer_catches_up():
    release = threading.Event()
    c = Committer(depth=2)
    c.submit(release.wait)  # running
    c.submit(lambda: None)
    c.submit(lambda: None)  # the queue is full now
    handed = threading.Event()
    t = threading.Thread(target=lambda: (c.submit(lambda: None), handed.set()))
    t.start()
    assert not handed.wait(0.3)  # blocked: the writer is behind
    release.set()
    assert handed.wait(5)
    t.join()
    c.finish()
    assert c.wait_seconds >= 0.0 and c.write_seconds >= 0.25


@pytest.mark.parametrize("background", [True, False])
def test_a_failed_job_is_raised_as_itself_and_stops_the_rest(background):
    err = OSError(28, "No space left on device")
    ran: list[int] = []

    def fail():
        raise err

    go = threading.Event()
    c = Committer(background, depth=4)
    c.submit(lambda: (go.wait(5), ran.append(1)))
    with pytest.raises(OSError) as caught:
        c.submit(fail)
        c.submit(lambda: ran.append(2))  # queued behind the failure: dropped
        go.set()
        c.finish()  # the failure surfaces here at the latest
    assert caught.value is err
    with pytest.raises(OSError):
        c.submit(lambda: ran.append(3))  # and at every later hand-over
    c.close()
    assert ran == [1]


# --------------------------------------------------------------- index_images
def test_background_commits_build_the_same_index(enc, folder, tmp_path):
    sync = _run(enc, folder, tmp_path / "sync", background_commits=False)
    bg = _run(enc, folder, tmp_path / "bg", background_commits=True)
    assert sync.indexed == bg.indexed == N_GOOD and sync.rows == bg.rows == N_GOOD
    assert sync.commits == bg.commits > 3 and sync.skipped_by_reason == bg.skipped_by_reason
    assert bg.skipped_by_reason == {"duplicate": 1, "not an image": 1, "empty file": 1}
    assert abs(sync.commit_wait_seconds - sync.write_seconds) < 1e-3  # synchronous: the main thread waits for all
    ids_s, v_s, meta_s, ver_s = _contents(tmp_path / "sync")
    ids_b, v_b, meta_b, ver_b = _contents(tmp_path / "bg")
    np.testing.assert_array_equal(ids_s, ids_b)
    np.testing.assert_array_equal(v_s, v_b)
    assert [{**m, "uri": Path(m["uri"]).name} for m in meta_s] == [{**m, "uri": Path(m["uri"]).name} for m in meta_b]
    assert ver_s == ver_b
    report = [(Path(r["uri"]).name, r["reason"]) for r in map(json.loads, Path(bg.report).read_text().splitlines())]
    assert report == [(Path(r["uri"]).name, r["reason"])
                      for r in map(json.loads, Path(sync.report).read_text().splitlines())]
    assert [name for name, _ in report] == ["014-copy.jpg", "020-broken.jpg", "025-empty.png"]


@pytest.mark.parametrize("background", [True, False])
def test_a_failed_commit_stops_the_run_and_a_rerun_completes_it(enc, folder, tmp_path, monkeypatch, background):
    commits, raised = [0], []

    def hook(step: str) -> None:
        if step == "shards_written":
            commits[0] += 1
            if commits[0] == 3:  # the third chunk's commit: after its shards, before its manifest
                time.sleep(0.2)  # meanwhile the main thread fills the queue (dropped once this fails)
                raised.append(OSError(28, "No space left on device"))
                raise raised[0]

    _hook(monkeypatch, hook)
    handled = [0]
    out = tmp_path / "ix"
    with pytest.raises(OSError) as caught:
        _run(enc, folder, out, commit_every=4, background_commits=background,
             progress=lambda n: handled.__setitem__(0, handled[0] + n))
    assert caught.value is raised[0]
    assert handled[0] < N_GOOD  # the run stopped soon after the failure (a bounded queue ahead at most)
    ix = hyperret.Index.open(out)
    assert len(ix) == 8  # the two chunks committed before the failure
    ix.verify()
    ix.close()
    monkeypatch.undo()
    s = _run(enc, folder, out, commit_every=4, background_commits=background)
    assert s.resumed and s.already_indexed == 8 and s.indexed == N_GOOD - 8 and s.rows == N_GOOD
    ids, _, meta, _ = _contents(out)
    assert len(set(m["sha256"] for m in meta)) == N_GOOD == len(ids)


class _Recorded:
    """The real index, every use of it logged as (thread id, name)."""

    def __init__(self, ix, log):
        self._ix, self._log = ix, log

    def __getattr__(self, name):
        self._log.append((threading.get_ident(), name))
        attr = getattr(self._ix, name)
        if name == "commit":  # a slow commit: a main thread using the index meanwhile would show
            def slow(*a, **kw):
                time.sleep(0.05)
                return attr(*a, **kw)
            return slow
        return attr

    def __len__(self):
        self._log.append((threading.get_ident(), "__len__"))
        return len(self._ix)


def test_the_index_is_written_by_one_thread_only(enc, folder, tmp_path, monkeypatch):
    log: list[tuple[int, str]] = []
    real = indexer.open_or_create
    monkeypatch.setattr(indexer, "open_or_create", lambda *a, **kw: (_Recorded(real(*a, **kw)[0], log), False, None))
    s = _run(enc, folder, tmp_path / "ix", commit_every=4)
    assert s.rows == N_GOOD and s.commits >= 7
    main = threading.get_ident()
    writers = {t for t, name in log if name in ("add", "commit", "compact", "pending")}
    assert len(writers) == 1 and main not in writers
    (writer,) = writers
    first = next(i for i, (t, _) in enumerate(log) if t == writer)
    last = max(i for i, (t, _) in enumerate(log) if t == writer)
    assert {t for t, _ in log[first : last + 1]} == {writer}  # nothing else touched it meanwhile
    assert {name for t, name in log[last + 1 :]} <= {"close"}  # after the writer: only close, on the main thread
