"""Numbered versions: open any kept version, list them, clean them up, repair a damaged manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hyperret import Index
from hyperret.cli import app
from hyperret.errors import IndexCorruptError, IndexNotFoundError, InvalidInputError
from hyperret.testing.synthetic import make_points

DIM = 16
runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def history(tmp_path):
    """An index with versions 0 (empty) .. 4, 100 rows added per commit; every version kept."""
    x = make_points(400, DIM, seed=5).space
    path = tmp_path / "ix"
    ix = Index.create(path, DIM, preset="exact")
    ix.keep_versions = None
    for v in range(4):
        ix.add(x[100 * v : 100 * (v + 1)])
        ix.commit()
    ix.close()
    return path, x


def test_every_commit_is_a_version_that_opens(history):
    path, x = history
    with Index.open(path) as ix:
        assert ix.version == 4 and len(ix) == 400
        listed = ix.versions()
    assert [v["version"] for v in listed] == [0, 1, 2, 3, 4]
    assert [v["rows"] for v in listed] == [0, 100, 200, 300, 400]
    assert all(v["intact"] for v in listed) and [v["latest"] for v in listed] == [False] * 4 + [True]
    old = Index.open(path, version=2)
    assert old.version == 2 and len(old) == 200
    hits = old.search(x[250:252], k=1)  # rows added after version 2 are not in it
    assert (hits.ids[:, 0] < 200).all()
    assert old.search(x[150:152], k=1).ids[:, 0].tolist() == [150, 151]
    with pytest.raises(InvalidInputError, match="read-only"):
        Index.open(path, writable=True, version=2)
    with pytest.raises(IndexNotFoundError, match="has no version 9 .versions: 0-4"):
        Index.open(path, version=9)


def test_writers_keep_the_newest_versions_and_collect_the_rest(history):
    path, x = history
    before = {f.name for f in (path / "faiss").iterdir()}
    ix = Index.open(path, writable=True, keep_versions=2)  # the garbage collection on open applies it
    assert [v["version"] for v in ix.versions()] == [3, 4]
    after = {f.name for f in (path / "faiss").iterdir()}
    assert len(after) == 2 and after < before
    ix.add(x[:5] * 0.9)
    ix.commit()
    assert [v["version"] for v in ix.versions()] == [4, 5]
    ix.close()
    with pytest.raises(IndexNotFoundError):
        Index.open(path, version=2)
    assert len(Index.open(path, version=4)) == 400


def test_cleanup_removes_old_versions_and_their_files(history):
    path, x = history
    ix = Index.open(path, writable=True, keep_versions=None)
    too_new = ix.cleanup(older_than=3600.0, keep=1)  # every version is seconds old: nothing goes
    assert too_new == {"versions": [], "files": 0, "bytes": 0}
    out = ix.cleanup(keep=2)
    assert out["versions"] == [0, 1, 2] and out["files"] >= 2 and out["bytes"] > 0
    assert [v["version"] for v in ix.versions()] == [3, 4]
    assert ix.search(x[:3], k=1).ids[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(InvalidInputError, match="keep"):
        ix.cleanup(keep=0)
    ix.close()
    r = _cli("cleanup", path, "--keep", "1", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["versions"] == [3]


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_a_damaged_manifest_names_the_newest_intact_version_and_repair_restores_it(history, damage):
    path, x = history
    before = Index.open(path).search(x[::40], k=3)
    m = path / "manifest.json"
    if damage == "truncate":
        m.write_bytes(m.read_bytes()[:100])
    elif damage == "delete":
        m.unlink()
    else:
        m.write_text("[]")
    with pytest.raises(IndexCorruptError, match=r"newest intact version is 4: open it with .*hyperret repair"):
        Index.open(path)
    assert Index.open(path, version=4).search(x[::40], k=3).ids.tolist() == before.ids.tolist()
    r = _cli("search", path, "--vectors", path.parent / "missing.npy")
    assert r.exit_code == 2
    r = _cli("versions", path, "--json")
    assert r.exit_code == 0 and [json.loads(line)["version"] for line in r.stdout.splitlines()] == [0, 1, 2, 3, 4]
    r = _cli("repair", path, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"version": 4, "repaired": True}
    after = Index.open(path).search(x[::40], k=3)
    assert after.ids.tolist() == before.ids.tolist() and np.array_equal(after.distances, before.distances)
    r = _cli("repair", path)
    assert r.exit_code == 0 and "nothing to repair" in r.stdout


def test_repair_skips_versions_whose_files_fail_their_checksums(history):
    path, _ = history
    m4 = json.loads((path / "versions" / "v00000004.json").read_text())
    last_shard = path / m4["shards"][-1]["file"]  # only version 4 names it
    raw = bytearray(last_shard.read_bytes())
    raw[-200] ^= 0xFF
    last_shard.write_bytes(bytes(raw))
    (path / "manifest.json").unlink()
    out = Index.repair(path)
    assert out == {"version": 3, "repaired": True}
    assert len(Index.open(path)) == 300


def test_verify_covers_the_deletion_file(history):
    path, _ = history
    with Index.open(path, writable=True) as w:
        w.delete([5, 6])
        w.commit()
    m = json.loads((path / "manifest.json").read_text())
    f = path / m["deletions"]["file"]
    raw = f.read_bytes()
    i = raw.rindex(np.int64(6).tobytes())
    f.write_bytes(raw[:i] + np.int64(7).tobytes() + raw[i + 8:])  # resurrect id 6, hide id 7
    ix = Index.open(path)  # same size: the cheap check on open passes
    with pytest.raises(IndexCorruptError, match="deletions/.*checksum mismatch"):
        ix.verify()
    r = _cli("verify", path)
    assert r.exit_code == 2 and "checksum mismatch" in r.output and r.output.count("\n") == 1


def test_dedup_apply_refuses_a_damaged_shard(history):
    path, x = history
    with Index.open(path, writable=True) as w:
        w.add(x[:3] + 1e-6)  # near copies of rows 0..2
        w.commit()
        shard = path / w.manifest.shards[0].file
        raw = bytearray(shard.read_bytes())
        raw[-100] ^= 0x01
        shard.write_bytes(bytes(raw))
        with pytest.raises(IndexCorruptError, match="checksum mismatch"):
            w.dedup(radius=0.01, apply=True)
        assert w.version == 5 and w.pending_deletes == 0


def test_an_index_of_the_previous_format_opens_and_lists_its_one_version(history):
    path, x = history
    import shutil

    shutil.rmtree(path / "versions")
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 3
    (path / "manifest.json").write_text(json.dumps(m))
    ix = Index.open(path, writable=True)
    assert [v["version"] for v in ix.versions()] == [4]
    ix.add(x[:2] * 0.5)
    ix.commit()
    assert [v["version"] for v in ix.versions()] == [5] and ix.manifest.format_version >= 4
    ix.close()


def test_ctrl_c_exits_130(history, monkeypatch):
    path, _ = history

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Index, "open", interrupted)
    r = _cli("info", path)
    assert r.exit_code == 130 and "interrupted" in r.output
