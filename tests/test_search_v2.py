"""Search v2: the exact-metric graph, skip masks in the stage, the scan, recall as a contract, ``where``, k caps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import hyperret
from hyperret.cli import app
from hyperret.errors import InvalidInputError
from hyperret.geometry import lorentz
from hyperret.search import graph, hnsw
from hyperret.search.codes import Codes
from hyperret.search.recall import Calibration
from hyperret.search.scan import scan
from hyperret.storage.shardset import ShardSet
from hyperret.testing.synthetic import make_points, make_queries

DIM = 16
CURV = 1.3


def _preset(tmp_path, name: str, **over: str) -> str:
    body = {"name": f'"{name}"', "proxy": '"poincare"', "factory": '"HNSW16"', "navigate": '"lorentz"',
            "k_factor": "4.0", "k_extra": "32", "min_rows": "0", "default_recall": "0.98",
            "search": "{ efSearch = 64 }", "build": "{ efConstruction = 40 }", **over}
    p = tmp_path / f"{name}.toml"
    p.write_text("\n".join(f"{k} = {v}" for k, v in body.items()) + "\n")
    return str(p)


@pytest.fixture(scope="module")
def data():
    pts = make_points(3000, DIM, curv=CURV, n_concepts=12, seed=5)
    return pts, make_queries(pts, 60, seed=9)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


# ----------------------------------------------------------------- kernels
def test_exact_metric_graph_is_valid_and_finds_the_neighbours(data, exact_knn):
    pts, q = data
    sh = ShardSet([pts.space[:1000], pts.space[1000:]], DIM)
    g = hnsw.build(sh, CURV, m=16, ef_construction=40)
    g.check()  # the bounds proof a saved graph must pass
    assert g.levels.shape[0] == 3000 and int(g.cum[1]) == 32
    truth, _ = exact_knn(q, pts.space, CURV, 10)
    assert _recall(graph.search(g, q, sh, CURV, 10, 64), truth) >= 0.97
    # the walk's order is the exact one: with a beam over every row it is the brute force
    np.testing.assert_array_equal(graph.search(g, q, sh, CURV, 10, 3000), truth)


def test_graph_extends_on_a_copy(data, exact_knn):
    pts, q = data
    first = ShardSet([pts.space[:1800]], DIM)
    g1 = hnsw.build(first, CURV, m=16, ef_construction=40)
    before = g1.neighbors.copy()
    g2 = hnsw.extend(g1, ShardSet([pts.space], DIM), CURV, m=16, ef_construction=40)
    g2.check()
    np.testing.assert_array_equal(g1.neighbors, before)  # searches on the old graph are undisturbed
    assert g2.levels.shape[0] == 3000
    new = np.arange(1800, 3000, 7)
    own = graph.search(g2, pts.space[new], ShardSet([pts.space], DIM), CURV, 1, 64)[:, 0]
    assert np.mean(own == new) >= 0.99  # appended rows are reachable
    with pytest.raises(ValueError):
        hnsw.extend(g2, first, CURV, m=16)  # fewer rows than nodes


def test_walk_honours_a_skip_mask(data, exact_knn):
    pts, q = data
    sh = ShardSet([pts.space], DIM)
    g = hnsw.build(sh, CURV, m=16, ef_construction=40)
    skip = np.zeros(3000, np.uint8)
    skip[np.random.default_rng(1).random(3000) < 0.7] = 1
    got = graph.search(g, q, sh, CURV, 10, 64, skip=skip)
    assert not skip[got[got >= 0]].any()
    allowed = np.flatnonzero(skip == 0)
    truth, _ = exact_knn(q, pts.space[allowed], CURV, 10)
    assert _recall(got, allowed[truth]) >= 0.95
    full = graph.search(g, q, sh, CURV, 10, 3000, skip=skip)
    np.testing.assert_array_equal(full, allowed[truth])


def test_scan_is_exact_even_at_small_curvature(exact_knn):
    """The gap form never subtracts two 1/c-sized numbers: curvature 1e-4, norms <= 0.1, still exact."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4000, 32)) * 0.1 / np.sqrt(32)).astype(np.float32)
    q = x[:50] + (rng.standard_normal((50, 32)) * 1e-3 / np.sqrt(32)).astype(np.float32)
    sh = ShardSet([x[:1500], x[1500:]], 32)
    truth, _ = exact_knn(q, x, 1e-4, 10)
    got = scan(q, sh, 1e-4, 10)
    assert _recall(got, truth) == 1.0
    # a subset of rows, and a skip mask
    rows = np.arange(0, 4000, 3)
    t2, _ = exact_knn(q, x[rows], 1e-4, 10)
    np.testing.assert_array_equal(np.sort(scan(q, sh, 1e-4, 10, rows=rows), 1), np.sort(rows[t2], 1))
    skip = np.ones(4000, np.uint8)
    skip[rows] = 0
    np.testing.assert_array_equal(np.sort(scan(q, sh, 1e-4, 10, skip=skip), 1), np.sort(rows[t2], 1))


# ------------------------------------------------------- recall as a contract
@pytest.fixture(scope="module")
def graph_index(tmp_path_factory, data):
    pts, _ = data
    tmp = tmp_path_factory.mktemp("v2")
    ix = hyperret.Index.create(tmp / "ix", dim=DIM, curv=CURV, preset=_preset(tmp, "g-lorentz",
                                                                              graph_metric='"lorentz"', codes='"sq8"'))
    width = np.arange(3000) % 1000
    tag = np.where(np.arange(3000) % 3 == 0, "cat", "dog")
    ix.add(pts.space, metadata={"width": width, "tag": tag})
    ix.commit()
    return ix, width, tag


def test_commit_measures_the_recall_curve(graph_index):
    ix, _, _ = graph_index
    cal = Calibration.from_dict(ix.manifest.calibration)
    assert cal is not None and cal.knob == "ef" and cal.rows == 3000 and cal.k == 10
    assert cal.queries > 0 and len(cal.settings) >= 2 and cal.scan_seconds > 0
    assert all(0.0 <= r <= 1.0 for r in cal.recall())
    assert cal.recall()[-1] >= cal.recall()[0]
    info = ix.info()["recall"]
    assert info["knob"] == "ef" and info["curve"][0]["setting"] == cal.settings[0]
    assert set(info["settings_for"]) == {"0.95", "0.98", "0.99"}


def test_recall_targets_are_met_on_fresh_queries(graph_index, data, exact_knn):
    ix, _, _ = graph_index
    pts, q = data
    truth, _ = exact_knn(q, pts.space, CURV, 10)
    cal = Calibration.from_dict(ix.manifest.calibration)
    assert cal is not None
    for target in (0.9, 0.98):
        res = ix.search(q, 10, recall=target)
        got = _recall(res.rows, truth)
        assert got >= target - 0.03, (target, got)
    # an unreachable target falls back to the exhaustive scan: exact
    res = ix.search(q, 10, recall=1.0)
    if cal.setting_for(1.0) is None:
        assert all(p.scanned > 0 for p in res.plans)
    assert _recall(res.rows, truth) >= (1.0 if cal.setting_for(1.0) is None else 0.97)
    # ef set directly: a beam over every row is exact
    np.testing.assert_array_equal(ix.search(q, 10, ef=3000).rows, truth)


def test_calibration_is_remeasured_when_the_index_doubles(tmp_path, data):
    pts, _ = data
    ix = hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV, preset=_preset(tmp_path, "g", codes='"sq8"'))
    ix.add(pts.space[:1000])
    ix.commit()
    first = ix.manifest.calibration
    assert first is not None and first["rows"] == 1000
    ix.add(pts.space[1000:1500])
    ix.commit()
    assert ix.manifest.calibration == first  # grew by half: kept
    ix.add(pts.space[1500:2500])
    ix.commit()
    assert ix.manifest.calibration["rows"] == 2500
    out = ix.compact()
    assert out["version"] == ix.version and ix.manifest.calibration["rows"] == 2500


def test_cost_model_scans_tiny_indexes_and_when_measured_faster(tmp_path, data, exact_knn):
    pts, q = data
    ix = hyperret.Index.create(tmp_path / "tiny", dim=DIM, curv=CURV, preset=_preset(tmp_path, "g"))
    ix.add(pts.space[:100])
    ix.commit()
    res = ix.search(q, 5)
    assert all(p.scanned == 100 for p in res.plans) and ix.manifest.calibration is None
    truth, _ = exact_knn(q, pts.space[:100], CURV, 5)
    np.testing.assert_array_equal(res.rows, truth)
    fast_scan = Calibration(rows=1000, k=10, knob="ef", settings=[16, 64], held_out=[0.9, 0.99],
                            perturbed=[0.92, 0.995], self_first=[1, 1], evals=[100, 300], seconds=[1e-4, 3e-4],
                            scan_seconds=2e-4)
    assert fast_scan.setting_for(0.98) == 64 and fast_scan.prefer_scan(64) and not fast_scan.prefer_scan(16)
    assert fast_scan.setting_for(0.999) is None and fast_scan.predicted(40) == pytest.approx(0.945)


def test_navigation_codes_walk_like_the_rows(data, exact_knn, tmp_path):
    """8-bit codes order the walk almost as the rows do; saved, grown and reloaded they stay valid."""
    pts, q = data
    sh = ShardSet([pts.space], DIM)
    g = hnsw.build(sh, CURV, m=16, ef_construction=40)
    codes = Codes.encode([pts.space[:1000], pts.space[1000:]], DIM)
    assert codes.codes.shape == (3000, DIM) and codes.codes.dtype == np.uint8
    np.testing.assert_allclose(codes.sqnorm, np.sum(pts.space.astype(np.float64) ** 2, 1), rtol=1e-6)
    truth, _ = exact_knn(q, pts.space, CURV, 10)
    with_codes = graph.search(g, q, sh, CURV, 40, 64, codes=codes)
    from hyperret.search.rerank import rerank

    assert _recall(rerank(q, with_codes, sh, CURV, 10)[0], truth) >= 0.97
    grown = Codes.encode([pts.space[:1800]], DIM).extended([pts.space[1800:]])
    assert grown.rows == 3000 and np.array_equal(grown.codes[:1800], Codes.encode([pts.space[:1800]], DIM).codes)
    back = Codes.from_arrays(codes.arrays(), 3000, DIM)
    assert back is not None and np.array_equal(back.codes, codes.codes)
    assert Codes.from_arrays({}, 3000, DIM) is None  # a graph saved without codes walks the rows
    for name, bad in (("codes", np.zeros(5, np.uint8)), ("code_step", np.zeros(DIM, np.float32)),
                      ("code_sqnorm", np.full(3000, np.nan, np.float32)), ("code_lo", np.zeros(DIM, np.float64))):
        with pytest.raises(ValueError):
            Codes.from_arrays({**codes.arrays(), name: bad}, 3000, DIM)


def test_calibration_from_disk_is_checked():
    good = dict(rows=10, k=10, knob="ef", settings=[8, 16], held_out=[0.5, 0.9], perturbed=[0.5, 0.9],
                self_first=[1.0, 1.0], evals=[1.0, 2.0], seconds=[0.1, 0.2], scan_seconds=0.1, queries=4)
    assert Calibration.from_dict(good) is not None
    for bad in ({**good, "settings": [16, 8]}, {**good, "held_out": [0.5]}, {**good, "seconds": [0.1, float("nan")]},
                {**good, "knob": "rm -rf"}, {**good, "extra": 1}, {**good, "settings": [8, 1 << 40]}, [1, 2], "x"):
        assert Calibration.from_dict(bad) is None


# ------------------------------------------------------------------- where
def test_where_returns_only_matching_rows_exactly(graph_index, data, exact_knn):
    ix, width, tag = graph_index
    pts, q = data
    for expr, match in (("width > 500 and tag = 'cat'", (width > 500) & (tag == "cat")),
                        ("width < 30", width < 30),  # 3%: scanned
                        ("width < 10", width < 10)):  # 1%
        res = ix.search(q, 10, where=expr)
        rows = res.rows[res.rows >= 0]
        assert match[rows].all()
        allowed = np.flatnonzero(match)
        truth, _ = exact_knn(q, pts.space[allowed], CURV, 10)
        assert _recall(res.rows, allowed[truth]) >= 0.98, expr
    res = ix.search(q, 10, where="width < 10")
    assert all(p.scanned == 30 for p in res.plans)  # few match: the scan of the matching rows
    nothing = ix.search(q, 10, where="width > 5000")
    assert (nothing.rows == -1).all()


def test_where_with_deletions_and_the_safety_filter(tmp_path, exact_knn):
    from hyperret.safety import calibrate

    cal = make_points(4000, DIM, curv=CURV, seed=3, n_concepts=8)
    b = calibrate(lorentz.radius(cal.space, CURV), cal.modality, cal.unsafe, curv=CURV)
    pts = make_points(2400, DIM, curv=CURV, n_concepts=8, seed=2)
    img = pts.space[pts.modality == "image"]
    ix = hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV, preset=_preset(tmp_path, "g"), bounds=b,
                               modality="image")
    n = len(img)
    ix.add(img, metadata={"width": np.arange(n) % 100})
    ix.commit()
    ix.delete(np.arange(0, n, 5))
    ix.commit()
    unsafe = ix._snap.unsafe_rows()
    res = ix.search(img[:20], 10, policy="filter", modality="image", where="width >= 50")
    rows = res.rows[res.rows >= 0]
    assert len(rows) and not unsafe[rows].any() and (rows % 5 != 0).all() and ((rows % 100) >= 50).all()


def test_bad_knobs_and_predicates_are_refused(graph_index, data):
    ix, _, _ = graph_index
    _, q = data
    for kw in ({"ef": 0}, {"ef": 1.5}, {"nprobe": -1}, {"recall": 0.0}, {"recall": 1.5}, {"recall": True},
               {"where": "width >"}, {"where": "nope = 1"}, {"where": "space > 1"}, {"where": 3}):
        with pytest.raises(InvalidInputError):
            ix.search(q[:2], 5, **kw)


def test_k_is_capped_to_the_live_rows(tmp_path, data):
    pts, q = data
    ix = hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV, preset="fast")
    ix.add(pts.space[:50])
    ix.commit()
    ix.delete(np.arange(5))
    ix.commit()
    res = ix.search(q[:3], 100_000_000)
    assert res.rows.shape == (3, 45) and (res.rows >= 5).all()


def test_ivf_stage_honours_the_skip_mask(tmp_path, data):
    pts, q = data
    p = _preset(tmp_path, "ivf", proxy='"ip"', factory='"IVF{nlist},SQ8"', navigate='"lorentz"',
                search="{ nprobe = 4 }", build="{}", k_factor="20.0", k_extra="100")
    ix = hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV, preset=p)
    ix.add(pts.space, metadata={"width": np.arange(3000) % 10})
    ix.commit()
    assert ix.info()["recall"]["knob"] == "nprobe"
    res = ix.search(q, 10, where="width = 3", nprobe=8)
    rows = res.rows[res.rows >= 0]
    assert len(rows) and (rows % 10 == 3).all()


def test_cli_knobs_where_and_info(tmp_path, graph_index, data):
    ix, _, _ = graph_index
    _, q = data
    np.save(tmp_path / "q.npy", q[:2])
    runner = CliRunner()
    for extra in (["--recall", "0.95"], ["--ef", "32"], ["--where", "tag = 'cat'"]):
        r = runner.invoke(app, ["search", str(ix.path), "--vectors", str(tmp_path / "q.npy"), "--json", *extra])
        assert r.exit_code == 0, r.output
        hits = [json.loads(line)["hits"] for line in r.output.splitlines()]
        assert len(hits) == 2 and all(len(h) == 10 for h in hits)
    r = runner.invoke(app, ["search", str(ix.path), "--vectors", str(tmp_path / "q.npy"), "--where", "tag = "])
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["info", str(ix.path)])
    assert r.exit_code == 0 and "recall@10 measured at 3000 rows" in r.output


def test_distances_stay_exact(graph_index, data):
    ix, _, _ = graph_index
    pts, q = data
    res = ix.search(q[:5], 10, ef=128)
    ref = lorentz.distance(q[:5, None, :].astype(np.float64), pts.space[res.rows].astype(np.float64), CURV)
    np.testing.assert_allclose(res.distances, ref, rtol=1e-5)
