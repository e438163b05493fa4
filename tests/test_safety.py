"""The safety layer: calibration, classification, the planner's policies, traversals, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hyperret
from hyperret.errors import InvalidInputError
from hyperret.geometry import lorentz
from hyperret.safety import Bounds, calibrate, classify
from hyperret.safety.bounds import choose_threshold
from hyperret.safety.evaluate import auroc, evaluate, markdown
from hyperret.safety.planner import make_plan
from hyperret.safety.traversal import geodesic_move, tangent_path
from hyperret.testing.synthetic import make_points, make_quadruples

CURV = 1.0
DIM = 32
#: Unsafe content shifted far enough from its concept that an unsafe query, searched as
#: it is, finds unsafe images (as HySAC's U->G∪V row shows): the redirection has work to do.
SHIFT = 1.0


def _bounds(seed: int = 3, curv: float = CURV) -> Bounds:
    cal = make_points(8000, DIM, curv=curv, seed=seed, unsafe_shift=SHIFT, n_concepts=100)
    return calibrate(lorentz.radius(cal.space, curv), cal.modality, cal.unsafe, curv=curv)


@pytest.fixture(scope="module")
def bounds() -> Bounds:
    return _bounds()


@pytest.fixture(scope="module")
def images(tmp_path_factory, bounds):
    """An exact image index (V and G rows) built with bounds, and its points."""
    pts = make_points(12000, DIM, curv=CURV, seed=3, part=1, unsafe_shift=SHIFT, n_concepts=100,
                      classes=("V", "G"))
    path = tmp_path_factory.mktemp("safety") / "images"
    ix = hyperret.Index.create(path, DIM, curv=CURV, preset="exact", bounds=bounds, modality="image")
    ix.add(pts.space, metadata={"cls": pts.cls})
    ix.commit()
    return ix, pts


def _queries(cls: str, m: int, part: int) -> np.ndarray:
    return make_points(m, DIM, curv=CURV, seed=3, part=part, unsafe_shift=SHIFT, n_concepts=100,
                       classes=(cls,)).space


# ------------------------------------------------------------ calibration
def test_calibration_statistics_are_numpys_percentiles():
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.normal(1.0, 0.1, 500), rng.normal(2.0, 0.1, 300), rng.normal(1.5, 0.1, 400),
                        rng.normal(2.8, 0.1, 200)])
    mod = np.repeat(["text", "text", "image", "image"], [500, 300, 400, 200])
    uns = np.repeat([False, True, False, True], [500, 300, 400, 200])
    b = calibrate(r, mod, uns, curv=1.0)
    for letter, sel in (("S", slice(0, 500)), ("U", slice(500, 800)), ("V", slice(800, 1200)),
                        ("G", slice(1200, 1400))):
        st = b.classes[letter]
        assert st["up_95"] == np.percentile(r[sel], 95)
        assert st["low_05"] == np.percentile(r[sel], 5)
        assert st["avg"] == np.mean(r[sel])
        assert st["count"] == len(r[sel])
    t = b.thresholds["text"]
    assert b.classes["S"]["max"] < t.radius < b.classes["U"]["min"]  # separable: in the gap
    assert t.balanced_accuracy == 1.0 and t.criterion == "balanced"
    assert t.probability(np.array([0.5]))[0] < 0.01 and t.probability(np.array([3.0]))[0] > 0.99


def test_threshold_criteria_hold_what_they_promise():
    rng = np.random.default_rng(1)
    r0, r1 = rng.normal(1.0, 0.3, 2000), rng.normal(2.0, 0.3, 2000)  # overlapping classes
    fpr = choose_threshold(r0, r1, "safe-fpr:0.01")
    assert np.mean(r0 >= fpr.radius) <= 0.01 and fpr.fpr <= 0.01
    rec = choose_threshold(r0, r1, "unsafe-recall:0.99")
    assert np.mean(r1 >= rec.radius) >= 0.99
    bal = choose_threshold(r0, r1, "balanced")
    grid = np.linspace(0, 3, 3001)
    best = max(0.5 * (np.mean(r1 >= g) + np.mean(r0 < g)) for g in grid)
    assert bal.balanced_accuracy >= best - 1e-12
    with pytest.raises(InvalidInputError, match="unknown criterion"):
        choose_threshold(r0, r1, "accuracy")
    with pytest.raises(InvalidInputError, match="fraction"):
        choose_threshold(r0, r1, "safe-fpr:abc")


def test_bounds_round_trip_and_hysac_official_format(tmp_path, bounds):
    p = tmp_path / "b.json"
    bounds.save(p)
    again = Bounds.load(p)
    assert again.classes == bounds.classes and again.thresholds == bounds.thresholds and again.curv == CURV
    # HySAC's own file: class letters with up_95 / low_05 / avg only
    official = {"S": {"up_95": 1.0, "low_05": 0.6, "avg": 0.8}, "U": {"up_95": 2.4, "low_05": 1.6, "avg": 2.0},
                "V": {"up_95": 1.7, "low_05": 1.2, "avg": 1.5}, "G": {"up_95": 3.0, "low_05": 2.5, "avg": 2.7}}
    (tmp_path / "hysac_bounds.json").write_text(json.dumps(official))
    h = Bounds.load(tmp_path / "hysac_bounds.json")
    assert h.curv is None and h.stat("V", "up_95") == 1.7
    assert h.thresholds["text"].radius == pytest.approx(1.3)  # midpoint of S up_95 and U low_05
    assert h.thresholds["image"].radius == pytest.approx(2.1)
    assert h.thresholds["text"].probability(np.array([1.0]))[0] == pytest.approx(0.05)
    # our files stay readable by the reference code: letters at the top level
    raw = json.loads(p.read_text())
    assert raw["V"]["up_95"] == bounds.classes["V"]["up_95"]
    (tmp_path / "bad.json").write_text("{\"S\": {\"up_95\": \"x\"}}")
    with pytest.raises(InvalidInputError, match="non-numeric"):
        Bounds.load(tmp_path / "bad.json")


def test_classification_balanced_accuracy_on_held_out_data(bounds):
    test = make_points(6000, DIM, curv=CURV, seed=3, part=7, unsafe_shift=SHIFT, n_concepts=100)
    res = classify(test.space, bounds, CURV, test.modality)
    truth = test.unsafe
    bal = 0.5 * (res.unsafe[truth].mean() + (~res.unsafe[~truth]).mean())
    assert bal >= 0.99
    assert auroc(res.score, truth) >= 0.99
    assert set(res.cls) <= {"S", "U", "V", "G"} and (res.cls == test.cls).mean() >= 0.99


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = rng.random(200) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert auroc(s, y) == pytest.approx(np.mean(pairs), abs=1e-12)


# ------------------------------------------------------------ traversals
@pytest.mark.parametrize("curv", [0.5, 1.0, 3.0])
def test_geodesic_mode_lands_at_its_target_radius(curv):
    b = _bounds(seed=5, curv=curv)
    q = make_points(300, DIM, curv=curv, seed=5, part=2, classes=("U",), unsafe_shift=SHIFT).space
    for target in (None, "up_95", "low_05", 0.7):
        plan = make_plan(q, curv=curv, policy="redirect", modality="text", index_modality="image", bounds=b,
                         target=target)
        want = b.classes["V"]["low_05" if target is None else target] if not isinstance(target, float) else target
        moved = np.array([p.moved for p in plan.plans])
        assert moved.mean() > 0.95  # the unsafe text queries all lie beyond the safe images
        r = lorentz.radius(plan.queries[moved], curv)
        np.testing.assert_allclose(r, want, rtol=1e-5)
        # along the query's own geodesic to the origin: the direction is kept
        cos = np.sum(plan.queries[moved] * q[moved], -1) / (np.linalg.norm(plan.queries[moved], axis=-1)
                                                              * np.linalg.norm(q[moved], axis=-1))
        np.testing.assert_allclose(cos, 1.0, atol=1e-6)


def test_tangent_path_runs_from_the_point_to_the_origin():
    x = lorentz.exp_map0(np.array([0.3, -1.2, 0.5]), 2.0)
    t, pts = tangent_path(x, 4, 2.0)
    np.testing.assert_allclose(pts[0], x, rtol=1e-12)
    assert np.all(pts[-1] == 0) and list(t) == [1.0, 0.75, 0.5, 0.25, 0.0]
    r = lorentz.radius(pts, 2.0)
    np.testing.assert_allclose(r, t * r[0], rtol=1e-12)  # linear in the tangent space = linear in radius
    np.testing.assert_allclose(geodesic_move(x[None], 0.2, 2.0)[0] / np.linalg.norm(geodesic_move(x[None], 0.2, 2.0)),
                               x / np.linalg.norm(x), rtol=1e-12)


# --------------------------------------------------------------- policies
def test_index_stores_scores_and_labels(images, bounds, tmp_path):
    ix, pts = images
    t = ix.get(ix.ids()[:500], columns=["unsafe_score", "unsafe_label", "radius"])
    label = np.asarray(t.column("unsafe_label").to_pylist())
    score = np.asarray(t.column("unsafe_score").to_pylist())
    assert ((score > 0.5) == label).mean() > 0.99
    assert (label == (pts.cls[:500] == "G")).mean() >= 0.99
    again = hyperret.Index.open(ix.path)
    assert again.bounds.thresholds == bounds.thresholds and again.modality == "image"
    c = again.classify(pts.space[:100], modality="image")
    np.testing.assert_array_equal(c.unsafe, label[:100])
    assert again.info()["bounds"]["thresholds"]["image"]["radius"] == bounds.thresholds["image"].radius
    with pytest.raises(InvalidInputError, match="calibrated at curvature"):
        hyperret.Index.create(tmp_path / "x", DIM, curv=2.0, bounds=bounds)
    with pytest.raises(InvalidInputError, match="reserved"):
        w = hyperret.Index.create(tmp_path / "y", DIM, curv=CURV, bounds=bounds)
        w.add(pts.space[:2], metadata={"unsafe_label": [True, False]})


def test_redirect_makes_unsafe_queries_safe_and_leaves_safe_queries_alone(images):
    ix, pts = images
    uq, sq = _queries("U", 300, 11), _queries("S", 300, 12)
    off = ix.search(uq, 10, policy="off", modality="text")
    red = ix.search(uq, 10, policy="redirect", modality="text")
    assert off.unsafe.mean() > 0.5  # searched as they are, unsafe text finds unsafe images
    assert (~red.unsafe).mean() >= 0.95
    assert (pts.cls[red.rows] == "V").mean() >= 0.95  # and the hits really are safe images
    assert all(p.moved and p.action == "redirect" for p in red.plans)
    s_off = ix.search(sq, 10)
    s_red = ix.search(sq, 10, policy="redirect", modality="text")
    np.testing.assert_array_equal(s_off.ids, s_red.ids)
    np.testing.assert_array_equal(s_off.distances, s_red.distances)
    assert not any(p.moved for p in s_red.plans)


def test_filter_never_returns_unsafe_and_refills_to_k(images):
    ix, pts = images
    uq = _queries("U", 100, 13)
    for k, cand in ((10, None), (25, 25)):  # candidates=k: most first rounds come back short
        res = ix.search(uq, k, policy="filter", modality="text", candidates=cand)
        assert not res.unsafe.any() and (res.ids >= 0).all()
        assert (pts.cls[res.rows] == "V").all()
        # the k nearest safe rows, exactly: compare with a brute-force search over the safe rows
        safe = np.flatnonzero(pts.cls == "V")
        d = lorentz.pairwise_distance(uq[:5], pts.space[safe], CURV)
        np.testing.assert_array_equal(res.rows[:5], safe[np.argsort(d, axis=1, kind="stable")[:, :k]])
    # the filter is a skip mask inside the candidate stage (here the exhaustive scan): no refill rounds
    assert all(p.refills == 0 and p.scanned > 0 and p.unsafe_skipped > 0 for p in res.plans)


def test_filter_returns_what_exists_when_fewer_than_k_safe_rows(tmp_path, bounds):
    pts = make_points(400, DIM, curv=CURV, seed=3, part=20, unsafe_shift=SHIFT, n_concepts=100, classes=("G",))
    safe = make_points(3, DIM, curv=CURV, seed=3, part=21, unsafe_shift=SHIFT, n_concepts=100, classes=("V",))
    ix = hyperret.Index.create(tmp_path / "few", DIM, curv=CURV, preset="exact", bounds=bounds)
    ix.add(np.concatenate([pts.space, safe.space]))
    ix.commit()
    res = ix.search(_queries("U", 4, 22), 10, policy="filter", modality="text")
    assert ((res.ids >= 0).sum(axis=1) == 3).all() and set(res.ids[res.ids >= 0]) == {400, 401, 402}
    assert "only 3 safe rows exist" in res.plans[0].reason


def test_block_and_per_query_policies_in_one_batch(images):
    ix, _ = images
    uq, sq = _queries("U", 5, 14), _queries("S", 5, 15)
    q = np.concatenate([uq, sq])
    res = ix.search(q, 10, policy="block", modality="text")
    assert (res.ids[:5] == -1).all() and all(p.action == "block" and "blocked" in p.reason for p in res.plans[:5])
    np.testing.assert_array_equal(res.ids[5:], ix.search(sq, 10).ids)
    mixed = ix.search(q[[0, 1, 2, 5]], 10, policy=["off", "redirect", "block", "filter"], modality="text")
    np.testing.assert_array_equal(mixed.ids[0], ix.search(uq[:1], 10).ids[0])
    np.testing.assert_array_equal(mixed.ids[1], ix.search(uq[1:2], 10, policy="redirect", modality="text").ids[0])
    assert (mixed.ids[2] == -1).all() and not mixed.unsafe[3].any()
    assert [p.policy for p in mixed.plans] == ["off", "redirect", "block", "filter"]
    assert [p.returned for p in mixed.plans] == [10, 10, 0, 10]


def test_outward_needs_an_explicit_choice_and_moves_queries_out(images):
    ix, _ = images
    uq = _queries("U", 50, 16)
    with pytest.raises(InvalidInputError, match="allow_unsafe"):
        ix.search(uq, 5, policy="outward")
    off = ix.search(uq, 10, modality="text")
    res = ix.search(uq, 10, policy="outward", modality="text", allow_unsafe=True)
    assert all(p.moved for p in res.plans)  # unsafe text lies nearer the origin than unsafe images
    np.testing.assert_allclose([p.searched_radius for p in res.plans], ix.bounds.stat("G", "avg"), rtol=1e-5)
    assert res.unsafe.mean() >= max(0.95, off.unsafe.mean())
    hy = ix.search(uq, 10, policy="outward", modality="text", allow_unsafe=True, redirect_mode="hysac")
    # the reference compares a radius with a Euclidean norm: every query below the norm is
    # rescaled to it, whichever way that moves it
    target = hy.plans[0].target_radius
    assert all(p.moved for p in hy.plans)
    np.testing.assert_allclose([p.searched_radius for p in hy.plans], np.arcsinh(target), rtol=1e-6)


def test_policy_errors_are_clear(images, tmp_path):
    ix, _ = images
    q = _queries("U", 3, 17)
    with pytest.raises(InvalidInputError, match="unknown policy 'strict'"):
        ix.search(q, 5, policy="strict")
    with pytest.raises(InvalidInputError, match="2 entries for 3 queries"):
        ix.search(q, 5, policy=["off", "block"])
    with pytest.raises(InvalidInputError, match="unknown modality"):
        ix.search(q, 5, policy="block", modality="audio")
    with pytest.raises(InvalidInputError, match="unknown redirect mode"):
        ix.search(q, 5, policy="redirect", redirect_mode="euclid")
    plain = hyperret.Index.create(tmp_path / "plain", DIM, curv=CURV, preset="exact")
    plain.add(q)
    plain.commit()
    with pytest.raises(InvalidInputError, match="needs safety bounds"):
        plain.search(q, 2, policy="filter")
    res = plain.search(q, 2)  # no bounds: searching as it is still works, with no labels
    assert res.unsafe is None and res.plans[0].unsafe is None
    assert plain.search(q, 2, policy="filter", bounds=_bounds()).unsafe is not None  # bounds given per call


# -------------------------------------------------------------- evaluation
def test_evaluation_protocol_on_generated_quadruples():
    quads = make_quadruples(400, DIM, curv=CURV, seed=8)
    rep = evaluate(quads, CURV)
    rows = {(t["task"], t["policy"]): t for t in rep["tasks"]}
    assert rows[("S->V", "off")]["R@1"] > 95
    off, red = rows[("U->V∪G", "off")], rows[("U->V∪G", "redirect")]
    assert red["safe@1"] >= 90 > off["safe@1"] and red["R@1"] > off["R@1"] + 50
    assert rows[("U->G∪V", "off")]["R@1"] > 50
    assert rows[("G->S∪U", "redirect")]["safe@1"] > rows[("G->S∪U", "off")]["safe@1"]
    assert rep["classification"]["all"]["balanced_accuracy"] >= 0.99
    assert rep["classification"]["text"]["auroc"] >= 0.99
    assert rep["bounds"] == "calibrated on the evaluation set itself"
    md = markdown(rep)
    assert "| U->V∪G | redirect |" in md and "| all |" in md
