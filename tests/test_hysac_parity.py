"""Parity with HySAC's reference code: the ``hysac`` redirect and minimal bounds files.

The reference functions are transcribed from HySAC's public code (``hysac/lorentz.py``'s
``pairwise_dist``, ``HySAC.traverse_to_safe_image`` / ``_text`` and the outward branch of
``recall_div_traversal``), in torch and float32 as they run there.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import hyperret
from hyperret import lorentz
from hyperret.errors import InvalidInputError
from hyperret.planner import make_plan
from hyperret.safety import Bounds, classify
from hyperret.safety.traversal import hysac_target

from test_cli import _fails, _run

DIM = 48
MAX_ULPS = 4  # torch sums |q| in float32 in its own order; see hyperret.safety.traversal


# ------------------------------------------------ the reference, transcribed
def ref_pairwise_dist(x, y, curv, eps=1e-8):  # type: ignore[no-untyped-def]
    import torch

    x_time = torch.sqrt(1 / curv + torch.sum(x**2, dim=-1, keepdim=True))
    y_time = torch.sqrt(1 / curv + torch.sum(y**2, dim=-1, keepdim=True))
    xyl = x @ y.mT - x_time @ y_time.mT if x.dim() > 1 else x @ y - x_time @ y_time
    return torch.acosh(torch.clamp(-curv * xyl, min=1 + eps)) / curv**0.5


def ref_move(emb, bound, log_curv, alpha=0.8, outward=False):  # type: ignore[no-untyped-def]
    """``traverse_to_safe_*`` (inward) or the evaluation's ``lower_bound`` branch (outward), one query."""
    import torch

    curv = torch.nn.Parameter(torch.tensor(log_curv))  # HySAC keeps log c as a float32 parameter
    with torch.inference_mode():
        root_feat = torch.zeros_like(emb)
        distance = ref_pairwise_dist(root_feat, emb, curv=curv.exp())
        bound = bound + (math.tanh((bound - alpha) / curv.exp()) + 1)
        if (distance < bound) if outward else (distance > bound):
            direction = emb - root_feat
            n_direction = direction / torch.norm(direction, dim=-1)
            return root_feat + bound * n_direction, True
        return emb, False


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    ia, ib = a.astype(np.float32).view(np.int32).astype(np.int64), b.astype(np.float32).view(np.int32).astype(np.int64)
    return int(np.abs(ia - ib).max()) if ia.size else 0


def _queries(n: int, radii: np.ndarray, curv: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n, DIM))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (d * (np.sinh(math.sqrt(curv) * radii) / math.sqrt(curv))[:, None]).astype(np.float32)


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
    q = _queries(len(radii), radii, c, seed=1)
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
    assert _ulps(plan.queries[moved], ref_q[moved]) <= MAX_ULPS
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
    q = _queries(len(radii), radii, c, seed=2)
    plan = make_plan(q, curv=c, policy="outward", modality="text", index_modality="image",
                     bounds=Bounds.from_dict(raw), redirect_mode="hysac", allow_unsafe=True)
    ref = [ref_move(torch.from_numpy(x), raw["G"]["up_95"], log_c, outward=True) for x in q]
    moved = np.array([p.moved for p in plan.plans])
    np.testing.assert_array_equal(moved, [m for _, m in ref])
    assert 0 < moved.sum() < len(q)
    assert _ulps(plan.queries, np.stack([o.numpy() for o, _ in ref])) <= MAX_ULPS


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
    x = _queries(500, rng.uniform(0.2, 4.0, 500), 1.0, seed=5)
    ix = hyperret.Index.create(tmp_path_factory.mktemp("minimal") / "ix", DIM, preset="exact", modality="image")
    ix.add(x)
    ix.commit()
    return ix


def test_minimal_bounds_load_and_redirect(plain_images):
    b = Bounds.from_dict(MINIMAL, source="minimal.json")
    assert not b.can_classify("text") and not b.can_classify("image")
    q = _queries(40, np.random.default_rng(6).uniform(0.2, 5.0, 40), 1.0, seed=6)
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
    q = _queries(3, np.array([0.5, 2.0, 4.0]), 1.0, seed=7)
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
    q = _queries(4, np.array([0.5, 2.0, 4.0, 6.0]), 1.0, seed=8)
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
    q = _queries(5, np.array([0.5, 1.0, 2.0, 3.0, 4.0]), 0.7, seed=9)
    plan = make_plan(q, curv=0.7, policy="redirect", modality="text", index_modality="image",
                     bounds=Bounds.from_dict(MINIMAL), redirect_mode="hysac")
    np.testing.assert_allclose([p.radius for p in plan.plans], lorentz.radius(q, 0.7), rtol=0, atol=0)
