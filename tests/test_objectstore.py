"""``push`` / ``pull``: an index's versions through pyarrow filesystems, and an untrusted store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hyperret
from hyperret.cli import app
from hyperret.errors import IndexCorruptError, InvalidInputError
from hyperret.storage.objectstore import pull, push
from hyperret.testing.synthetic import make_points

DIM, CURV = 12, 1.0


def _index(path: Path, n: int = 400, seed: int = 0) -> hyperret.Index:
    pts = make_points(n, DIM, curv=CURV, seed=seed)
    ix = hyperret.Index.create(path, dim=DIM, curv=CURV)
    ix.add(pts.space, metadata={"caption": [f"row {i}" for i in range(n)]})
    ix.commit()
    return ix


def _same(a: hyperret.Index, b: hyperret.Index) -> None:
    assert a.version == b.version and len(a) == len(b)
    ids = np.sort(a.ids())
    np.testing.assert_array_equal(np.sort(b.ids()), ids)
    np.testing.assert_array_equal(a.vectors(ids), b.vectors(ids))
    assert a.get(ids, columns=["caption"]).equals(b.get(ids, columns=["caption"]))


def test_push_then_pull_then_only_what_changed(tmp_path):
    src = _index(tmp_path / "src")
    store = str(tmp_path / "bucket" / "collection")
    sent = push(src.path, store)
    assert sent["files_present"] == 0 and sent["files_sent"] == len(src.manifest.files())
    got = pull(store, tmp_path / "replica")
    assert got["previous_version"] is None and got["files_fetched"] == sent["files_sent"]
    replica = hyperret.Index.open(tmp_path / "replica")
    _same(src, replica)
    replica.verify()
    assert pull(store, tmp_path / "replica")["files_fetched"] == 0  # up to date: nothing moves

    src.add(make_points(50, DIM, curv=CURV, seed=5).space, metadata={"caption": ["new"] * 50})
    src.delete(src.ids()[:10])
    src.commit()
    again = push(src.path, store)
    assert 0 < again["files_sent"] < len(src.manifest.files()) and again["files_present"] > 0
    got = pull(store, tmp_path / "replica")
    assert got["previous_version"] == 1 and got["version"] == src.version and got["files_present"] > 0
    assert replica.refresh() and replica.version == src.version  # a reader of the copy moves on
    _same(src, replica)
    src.close()


def test_an_object_store_without_directories(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    import pyarrow.fs as pafs
    from fsspec.implementations.memory import MemoryFileSystem

    fs = pafs.PyFileSystem(pafs.FSSpecHandler(MemoryFileSystem()))
    src = _index(tmp_path / "src")
    push(src.path, "bucket/collection", filesystem=fs)
    assert fsspec  # an object store in memory: flat keys, no renames
    pull("bucket/collection", tmp_path / "replica", filesystem=fs)
    _same(src, hyperret.Index.open(tmp_path / "replica"))
    src.close()


def test_a_tampered_store_changes_nothing_locally(tmp_path):
    src = _index(tmp_path / "src")
    store = tmp_path / "bucket"
    push(src.path, str(store))
    pull(str(store), tmp_path / "replica")
    src.add(make_points(60, DIM, curv=CURV, seed=9).space, metadata={"caption": ["x"] * 60})
    src.commit()
    push(src.path, str(store))
    new = [e for e in src.manifest.shards if not (tmp_path / "replica" / e.file).exists()][0]
    blob = bytearray((store / new.file).read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, another content
    (store / new.file).write_bytes(bytes(blob))
    with pytest.raises(IndexCorruptError, match="checksum"):
        pull(str(store), tmp_path / "replica")
    (store / new.file).write_bytes(bytes(blob) + b"more")
    with pytest.raises(IndexCorruptError, match="size"):
        pull(str(store), tmp_path / "replica")
    replica = hyperret.Index.open(tmp_path / "replica")
    assert replica.version == 1 and len(replica) == 400  # the previous version, whole
    replica.verify()
    assert not list((tmp_path / "replica" / "shards").glob(".*.tmp"))

    m = json.loads((store / "manifest.json").read_text())
    m["shards"][0]["file"] = "../../outside.arrow"
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError, match="outside"):
        pull(str(store), tmp_path / "replica")
    (store / "manifest.json").write_text("[]")
    with pytest.raises(IndexCorruptError):
        pull(str(store), tmp_path / "other")
    src.close()


def test_push_never_replaces_another_index_or_a_newer_version(tmp_path):
    store = str(tmp_path / "bucket")
    src = _index(tmp_path / "src")
    push(src.path, store)
    src.add(make_points(5, DIM, curv=CURV, seed=3).space, metadata={"caption": ["y"] * 5})
    src.commit()
    push(src.path, store)
    with pytest.raises(InvalidInputError, match="newer than"):
        push(_old_copy(src, tmp_path), store)
    other = _index(tmp_path / "other", seed=4)
    with pytest.raises(InvalidInputError, match="another index"):
        push(other.path, store)
    push(other.path, store, force=True)
    pulled = pull(store, tmp_path / "replica")
    assert pulled["rows"] == len(other)
    src.close()
    other.close()


def _old_copy(src: hyperret.Index, tmp_path: Path) -> Path:
    """A copy of ``src`` rolled back to its version 1 (its manifest only: the files are still there)."""
    import shutil

    from hyperret.storage.manifest import write_manifest
    from hyperret.storage.versions import read_version, version_file

    old = tmp_path / "old"
    shutil.copytree(src.path, old)
    write_manifest(old, read_version(old, 1))
    (old / version_file(2)).unlink()
    return old


def test_a_copy_written_to_is_not_overwritten(tmp_path):
    src = _index(tmp_path / "src")
    push(src.path, str(tmp_path / "bucket"))
    pull(str(tmp_path / "bucket"), tmp_path / "replica")
    with hyperret.Index.open(tmp_path / "replica", writable=True) as w:
        w.add(make_points(5, DIM, curv=CURV, seed=3).space)
        w.commit()
    with pytest.raises(InvalidInputError, match="newer than"):
        pull(str(tmp_path / "bucket"), tmp_path / "replica")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="neither an index nor an empty folder"):
        pull(str(tmp_path / "bucket"), tmp_path / "junk")
    src.close()


def test_push_and_pull_from_the_cli(tmp_path):
    _index(tmp_path / "src").close()
    uri = (tmp_path / "bucket").as_uri()  # file:///...
    r = CliRunner().invoke(app, ["push", str(tmp_path / "src"), uri, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["version"] == 1
    r = CliRunner().invoke(app, ["pull", uri, str(tmp_path / "replica"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rows"] == 400 and len(hyperret.Index.open(tmp_path / "replica")) == 400
    r = CliRunner().invoke(app, ["pull", uri, str(tmp_path / "replica")])
    assert r.exit_code == 0 and "already at version 1" in r.output
    for args in (["pull", "nosuchscheme://x/y", str(tmp_path / "z"), "-q"],
                 ["pull", str(tmp_path / "empty"), str(tmp_path / "z"), "-q"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
