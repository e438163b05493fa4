"""The command line: index, search, info, presets, demo, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import hyperret
from hyperret.cli import app
from hyperret.cli.demo import write_points
from hyperret.testing.synthetic import make_points

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _fails(result, fragment: str):
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    assert fragment in err, err


@pytest.fixture
def source(tmp_path):
    pts = make_points(600, 8, curv=0.7, seed=2)
    path = tmp_path / "src.parquet"
    write_points(pts, path)
    return path, pts


def test_index_search_info_roundtrip(tmp_path, source):
    src, pts = source
    out = tmp_path / "ix"
    r = _run("index", src, "--out", out, "--preset", "exact", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert (info["rows"], info["dim"], info["curv"], info["preset"]) == (600, 8, 0.7, "exact")
    np.save(tmp_path / "q.npy", pts.space[[3, 10]])
    r = _run("search", out, "--vectors", tmp_path / "q.npy", "--k", "3", "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["query"] for x in lines] == [0, 1]
    hit = lines[0]["hits"][0]
    assert hit["id"] == 3 and hit["distance"] == 0 and hit["uri"] == "demo://item/3" and hit["class"] == pts.cls[3]
    assert len(lines[1]["hits"]) == 3 and lines[1]["exact"] is True
    r = _run("search", out, "--vectors", tmp_path / "q.npy")  # the table form
    assert r.exit_code == 0 and "demo://item/10" in r.stdout
    r = _run("info", out, "--json", "--verify")
    assert r.exit_code == 0 and json.loads(r.stdout)["verified"] is True


def test_arrow_file_and_stream_sources_and_append(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    table = pa.table({"embedding": pa.array(list(x), pa.list_(pa.float32())), "id": pa.array(np.arange(40) * 3),
                      "uri": [f"u{i}" for i in range(40)]})
    table = table.replace_schema_metadata({"hyperret.curv": "2.0"})
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table.slice(0, 20))
    with pa.OSFile(str(tmp_path / "b.arrows"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table.slice(20))
    assert _run("index", tmp_path / "a.arrow", "--out", tmp_path / "ix", "-q").exit_code == 0
    r = _run("index", tmp_path / "b.arrows", "--out", tmp_path / "ix", "--append", "--json", "-q")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["rows"] == 40 and info["curv"] == 2.0 and info["version"] == 2


def test_presets_and_demo(tmp_path):
    r = _run("presets", "--json")
    assert r.exit_code == 0 and {"exact", "fast", "compact"} <= set(json.loads(r.stdout))
    r = _run("demo", "--out", tmp_path / "demo", "--n", "400", "--dim", "8", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [q["hits"][0]["id"] for q in rep["queries"]] == [q["id"] for q in rep["queries"]]
    radii = rep["radius_by_class"]
    assert radii["S"] < radii["V"] < radii["U"] < radii["G"]


def _write(path, **cols):
    meta = cols.pop("_meta", {"hyperret.curv": "1.0"})
    pq.write_table(pa.table(cols).replace_schema_metadata(meta), path)
    return path


def test_bad_sources_fail_cleanly_and_leave_no_index(tmp_path):
    good = [[0.1, 0.2, 0.3]] * 2
    cases = {
        "missing": (tmp_path / "nope.parquet", "does not exist"),
        "not parquet": (tmp_path / "junk.parquet", "not a readable Parquet or Arrow"),
        "no embedding": (_write(tmp_path / "a.parquet", vec=good), "no 'embedding' column"),
        "ragged": (_write(tmp_path / "b.parquet", embedding=[[0.1, 0.2], [0.1]]), "ragged"),
        "nan": (_write(tmp_path / "c.parquet", embedding=[[0.1, float("nan")], [0.1, 0.2]]), "NaN"),
        "dup ids": (_write(tmp_path / "d.parquet", embedding=good, id=[4, 4]), "duplicate id 4"),
        "float ids": (_write(tmp_path / "e.parquet", embedding=good, id=[1.0, 2.0]), "must be integers"),
        "no curvature": (_write(tmp_path / "f.parquet", embedding=good, _meta={}), "curvature unknown"),
        "strings": (_write(tmp_path / "g.parquet", embedding=[["a"], ["b"]]), "list of floats"),
        "empty": (_write(tmp_path / "h.parquet", embedding=pa.array([], pa.list_(pa.float32()))), "no rows"),
    }
    (tmp_path / "junk.parquet").write_text("hello")
    for name, (src, frag) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        _fails(_run("index", src, "--out", out, "-q"), frag)
        assert not out.exists(), name
        assert not list(tmp_path.glob(f".{out.name}.partial-*")), name


def test_failed_append_keeps_the_previous_snapshot(tmp_path, source):
    src, pts = source
    out = tmp_path / "ix"
    assert _run("index", src, "--out", out, "-q").exit_code == 0
    before = (out / "manifest.json").read_bytes()
    wrong_dim = _write(tmp_path / "w.parquet", embedding=[[0.1, 0.2]], _meta={"hyperret.curv": "0.7"})
    _fails(_run("index", wrong_dim, "--out", out, "--append", "-q"), "dimension 2, the index has 8")
    no_mod = _write(tmp_path / "nm.parquet", embedding=[list(pts.space[0])], _meta={"hyperret.curv": "0.7"})
    _fails(_run("index", no_mod, "--out", out, "--append", "-q"), "needs a 'modality' metadata column")
    dup = _write(tmp_path / "dup.parquet", embedding=[list(pts.space[0])], id=[5], modality=["text"],
                 _meta={"hyperret.curv": "0.7"})
    _fails(_run("index", dup, "--out", out, "--append", "-q"), "id 5 is already in the index")
    _fails(_run("index", src, "--out", out, "-q"), "already exists")
    _fails(_run("index", src, "--out", out, "--append", "--curv", "2", "-q"), "contradicts")
    assert (out / "manifest.json").read_bytes() == before


def test_search_errors(tmp_path, source):
    src, _ = source
    assert _run("index", src, "--out", tmp_path / "ix", "-q").exit_code == 0
    np.save(tmp_path / "q3.npy", np.zeros((2, 3), np.float32))
    _fails(_run("search", tmp_path / "ix", "--vectors", tmp_path / "q3.npy"), "dimension 3, the index has 8")
    np.save(tmp_path / "qnan.npy", np.full((1, 8), np.nan, np.float32))
    _fails(_run("search", tmp_path / "ix", "--vectors", tmp_path / "qnan.npy"), "NaN")
    _fails(_run("search", tmp_path / "none", "--vectors", tmp_path / "q3.npy"), "no hyperret index")
    _fails(_run("search", tmp_path / "ix", "--vectors", tmp_path / "missing.npy"), "does not exist")
    (tmp_path / "bad.npy").write_text("x")
    _fails(_run("search", tmp_path / "ix", "--vectors", tmp_path / "bad.npy"), "not a readable .npy")
    _fails(_run("info", tmp_path / "none"), "no hyperret index")
    _fails(_run("index", src, "--out", tmp_path / "p", "--preset", "bogus", "-q"), "unknown preset 'bogus'")


def test_real_entry_point_prints_one_line(tmp_path):
    """Through the console script's module, in a fresh process: no traceback, exit code 2."""
    p = subprocess.run([sys.executable, "-m", "hyperret.cli", "info", str(tmp_path / "none")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "hyperret.cli", "search", str(tmp_path), "--vectors", "x.npy",
                        "--json"], capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": ""})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-c", "import hyperret.cli, sys; sys.exit('torch' in sys.modules)"])
    assert p.returncode == 0  # the CLI's vector path never imports torch


def test_vector_search_never_imports_torch(tmp_path):
    """A whole `hyperret search --vectors` run, in a fresh process, leaves torch unimported."""
    import hyperret

    x = hyperret.geometry.lorentz.exp_map0(np.random.default_rng(0).normal(size=(50, 8)) * 0.3, 1.0).astype(np.float32)
    with hyperret.Index.create(tmp_path / "ix", dim=8, preset="exact") as ix:
        ix.add(x)
        ix.commit()
    np.save(tmp_path / "q.npy", x[:2])
    code = ("import sys\nfrom hyperret.cli import app\ntry:\n"
            f"    app(['search', {str(tmp_path / 'ix')!r}, '--vectors', {str(tmp_path / 'q.npy')!r}, '--json'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('"hits"') == 2


def test_first_id_numbers_a_new_index_from_it(tmp_path):
    x = make_points(40, 8, curv=1.0, seed=4).space
    _write(tmp_path / "t.parquet", embedding=list(x))
    r = _run("index", tmp_path / "t.parquet", "--out", tmp_path / "ix", "--curv", "1", "--first-id", 10**12,
             "--json", "-q")
    assert r.exit_code == 0, r.output
    ix = hyperret.Index.open(tmp_path / "ix")
    np.testing.assert_array_equal(np.sort(ix.ids()), 10**12 + np.arange(40))
    _fails(_run("index", tmp_path / "t.parquet", "--out", tmp_path / "ix", "--append", "--first-id", 5),
           "--first-id are fixed when an index is created")
    with pytest.raises(hyperret.errors.InvalidInputError, match="first_id"):
        hyperret.Index.create(tmp_path / "bad", dim=8, first_id=-1)
