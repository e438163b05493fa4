"""The formats neighbours speak: clip-retrieval's output folders, Parquet folders, --geometry, export."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import hyperret
from hyperret.cli import app
from hyperret.testing.synthetic import make_points

DIM = 16
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def clip_folder(tmp_path):
    """clip-retrieval's layout: float16 img_emb_N.npy beside metadata_N.parquet (url, caption)."""
    root = tmp_path / "embeddings"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    parts = [_unit(50, 1), _unit(30, 2)]
    for n, x in enumerate(parts):
        np.save(root / "img_emb" / f"img_emb_{n}.npy", x.astype(np.float16))
        urls = [f"https://example.org/{n}/{i}.jpg" for i in range(len(x))]
        pq.write_table(pa.table({"url": urls, "caption": [f"picture {n}-{i}" for i in range(len(x))]}),
                       root / "metadata" / f"metadata_{n}.parquet")
    return root, np.concatenate(parts).astype(np.float16).astype(np.float32)


def test_clip_retrieval_folder_is_indexed_as_it_is(clip_folder, tmp_path):
    root, x = clip_folder
    res = cli("index", root, "--out", tmp_path / "ix", "--json", "-q")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["rows"] == 80 and info["geometry"] == "cosine" and info["modality"] == "image"
    assert set(info["metadata_columns"]) == {"url", "caption"}
    ix = hyperret.Index.open(tmp_path / "ix")
    q = x[[3, 60]]
    r = ix.search(q, 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = np.argsort(-(q / np.linalg.norm(q, axis=1, keepdims=True)) @ unit.T, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(r.ids, want)
    assert r.to_list(["url"])[1][0]["url"] == "https://example.org/1/10.jpg"  # row 60 = part 1, row 10


@pytest.mark.parametrize("damage, message", [
    ("rows", "rows"),
    ("dim", "dimension"),
    ("pickle", "not a readable .npy"),
    ("missing", "has no metadata_1.parquet"),
    ("shape", "not (rows, dim) floats"),
])
def test_damaged_clip_retrieval_folders_are_one_line_errors(clip_folder, tmp_path, damage, message):
    root, _ = clip_folder
    if damage == "rows":
        pq.write_table(pa.table({"url": ["a"], "caption": ["b"]}), root / "metadata" / "metadata_1.parquet")
    elif damage == "dim":
        np.save(root / "img_emb" / "img_emb_1.npy", np.ones((30, DIM + 1), np.float16))
    elif damage == "pickle":
        with open(root / "img_emb" / "img_emb_1.npy", "wb") as f:
            pickle.dump({"not": "an array"}, f)
    elif damage == "missing":
        (root / "metadata" / "metadata_1.parquet").unlink()
    else:
        np.save(root / "img_emb" / "img_emb_1.npy", np.ones(30, np.float32))
    res = cli("index", root, "--out", tmp_path / "ix", "-q")
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "ix").exists()


def test_a_folder_of_parquet_files_is_one_table(tmp_path):
    pts = make_points(120, DIM, curv=1.3, n_concepts=4, seed=3)
    folder = tmp_path / "tables"
    folder.mkdir()
    for i, (s, e) in enumerate(((0, 70), (70, 120))):
        t = pa.table({"id": np.arange(s, e) + 1000, "embedding": list(pts.space[s:e]), "tag": [i] * (e - s)})
        pq.write_table(t.replace_schema_metadata({b"hyperret.curv": b"1.3"}), folder / f"part-{i}.parquet")
    res = cli("index", folder, "--out", tmp_path / "ix", "--json", "-q")
    assert res.exit_code == 0, res.output
    ix = hyperret.Index.open(tmp_path / "ix")
    assert len(ix) == 120 and ix.curv == 1.3 and ix.geometry == "lorentz"
    np.testing.assert_array_equal(ix.ids(), np.arange(1000, 1120))
    assert ix.get([1100])["tag"].to_pylist() == [1]
    # files that disagree are refused
    t = pa.table({"embedding": list(pts.space[:5]), "other": [1] * 5})
    pq.write_table(t.replace_schema_metadata({b"hyperret.curv": b"1.3"}), folder / "part-2.parquet")
    bad = cli("index", folder, "--out", tmp_path / "ix2", "-q")
    assert bad.exit_code == 2 and "columns" in bad.output


def test_geometry_flag_and_the_unit_vector_warning(tmp_path):
    f = tmp_path / "clip.parquet"
    pq.write_table(pa.table({"embedding": list(_unit(40, 4))}), f)
    warned = cli("index", f, "--out", tmp_path / "a", "--curv", "1.0", "-q")
    assert warned.exit_code == 0 and "warning:" in warned.stderr and "--geometry cosine" in warned.stderr
    assert hyperret.Index.open(tmp_path / "a").geometry == "lorentz"
    ok = cli("index", f, "--out", tmp_path / "b", "--geometry", "cosine", "-q")
    assert ok.exit_code == 0 and "warning" not in ok.stderr
    assert hyperret.Index.open(tmp_path / "b").geometry == "cosine"
    for args, msg in ((["--geometry", "poincare"], "unknown geometry"),
                      (["--geometry", "cosine", "--curv", "2"], "curvature 1")):
        res = cli("index", f, "--out", tmp_path / "c", "-q", *args)
        assert res.exit_code == 2 and msg in res.output


@pytest.mark.parametrize("geometry", ["lorentz", "cosine"])
def test_export_round_trips_through_index(tmp_path, geometry):
    pts = make_points(200, DIM, curv=1.3, n_concepts=4, seed=6)
    x = pts.space if geometry == "lorentz" else _unit(200, 7)
    curv = 1.3 if geometry == "lorentz" else 1.0
    with hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=curv, geometry=geometry) as ix:
        ix.add(x, metadata={"caption": [f"c{i}" for i in range(200)], "width": np.arange(200)})
        ix.commit()
        ix.delete(np.arange(0, 200, 3))
        ix.commit()
    res = cli("export", tmp_path / "ix", "--out", tmp_path / "rows.parquet", "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"] == 133
    again = cli("index", tmp_path / "rows.parquet", "--out", tmp_path / "ix2", "--json", "-q")  # no flags needed
    assert again.exit_code == 0, again.output
    a, b = hyperret.Index.open(tmp_path / "ix"), hyperret.Index.open(tmp_path / "ix2")
    assert b.geometry == geometry and b.curv == curv and len(b) == 133
    np.testing.assert_array_equal(a.ids(), b.ids())
    np.testing.assert_array_equal(a.vectors(a.ids()), b.vectors(b.ids()))
    assert a.get(a.ids()).to_pylist() == b.get(b.ids()).to_pylist()
    # an existing file is kept unless --force; unknown columns are named
    keep = cli("export", tmp_path / "ix", "--out", tmp_path / "rows.parquet")
    assert keep.exit_code == 2 and "--force" in keep.output
    assert cli("export", tmp_path / "ix", "--out", tmp_path / "rows.parquet", "--force", "--columns", "width",
               "-q").exit_code == 0
    assert pq.read_schema(tmp_path / "rows.parquet").names == ["id", "embedding", "width"]
    bad = cli("export", tmp_path / "ix", "--out", tmp_path / "x.parquet", "--columns", "nope")
    assert bad.exit_code == 2 and "unknown metadata column" in bad.output and not (tmp_path / "x.parquet").exists()
