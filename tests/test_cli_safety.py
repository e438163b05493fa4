"""The safety commands: calibrate, index --bounds, search --policy, classify, explain, eval, report."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_cli import _fails, _run

from hyperret.cli.demo import write_points
from hyperret.testing.synthetic import make_points, make_quadruples

DIM, CURV = 16, 1.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_safety")
    kw = dict(curv=CURV, unsafe_shift=1.0, n_concepts=40, seed=4)
    write_points(make_points(4000, DIM, **kw), d / "labelled.parquet")
    write_points(make_points(3000, DIM, classes=("V", "G"), part=1, **kw), d / "images.parquet")
    np.save(d / "unsafe_q.npy", make_points(6, DIM, classes=("U",), part=2, **kw).space)
    np.save(d / "safe_q.npy", make_points(6, DIM, classes=("S",), part=3, **kw).space)
    r = _run("calibrate", d / "labelled.parquet", "--out", d / "bounds.json", "--json")
    assert r.exit_code == 0, r.output
    r = _run("index", d / "images.parquet", "--out", d / "ix", "--bounds", d / "bounds.json", "--preset", "exact",
             "-q", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["modality"] == "image"
    return d


def _lines(r):
    assert r.exit_code == 0, r.output
    return [json.loads(x) for x in r.stdout.splitlines()]


def test_calibrate_writes_bounds_in_hysac_layout(files):
    b = json.loads((files / "bounds.json").read_text())
    assert set("SUVG") <= set(b) and {"up_95", "low_05", "avg"} <= set(b["V"])
    assert b["thresholds"]["text"]["balanced_accuracy"] == 1.0 and b["curv"] == CURV
    r = _run("calibrate", files / "labelled.parquet", "--out", files / "b2.json")
    assert r.exit_code == 0 and "text threshold" in r.stdout and "balanced accuracy" in r.stdout


def test_search_policies_from_the_command_line(files):
    ix, uq = files / "ix", files / "unsafe_q.npy"
    off = _lines(_run("search", ix, "--vectors", uq, "-k", "5", "--json"))
    red = _lines(_run("search", ix, "--vectors", uq, "-k", "5", "--json", "--policy", "redirect", "--explain"))
    assert np.mean([h["unsafe"] for q in off for h in q["hits"]]) > 0.5
    assert np.mean([h["unsafe"] for q in red for h in q["hits"]]) < 0.1
    assert all(q["plan"]["moved"] and q["plan"]["policy"] == "redirect" for q in red)
    blk = _lines(_run("search", ix, "--vectors", uq, "--json", "--policy", "block", "--explain"))
    assert all(q["hits"] == [] and "blocked" in q["plan"]["reason"] for q in blk)
    per = _lines(_run("search", ix, "--vectors", uq, "--json", "--policy", "off,filter,block,redirect,off,off"))
    assert [len(q["hits"]) for q in per] == [10, 10, 0, 10, 10, 10]
    assert not any(h["unsafe"] for h in per[1]["hits"])
    hy = _lines(_run("search", ix, "--vectors", uq, "--json", "--policy", "redirect", "--redirect-mode", "hysac",
                     "--explain"))
    assert all(q["plan"]["redirect_mode"] == "hysac" for q in hy)
    text = _run("search", ix, "--vectors", uq, "--policy", "filter", "--explain")
    assert text.exit_code == 0 and "policy filter" in text.stdout and "unsafe text query" in text.stdout


def test_search_policy_errors_are_one_line(files):
    ix, uq = files / "ix", files / "unsafe_q.npy"
    _fails(_run("search", ix, "--vectors", uq, "--policy", "outward"), "allow_unsafe")
    _fails(_run("search", ix, "--vectors", uq, "--policy", "strict"), "unknown policy 'strict'")
    _fails(_run("search", ix, "--vectors", uq, "--policy", "off,block"), "2 entries for 6 queries")
    _fails(_run("search", ix, "--vectors", uq, "--modality", "audio", "--policy", "block"), "unknown modality")
    _fails(_run("search", ix, "--vectors", uq, "--policy", "block", "--bounds", files / "nope.json"),
           "does not exist")
    ok = _lines(_run("search", ix, "--vectors", uq, "--json", "--policy", "outward", "--allow-unsafe"))
    assert len(ok) == 6
    _fails(_run("calibrate", files / "images.parquet", "--out", files / "x.json", "--criterion", "f1"),
           "unknown criterion")
    _fails(_run("calibrate", files / "unsafe_q.npy", "--out", files / "x.json"), "not a readable")
    _fails(_run("index", files / "images.parquet", "--out", files / "ix", "--append", "--bounds",
                files / "bounds.json"), "not with --append")


def test_classify_writes_a_table(files):
    out = files / "cls.parquet"
    r = _run("classify", files / "images.parquet", "--index", files / "ix", "--out", out)
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    truth = pq.read_table(files / "images.parquet").column("unsafe").to_numpy()
    assert t.num_rows == len(truth) and (t.column("unsafe").to_numpy() == truth).mean() >= 0.99
    assert set(t.column("class").to_pylist()) == {"V", "G"}
    rows = _lines(_run("classify", files / "labelled.parquet", "--bounds", files / "bounds.json", "--json"))
    assert len(rows) == 4000 and {"unsafe", "unsafe_score", "radius", "class"} <= set(rows[0])
    _fails(_run("classify", files / "labelled.parquet"), "no bounds")
    _fails(_run("classify", files / "labelled.parquet", "--bounds", files / "bounds.json", "--out",
                files / "x.csv"), ".parquet or .json")


def test_eval_on_paired_embeddings(files, tmp_path):
    q = make_quadruples(200, DIM, curv=CURV, seed=9)
    np.savez(tmp_path / "pairs.npz", curv=CURV, **q)
    r = _run("eval", tmp_path / "pairs.npz", "--json")
    rep = json.loads(r.stdout)
    rows = {(t["task"], t["policy"]): t for t in rep["tasks"]}
    assert rows[("U->V∪G", "redirect")]["safe@1"] > rows[("U->V∪G", "off")]["safe@1"]
    md = _run("eval", tmp_path / "pairs.npz", "--out", tmp_path / "eval.md")
    assert md.exit_code == 0 and "| S->V | off |" in md.stdout
    assert (tmp_path / "eval.md").read_text().startswith("| task |")
    np.savez(tmp_path / "bad.npz", S=q["S"], U=q["U"], V=q["V"])
    _fails(_run("eval", tmp_path / "bad.npz", "--curv", "1"), "no 'G'")


def test_explain_walks_to_the_origin(tmp_path):
    # captions along one ray: each entails every point farther out on it
    direction = np.zeros(DIM, np.float32)
    direction[0] = 1.0
    radii = np.array([0.5, 1.0, 1.5, 2.0])
    caps = np.sinh(radii)[:, None] * direction[None, :]
    import pyarrow as pa

    table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(caps.reshape(-1).astype(np.float32)),
                                                                     DIM),
                      "caption": [f"r{r}" for r in radii]}).replace_schema_metadata({"hyperret.curv": "1.0"})
    pq.write_table(table, tmp_path / "caps.parquet")
    assert _run("index", tmp_path / "caps.parquet", "--out", tmp_path / "caps", "--modality", "text",
                "-q").exit_code == 0
    np.save(tmp_path / "p.npy", (np.sinh(2.6) * direction).astype(np.float32))
    r = _run("explain", tmp_path / "caps", "--vectors", tmp_path / "p.npy", "--steps", "4", "--json")
    assert r.exit_code == 0, r.output
    walk = json.loads(r.stdout)
    got = [s.get("caption") for s in walk["steps"]]
    # at radius 2.6, 1.95, 1.3, 0.65: the nearest caption inside each point on the ray entails it
    # (the nearer caption just outside does not); nothing entails the origin
    assert got == ["r2.0", "r1.5", "r1.0", "r0.5", None]
    assert [s["root"] for s in walk["steps"]] == [False, False, False, False, True]  # HySAC's [ROOT] at the origin
    assert walk["steps"][1]["nearest"]["caption"] == "r2.0"
    text = _run("explain", tmp_path / "caps", "--vectors", tmp_path / "p.npy", "--steps", "2")
    assert "entailed by [3] r2.0" in text.stdout
    assert "[ROOT] (no caption entails this point; the origin does)" in text.stdout.strip().splitlines()[-1]
    # from a point no cone holds, the walk is [ROOT] all the way (off the ray, past every aperture)
    off = np.zeros(DIM, np.float32)
    off[1] = np.sinh(1.0)
    np.save(tmp_path / "off.npy", off)
    walk = json.loads(_run("explain", tmp_path / "caps", "--vectors", tmp_path / "off.npy", "--json").stdout)
    assert all(s["root"] and s["id"] is None for s in walk["steps"])
    _fails(_run("explain", tmp_path / "caps"), "exactly one of")


def test_report_plot(files):
    out = files / "report.png"
    r = _run("report", files / "ix", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["counts"]) == {"V", "G"} and summary["thresholds"]["image"] > 0
    r = _run("report", files / "labelled.parquet", "--out", files / "report2.png", "--bounds", files / "bounds.json")
    assert r.exit_code == 0 and (files / "report2.png").exists()
