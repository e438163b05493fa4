"""A crafted index directory cannot be turned against its user.

Each test plants one hostile construction, asserts the clear error (a
:class:`~hyperret.errors.HyperretError`, so the CLI exits 2 with one line), and
that nothing outside the index changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyperret import Index, Preset, load_preset
from hyperret.errors import HyperretError, IndexCorruptError, InvalidInputError
from hyperret.storage.arrays import read_arrays, write_arrays
from hyperret.testing.synthetic import make_points

DIM = 16
_OPEN_AND_REPORT = ("import sys; from hyperret import Index\n"
                    "try:\n Index.open(sys.argv[1])\nexcept Exception as e:\n print(type(e).__name__, e)")


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (not following symlinks) with its bytes, to prove nothing changed."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(path))] = b"<link>" if p.is_symlink() else p.read_bytes()
    return out


@pytest.fixture
def built(tmp_path):
    """A committed ``fast`` index of 600 rows (a graph file), and a folder outside it holding a victim file."""
    x = make_points(600, DIM, seed=3).space.astype(np.float32)
    fast = Preset.from_dict({**load_preset("fast").to_dict(), "min_rows": 100})  # a graph file at 600 rows
    ix = Index.create(tmp_path / "ix", DIM, preset=fast)
    ix.add(x)
    ix.commit()
    ix.close()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("precious")
    return tmp_path / "ix", outside, x


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, m: object) -> None:
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("sub", ["shards", "faiss", "deletions"])
def test_a_symlinked_file_dir_is_refused_and_its_target_kept(built, sub):
    """The index's own directory replaced by a link to a folder holding copies (and an unreferenced file)."""
    path, outside, _ = built
    if (path / sub).is_dir():
        for f in (path / sub).iterdir():
            shutil.copy(f, outside / f.name)
        shutil.rmtree(path / sub)
    (path / sub).symlink_to(outside, target_is_directory=True)
    (outside / "unreferenced.arrow").write_text("not garbage")
    before = _snapshot(outside)
    with pytest.raises(IndexCorruptError, match="symlink"):
        Index.open(path, writable=True)  # the writer's garbage collection would have emptied it
    if sub != "deletions":  # the index has no deletion file: a reader never looks there
        with pytest.raises(IndexCorruptError, match="symlink"):
            Index.open(path)
    assert _snapshot(outside) == before


def test_symlinked_lock_file_creates_nothing_outside(built):
    path, outside, _ = built
    (path / ".writer.lock").unlink(missing_ok=True)
    (path / ".writer.lock").symlink_to(outside / "created-by-lock")
    with pytest.raises(IndexCorruptError, match="lock file"):
        Index.open(path, writable=True)
    assert not (outside / "created-by-lock").exists()


@pytest.mark.parametrize("bad", ["../../outside/victim.txt", "/etc/passwd", "shards/../../outside/victim.txt",
                                 "faiss/x.arrow", "shards/sub/x.arrow", "shards/.hidden", 7])
def test_manifest_paths_are_confined(built, bad):
    path, outside, _ = built
    m = _manifest(path)
    m["shards"][0]["file"] = bad
    _write_manifest(path, m)
    with pytest.raises(IndexCorruptError, match="not a file inside the index|outside shards|not a string"):
        Index.open(path)


def test_a_path_into_another_index_is_refused(built, tmp_path):
    path, _, x = built
    other = Index.create(tmp_path / "other", DIM, preset="exact")
    other.add(x[:10] * 0.5)
    other.commit()
    other.close()
    m = _manifest(path)
    m["shards"][0]["file"] = "../other/" + _manifest(tmp_path / "other")["shards"][0]["file"]
    _write_manifest(path, m)
    with pytest.raises(IndexCorruptError):
        Index.open(path)


def test_symlinked_shard_file_is_refused(built):
    path, outside, _ = built
    m = _manifest(path)
    shard = path / m["shards"][0]["file"]
    shutil.move(shard, outside / "moved.arrow")
    shard.symlink_to(outside / "moved.arrow")
    with pytest.raises(IndexCorruptError, match="symlink"):
        Index.open(path)


def test_fifo_named_as_a_shard_does_not_hang(built):
    path, _, _ = built
    m = _manifest(path)
    shard = path / m["shards"][0]["file"]
    shard.unlink()
    os.mkfifo(shard)
    # In a child process with a deadline: a hang would otherwise stall the suite.
    code = _OPEN_AND_REPORT
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert "IndexCorruptError" in r.stdout and "not a regular file" in r.stdout


def test_fifo_manifest_does_not_hang(built):
    path, _, _ = built
    (path / "manifest.json").unlink()
    os.mkfifo(path / "manifest.json")
    r = subprocess.run([sys.executable, "-c", _OPEN_AND_REPORT, str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.startswith("IndexCorruptError")


def _graph_file(path: Path) -> Path:
    return path / _manifest(path)["candidates"][0]["file"]


def _rewrite_graph(path: Path, change) -> None:
    """Change the saved graph's arrays, and fix the manifest's size and checksum as an attacker would."""
    import hashlib

    f = _graph_file(path)
    arrays, meta = read_arrays(f)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    change(arrays, meta)
    f.unlink()
    write_arrays(f, arrays, meta)
    m = _manifest(path)
    m["candidates"][0]["bytes"] = f.stat().st_size
    m["candidates"][0]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    _write_manifest(path, m)


def _set(name, index, value):
    def change(arrays, meta):
        arrays[name][index] = value
    return change


def _meta(key, value):
    def change(arrays, meta):
        meta[key] = value
    return change


@pytest.mark.parametrize("change", [
    _set("neighbors", 5, 10**6),  # a neighbour past the end
    _set("neighbors", 7, -5),
    _meta("entry", 10**6),  # a bad entry point
    _meta("entry", -1),
    _meta("max_level", 40),  # a huge level
    _set("levels", 3, 1000),
    _set("offsets", 2, 2**40),  # bad offsets
    _set("offsets", 600, 5),
    _set("cum", 1, -3),
    _meta("entry", "0"),
], ids=["nb-past-end", "nb-negative", "entry-past-end", "entry-negative", "max-level", "node-level",
        "offset-huge", "offset-end", "cum", "entry-type"])
def test_crafted_graph_arrays_are_refused_before_the_walk(built, change):
    path, _, x = built
    _rewrite_graph(path, change)
    code = ("import sys, numpy as np; from hyperret import Index\n"
            "try:\n ix = Index.open(sys.argv[1]); ix.search(np.load(sys.argv[2]), 5); print('SEARCHED')\n"
            "except Exception as e:\n print(type(e).__name__, e)")
    np.save(path.parent / "q.npy", x[:8])
    r = subprocess.run([sys.executable, "-c", code, str(path), str(path.parent / "q.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]  # no segfault
    assert r.stdout.startswith("IndexCorruptError"), r.stdout


@pytest.mark.parametrize("entry", [{"dtype": "|O", "shape": [4], "offset": 0},
                                   {"dtype": "<i4", "shape": [2**62, 2**62], "offset": 0},
                                   {"dtype": "<i4", "shape": [-1], "offset": 0},
                                   {"dtype": "<i4", "shape": [4], "offset": -64},
                                   {"dtype": "<i4", "shape": [4], "offset": 2**40}])
def test_array_file_headers_are_checked(tmp_path, entry):
    """An array file's header is untrusted: object dtypes, huge or negative shapes and offsets are refused."""
    import struct

    from hyperret.storage.arrays import MAGIC

    header = json.dumps({"arrays": {"a": entry}, "meta": {}}).encode()
    f = tmp_path / "a.rows"
    f.write_bytes(MAGIC + struct.pack("<Q", len(header)) + header + b"\0" * 256)
    with pytest.raises(IndexCorruptError, match="not a plain number type|invalid shape|invalid offset|past the end"):
        read_arrays(f)


@pytest.mark.parametrize("manifest", [[], None, "index", 3])
def test_manifest_of_the_wrong_type(built, manifest):
    path, _, _ = built
    _write_manifest(path, manifest)
    with pytest.raises(IndexCorruptError, match="not a hyperret manifest"):
        Index.open(path)


@pytest.mark.parametrize("field,value", [("curv", 0), ("curv", -1.0), ("curv", "nan"), ("curv", 1e-12),
                                         ("curv", 1e120), ("dim", 10**9), ("dim", 0), ("dim", True),
                                         ("next_id", -4), ("version", "7"), ("geometry", "flat")])
def test_manifest_fields_out_of_range(built, field, value):
    path, _, _ = built
    m = _manifest(path)
    m[field] = float(value) if value == "nan" else value
    _write_manifest(path, m)
    with pytest.raises(IndexCorruptError, match=field):
        Index.open(path)


def test_unknown_proxy_is_refused(built):
    path, _, _ = built
    m = _manifest(path)
    m["candidates"][0]["proxy"] = "euclid9"
    _write_manifest(path, m)
    with pytest.raises(IndexCorruptError, match="unknown candidate space"):
        Index.open(path)


def test_nan_bounds_thresholds_are_refused(tmp_path):
    from hyperret import calibrate
    from hyperret.geometry import lorentz

    pts = make_points(400, DIM, seed=1)
    b = calibrate(lorentz.radius(pts.space, 1.0), pts.modality, pts.unsafe, curv=1.0).to_dict()
    ix = Index.create(tmp_path / "ix", DIM, modality="image", bounds=b)
    ix.add(pts.space[pts.modality == "image"][:50])
    ix.commit()
    ix.close()
    m = _manifest(tmp_path / "ix")
    m["bounds"]["thresholds"]["image"]["radius"] = float("nan")
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InvalidInputError, match="radius must be a finite number"):
        Index.open(tmp_path / "ix")
    bad = dict(b)
    bad["thresholds"] = {"image": dict(b["thresholds"]["image"], radius=float("nan"))}
    with pytest.raises(InvalidInputError, match="finite"):
        Index.create(tmp_path / "ix2", DIM, modality="image", bounds=bad)


def test_ids_outside_int64_are_refused(tmp_path):
    ix = Index.create(tmp_path / "ix", DIM)
    x = make_points(3, DIM, seed=0).space
    with pytest.raises(InvalidInputError, match="outside the int64 range"):
        ix.add(x, ids=np.array([1, 2, 2**63], dtype=np.uint64))
    with pytest.raises(InvalidInputError, match="outside the int64 range"):
        ix.add(x, ids=[1, 2, 2**64 + 5])
    assert ix.pending == 0
    ix.add(x[:1], ids=[2**63 - 1])  # the largest int64 is a valid id ...
    with pytest.raises(InvalidInputError, match="id counter is exhausted"):
        ix.add(x[1:])  # ... after which the counter cannot assign more
    ix.add(x[1:], ids=[5, 6])  # explicit ids still work
    ix.commit()
    assert sorted(ix.ids().tolist()) == [5, 6, 2**63 - 1]
    ix.close()


def test_uint64_ids_in_a_source_table_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hyperret.index.build import build_index

    x = make_points(4, DIM, seed=0).space
    t = pa.table({"id": pa.array([1, 2, 3, 2**63 + 1], pa.uint64()),
                  "embedding": pa.array(list(x), pa.list_(pa.float32()))})
    t = t.replace_schema_metadata({"hyperret.curv": "1.0"})
    pq.write_table(t, tmp_path / "src.parquet")
    with pytest.raises(InvalidInputError, match="outside the int64 range"):
        build_index(tmp_path / "src.parquet", tmp_path / "ix", preset=None, curv=1.0, append=False)
    assert not (tmp_path / "ix").exists()


@pytest.mark.parametrize("curv", [1e-9, 1e-5, 1e5, 1e101])
def test_curvature_outside_the_exact_range_is_refused(tmp_path, curv):
    with pytest.raises(InvalidInputError, match=r"outside \[0.0001, 10000\]"):
        Index.create(tmp_path / "ix", DIM, curv=curv)


def test_every_hostile_error_is_a_hyperret_error():
    """The CLI's one-line exit 2 covers each: all the errors above derive from HyperretError."""
    assert issubclass(IndexCorruptError, HyperretError) and issubclass(InvalidInputError, HyperretError)


def test_norms_beyond_the_exact_range_are_refused(tmp_path):
    ix = Index.create(tmp_path / "ix", DIM, curv=4.0)
    x = make_points(4, DIM, seed=0).space
    big = x.copy()
    big[2] *= 1e15 / np.linalg.norm(big[2])  # sqrt(4) * 1e15 = 2e15 > 1e15
    with pytest.raises(InvalidInputError, match=r"row 2 has norm 1e\+15.*\[0, 1e\+15\]"):
        ix.add(big)
    with pytest.raises(InvalidInputError, match="query vectors: row 2"):
        ix.search(big, 1)
    ix.add(x)  # ordinary rows still go in
    assert ix.pending == 4
    ix.close()
