"""Parity with HySAC's reference code: the ``hysac`` redirect and minimal bounds files.

The reference traversal is transcribed in ``hysac_reference.py``; the evaluation tasks
are checked against a direct NumPy computation of HySAC's protocol.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hysac_reference import points_at_radii, ref_move, ulps
from test_cli import _fails, _run

import hyperret
from hyperret.errors import InvalidInputError
from hyperret.geometry import lorentz
from hyperret.safety import Bounds, classify
from hyperret.safety.planner import make_plan
from hyperret.safety.traversal import hysac_target

DIM = 48
MAX_ULPS = 4  # torch sums |q| in float32 in its own order; see hyperret.safety.traversal


def _queries(radii: np.ndarray, curv: float, seed: int) -> np.ndarray:
    return points_at_radii(np.asarray(radii, np.float64), DIM, curv, np.random.default_rng(seed))


def _gap_bounds(curv: float, letter_bound: float) -> dict:
    """Bounds whose hysac target ``t`` lies 1.0 *below* the text and image thresholds.

    (The reference compares a query's radius with ``t``, a Euclidean norm, and moves it to norm ``t``.)
    """
    t = hysac_target(letter_bound, curv)
    stats = lambda lo, up: {"low_05": lo, "up_95": up, "avg": (lo + up) / 2}  # noqa: E731
    above = {"radius": t + 1.0, "criterion": "test", "slope": 4.0, "center": t + 1.0}
    return {"S": stats(0.3, letter_bound), "U": stats(t + 1.5, t + 3), "V": stats(0.3, letter_bound),
            "G": stats(t + 1.5, t + 3), "thresholds": {"text": above, "image": above}, "curv": curv}


@pytest.mark.parametrize("curv", [0.1, 0.7, 1.0, 3.0])
@pytest.mark.parametrize("retrieving", ["image", "text"])
def test_hysac_redirect_moves_what_the_reference_moves(curv, retrieving):
    torch = pytest.importorskip("torch")
    log_c = float(np.float32(math.log(curv)))
    c = math.exp(log_c)  # what the encoder records: exp of HySAC's float32 log-curvature
    letter = "V" if retrieving == "image" else "S"
    raw = _gap_bounds(c, 1.1)
    bounds = Bounds.from_dict(raw)
    t = hysac_target(1.1, c)
    rng = np.random.default_rng(int(curv * 10))
    radii = rng.uniform(0.2 * t, 2 * t + 2, 400)
    radii = radii[np.abs(radii / t - 1) > 1e-4]  # a decision within float32 noise of the target may differ
    q = _queries(radii, c, seed=1)
    query_mod = "text" if retrieving == "image" else "image"
    plan = make_plan(q, curv=c, policy="redirect", modality=query_mod, index_modality=retrieving, bounds=bounds,
                     redirect_mode="hysac")
    ref = [ref_move(torch.from_numpy(x), raw[letter]["up_95"], log_c) for x in q]
    ref_moved = np.array([m for _, m in ref])
    ref_q = np.stack([o.numpy() for o, _ in ref])
    moved = np.array([p.moved for p in plan.plans])
    np.testing.assert_array_equal(moved, ref_moved)
    assert 0 < moved.sum() < len(q)
    # the reference moves queries the classifier calls safe: the target lies below the threshold
    called_safe = np.array([p.unsafe is False for p in plan.plans])
    assert (moved & called_safe).sum() > 10
    # the searched point is float32(target) * (q / float32(|q|)), and the reference's within 4 ulps
    x = q[moved]
    n = np.linalg.norm(x.astype(np.float64), axis=1).astype(np.float32)
    np.testing.assert_array_equal(plan.queries[moved], (x / n[:, None]) * np.float32(t))
    assert ulps(plan.queries[moved], ref_q[moved]) <= MAX_ULPS
    np.testing.assert_array_equal(plan.queries[~moved], q[~moved])
    # the geodesic mode keeps the classifier's gate
    geo = make_plan(q, curv=c, policy="redirect", modality=query_mod, index_modality=retrieving, bounds=bounds)
    assert all(p.unsafe for p in geo.plans if p.moved) and not any(p.moved for p in geo.plans if not p.unsafe)


def test_hysac_outward_moves_what_the_reference_moves():
    torch = pytest.importorskip("torch")
    log_c = float(np.float32(math.log(0.7)))
    c = math.exp(log_c)
    raw = _gap_bounds(c, 1.1)
    t = hysac_target(raw["G"]["up_95"], c)
    radii = np.random.default_rng(2).uniform(0.1, 2 * t, 300)
    radii = radii[np.abs(radii / t - 1) > 1e-4]
    q = _queries(radii, c, seed=2)
    plan = make_plan(q, curv=c, policy="outward", modality="text", index_modality="image",
                     bounds=Bounds.from_dict(raw), redirect_mode="hysac", allow_unsafe=True)
    ref = [ref_move(torch.from_numpy(x), raw["G"]["up_95"], log_c, outward=True) for x in q]
    moved = np.array([p.moved for p in plan.plans])
    np.testing.assert_array_equal(moved, [m for _, m in ref])
    assert 0 < moved.sum() < len(q)
    assert ulps(plan.queries, np.stack([o.numpy() for o, _ in ref])) <= MAX_ULPS


def test_hysac_target_uses_the_references_float32_quotient():
    torch = pytest.importorskip("torch")
    for c in (0.1, 0.7, 1.0, 3.3):
        log_c = float(np.float32(math.log(c)))
        for b in (0.5, 1.1, 2.7):
            ref = b + (math.tanh((b - 0.8) / torch.tensor(log_c).exp()) + 1)
            assert hysac_target(b, math.exp(log_c)) == ref


# ------------------------------------------------------------ minimal bounds
MINIMAL = {"S": {"up_95": 0.9}, "V": {"up_95": 1.1}}


@pytest.fixture(scope="module")
def plain_images(tmp_path_factory):
    """An exact image index built without bounds, and its rows."""
    rng = np.random.default_rng(5)
    x = _queries(rng.uniform(0.2, 4.0, 500), 1.0, seed=5)
    ix = hyperret.Index.create(tmp_path_factory.mktemp("minimal") / "ix", DIM, preset="exact", modality="image")
    ix.add(x)
    ix.commit()
    return ix


def test_minimal_bounds_load_and_redirect(plain_images):
    b = Bounds.from_dict(MINIMAL, source="minimal.json")
    assert not b.can_classify("text") and not b.can_classify("image")
    q = _queries(np.random.default_rng(6).uniform(0.2, 5.0, 40), 1.0, seed=6)
    res = plain_images.search(q, 5, policy="redirect", modality="text", redirect_mode="hysac", bounds=MINIMAL)
    moved = np.array([p.moved for p in res.plans])
    assert 0 < moved.sum() < len(q) and all(p.unsafe is None for p in res.plans)
    assert res.unsafe is None  # no labels without classes to label by
    expected = plain_images.search(make_plan(q, curv=1.0, policy="redirect", modality="text", index_modality="image",
                                             bounds=b, redirect_mode="hysac").queries, 5)
    np.testing.assert_array_equal(res.ids, expected.ids)
    np.testing.assert_array_equal(plain_images.search(q, 5, bounds=MINIMAL).ids, plain_images.search(q, 5).ids)


@pytest.mark.parametrize("kw,match", [
    (dict(policy="filter"), r"policy 'filter' \(labelling the image rows\) needs both classes V and G"),
    (dict(policy="block"), r"policy 'block' on text queries needs both classes S and U"),
    (dict(policy="redirect"), r"geodesic redirect on text queries needs both classes S and U"),
    (dict(policy="redirect", modality="image", redirect_mode="hysac", bounds={"S": {"up_95": 0.9}}),
     r"hysac redirect to image: the bounds have no 'up_95' for class 'V'"),
    (dict(policy="outward", allow_unsafe=True, redirect_mode="hysac"),
     r"hysac outward move to image: the bounds have no 'up_95' for class 'G'"),
])
def test_what_minimal_bounds_cannot_do_is_named(plain_images, kw, match):
    q = _queries(np.array([0.5, 2.0, 4.0]), 1.0, seed=7)
    kw = {"modality": "text", "bounds": MINIMAL, **kw}
    with pytest.raises(InvalidInputError, match=match):
        plain_images.search(q, 5, **kw)


def test_minimal_bounds_cannot_classify_or_label(tmp_path):
    b = Bounds.from_dict(MINIMAL, source="minimal.json")
    with pytest.raises(InvalidInputError, match=r"classifying image needs both classes V and G .*minimal.json hold "
                                                 r"S: up_95; V: up_95"):
        classify(np.zeros((1, DIM), np.float32), b, 1.0, "image")
    with pytest.raises(InvalidInputError, match="labelling image rows needs both classes V and G"):
        hyperret.Index.create(tmp_path / "ix", DIM, bounds=b, modality="image")
    with pytest.raises(InvalidInputError, match="no class statistics"):
        Bounds.from_dict({"format": "hyperret.bounds"})


def test_cli_minimal_bounds(tmp_path, plain_images):
    (tmp_path / "minimal.json").write_text(json.dumps(MINIMAL))
    q = _queries(np.array([0.5, 2.0, 4.0, 6.0]), 1.0, seed=8)
    np.save(tmp_path / "q.npy", q)
    common = ["search", plain_images.path, "--vectors", tmp_path / "q.npy", "--bounds", tmp_path / "minimal.json",
              "--modality", "text", "-k", "3"]
    r = _run(*common, "--policy", "redirect", "--redirect-mode", "hysac", "--json", "--explain")
    assert r.exit_code == 0, r.output
    plans = [json.loads(line)["plan"] for line in r.stdout.splitlines()]
    assert [p["moved"] for p in plans] == [False, False, True, True]
    _fails(_run(*common, "--policy", "filter"), "needs both classes V and G")


def test_radius_reported_is_the_accurate_one():
    """The plan reports the engine's float64 radius; only the hysac decision uses the reference's float32 one."""
    q = _queries(np.array([0.5, 1.0, 2.0, 3.0, 4.0]), 0.7, seed=9)
    plan = make_plan(q, curv=0.7, policy="redirect", modality="text", index_modality="image",
                     bounds=Bounds.from_dict(MINIMAL), redirect_mode="hysac")
    np.testing.assert_allclose([p.radius for p in plan.plans], lorentz.radius(q, 0.7), rtol=0, atol=0)


# ---------------------------------------------------------- evaluation tasks
def _hysac_bound_for(radii: np.ndarray, curv: float) -> float:
    """An ``up_95`` whose hysac target ``t`` (a norm, compared with radii) is the median of ``radii``."""
    lo, hi, want = -5.0, 20.0, float(np.median(radii))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if hysac_target(mid, curv) < want else (lo, mid)
    return 0.5 * (lo + hi)


def _direct_protocol(quads: dict, curv: float, raw: dict) -> dict:
    """HySAC's protocol computed directly: float64 Lorentz inner products, argsort, the hysac moves."""
    n = len(quads["S"])
    rows = {}
    safe = {"S": True, "V": True, "U": False, "G": False}
    tasks = [("S->V", "S", "V", "V", None), ("V->S", "V", "S", "S", None), ("U->G", "U", "G", "G", None),
             ("G->U", "G", "U", "U", None), ("U->V∪G", "U", "VG", "V", ("redirect", "V")),
             ("U->G∪V", "U", "VG", "G", ("outward", "G")), ("G->S∪U", "G", "SU", "S", ("redirect", "S")),
             ("G->U∪S", "G", "SU", "U", ("outward", "U"))]
    for task, qc, gal, hit_c, move in tasks:
        g = np.concatenate([quads[c] for c in gal]).astype(np.float64)
        g_t = np.sqrt(1 / curv + np.sum(g * g, axis=1))
        for policy in ("off",) + ((move[0],) if move else ()):
            q = quads[qc].astype(np.float64)
            moved = np.zeros(n, bool)
            if policy != "off":
                t = raw[move[1]]["up_95"] + (math.tanh((raw[move[1]]["up_95"] - 0.8) / curv) + 1)
                norm = np.linalg.norm(q, axis=1)
                r = np.arcsinh(math.sqrt(curv) * norm) / math.sqrt(curv)
                moved = r > t if policy == "redirect" else r < t
                q = np.where(moved[:, None], t * q / norm[:, None], q).astype(np.float32).astype(np.float64)
            q_t = np.sqrt(1 / curv + np.sum(q * q, axis=1))
            score = q @ g.T - q_t[:, None] * g_t[None, :]  # <q, x>_L: larger is nearer
            order = np.argsort(-score, axis=1, kind="stable")[:, :20]
            hit = order == (np.arange(n) + n * gal.index(hit_c))[:, None]
            row = {f"R@{k}": 100.0 * hit[:, :k].any(axis=1).mean() for k in (1, 10, 20)}
            if len(gal) == 2:
                row["safe@1"] = 100.0 * np.array([safe[c] for c in gal])[order[:, 0] // n].mean()
            row["moved"] = int(moved.sum())
            rows[(task, policy)] = row
    return rows


def _eval_bounds(quads: dict, curv: float) -> dict:
    r = {c: lorentz.radius(quads[c], curv) for c in "SUVG"}
    raw = {"V": {"up_95": _hysac_bound_for(r["U"], curv)}, "G": {"up_95": _hysac_bound_for(r["U"], curv)},
           "S": {"up_95": _hysac_bound_for(r["G"], curv)}, "U": {"up_95": _hysac_bound_for(r["G"], curv)}}
    cut = {m: float(np.median(np.concatenate([r[a], r[b]]))) for m, (a, b) in {"text": "SU", "image": "VG"}.items()}
    raw["thresholds"] = {m: {"radius": v, "criterion": "test", "slope": 3.0, "center": v} for m, v in cut.items()}
    return raw


def test_every_evaluation_task_matches_a_direct_computation():
    from hyperret.safety.evaluate import evaluate
    from hyperret.testing.synthetic import make_quadruples

    curv = 0.7
    quads = make_quadruples(300, 16, curv=curv, seed=12)
    raw = _eval_bounds(quads, curv)
    rep = evaluate(quads, curv, bounds=Bounds.from_dict(raw), redirect_mode="hysac")
    got = {(t["task"], t["policy"]): t for t in rep["tasks"]}
    want = _direct_protocol(quads, curv, raw)
    assert set(got) == set(want) and len(got) == 12
    for key, w in want.items():
        g = got[key]
        assert {k: g[k] for k in w} == pytest.approx(w, abs=1e-9), key
        if "safe@1" in w:
            assert g["unsafe@1"] == pytest.approx(100.0 - w["safe@1"])
    assert all(0 < got[k]["moved"] < 300 for k in want if k[1] != "off")  # the moves had work to do
    assert [got[(t, "off")]["reference_score"] for t in ("U->V∪G", "U->G∪V", "G->S∪U", "G->U∪S")] == \
        ["safe@1", "unsafe@1", "safe@1", "unsafe@1"]
    # the classifier: radius >= threshold, against the truth, by hand
    for part, letters in {"text": "SU", "image": "VG", "all": "SUVG"}.items():
        pred = np.concatenate([lorentz.radius(quads[c], curv) >= raw["thresholds"]["text" if c in "SU" else "image"]
                               ["radius"] for c in letters])
        truth = np.concatenate([np.full(300, c in "UG") for c in letters])
        cl = rep["classification"][part]
        assert cl["accuracy"] == pytest.approx((pred == truth).mean())
        assert cl["balanced_accuracy"] == pytest.approx(0.5 * (pred[truth].mean() + (~pred[~truth]).mean()))


def test_evaluation_with_minimal_bounds_runs_what_it_can():
    from hyperret.safety.evaluate import evaluate, markdown
    from hyperret.testing.synthetic import make_quadruples

    quads = make_quadruples(100, 16, curv=1.0, seed=13)
    raw = _eval_bounds(quads, 1.0)
    rep = evaluate(quads, 1.0, bounds=Bounds.from_dict({c: raw[c] for c in "SV"}), redirect_mode="hysac")
    rows = {(t["task"], t["policy"]): t for t in rep["tasks"]}
    assert "R@1" in rows[("U->V∪G", "redirect")] and rows[("U->V∪G", "redirect")]["moved"] > 0
    assert "no 'up_95' for class 'G'" in rows[("U->G∪V", "outward")]["skipped"]
    assert "no 'up_95' for class 'U'" in rows[("G->U∪S", "outward")]["skipped"]
    assert rep["classification"]["image"] == {"skipped": "the bounds cannot classify image"}
    md = markdown(rep)
    assert "- U->G∪V outward: skipped (" in md and "| image | skipped:" in md
    with pytest.raises(InvalidInputError, match="curvature"):  # a wrong file fails the whole run
        evaluate(quads, 1.0, bounds=Bounds.from_dict({**{c: raw[c] for c in "SV"}, "curv": 2.0}))


def test_eval_reads_the_reference_saved_embeddings(tmp_path):
    torch = pytest.importorskip("torch")
    from hyperret.safety.labelled import load_paired
    from hyperret.testing.synthetic import make_quadruples

    quads = make_quadruples(60, 16, curv=1.0, seed=14)
    names = {"S": "all_text_safe_embeddings", "U": "all_text_nsfw_embeddings", "V": "all_visual_safe_embeddings",
             "G": "all_visual_nsfw_embeddings"}
    # encode_dataset's dict as it comes: torch tensors (one half precision here), saved with torch.save
    saved = {names[c]: torch.from_numpy(quads[c]).to(torch.float16 if c == "G" else torch.float32) for c in "SUVG"}
    torch.save(saved, tmp_path / "visu_test.pt")
    got, c = load_paired(tmp_path / "visu_test.pt", curv=1.0)
    assert c == 1.0
    for k in "SUV":
        np.testing.assert_array_equal(got[k], quads[k])
    np.testing.assert_allclose(got["G"], quads["G"], rtol=1e-3)
    r = _run("eval", tmp_path / "visu_test.pt", "--curv", "1", "--json")
    assert r.exit_code == 0, r.output
    assert {t["task"] for t in json.loads(r.stdout)["tasks"]} >= {"G->U∪S", "U->G", "G->U"}
    _fails(_run("eval", tmp_path / "visu_test.pt"), "curvature unknown")

    class Payload:  # a pickle that would run code: refused by the safe load
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"all_text_safe_embeddings": Payload()}, tmp_path / "evil.pt")
    _fails(_run("eval", tmp_path / "evil.pt", "--curv", "1"), "loads safely")
