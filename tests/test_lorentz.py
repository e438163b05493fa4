"""Geometry against a 50-digit mpmath reference, and the identities MERU never tested."""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

from hyperret.geometry import lorentz as L

mp.mp.dps = 50


def _ref_distance(x: np.ndarray, y: np.ndarray, c: float) -> float:
    xs = [mp.mpf(float(v)) for v in x]
    ys = [mp.mpf(float(v)) for v in y]
    c = mp.mpf(c)
    xt = mp.sqrt(1 / c + mp.fsum(v * v for v in xs))
    yt = mp.sqrt(1 / c + mp.fsum(v * v for v in ys))
    inner = mp.fsum(a * b for a, b in zip(xs, ys)) - xt * yt
    return float(mp.acosh(-c * inner) / mp.sqrt(c))


def _ref_radius(x: np.ndarray, c: float) -> float:
    c = mp.mpf(c)
    n = mp.sqrt(mp.fsum(mp.mpf(float(v)) ** 2 for v in x))
    return float(mp.asinh(mp.sqrt(c) * n) / mp.sqrt(c))


def _pair(rng, dim: int, r: float, sep: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """A point at radius r and one about `sep` away from it (float32, as stored)."""
    u = rng.standard_normal(dim)
    x = L.point_at_radius(u, r, c)
    v = L.log_map0(x, c)
    step = rng.standard_normal(dim)
    y = L.exp_map0(v + sep * step / np.linalg.norm(step), c)
    return x.astype(np.float32), y.astype(np.float32)


CASES = [(c, r, s) for c in (0.1, 1.0, 10.0) for r in (0.0, 0.5, 2.0, 5.0, 10.0) for s in (1e-4, 1e-2, 1.0, 20.0)]


@pytest.mark.parametrize("c,r,sep", CASES)
def test_distance_matches_high_precision_reference(c, r, sep):
    rng = np.random.default_rng(hash((c, r, sep)) % 2**32)
    for _ in range(3):
        x, y = _pair(rng, 12, r, sep, c)
        ref = _ref_distance(x, y, c)
        got = float(L.distance(x, y, c))
        if ref == 0.0:
            assert got == 0.0
        else:
            assert abs(got - ref) / ref <= 1e-5, (got, ref)
        # symmetric, and pairwise agrees with element-wise
        assert float(L.distance(y, x, c)) == pytest.approx(got, rel=1e-12)
        assert L.pairwise_distance(x[None], y[None], c)[0, 0] == pytest.approx(got, rel=1e-12)


def test_textbook_acosh_fails_where_stable_form_does_not():
    """The reason for the stable form: float32 acosh sees no gap between near-duplicates."""
    c = 1.0
    rng = np.random.default_rng(0)
    x, y = _pair(rng, 12, 5.0, 1e-3, c)
    ref = _ref_distance(x, y, c)
    xt = np.float32(np.sqrt(1 / c + np.sum(x * x, dtype=np.float32)))
    yt = np.float32(np.sqrt(1 / c + np.sum(y * y, dtype=np.float32)))
    naive = np.arccosh(np.maximum(np.float32(-c) * (np.dot(x, y) - xt * yt), np.float32(1 + 1e-7)))
    assert abs(float(naive) - ref) / ref > 0.1
    assert abs(float(L.distance(x, y, c)) - ref) / ref < 1e-6


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_radius_and_maps(c):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((50, 8)) * rng.uniform(0, 3, (50, 1))
    x = L.exp_map0(v, c)
    np.testing.assert_allclose(L.log_map0(x, c), v, rtol=1e-9, atol=1e-12)
    # radius = |v| (the exp map at the origin preserves length) = distance to the origin
    np.testing.assert_allclose(L.radius(x, c), np.linalg.norm(v, axis=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(L.distance(x, np.zeros(8), c), L.radius(x, c), rtol=1e-9, atol=1e-12)
    for xi in x[:5].astype(np.float32):
        assert float(L.radius(xi, c)) == pytest.approx(_ref_radius(xi, c), rel=1e-6, abs=1e-12)
    # points sit on the hyperboloid <x, x>_L = -1/c (checked where the textbook form is well-conditioned)
    near = np.linalg.norm(v, axis=1) * np.sqrt(c) < 2
    np.testing.assert_allclose(L.inner(x[near], x[near], c), -1.0 / c, rtol=1e-9)


def test_point_at_radius_is_exact():
    rng = np.random.default_rng(2)
    for c in (0.1, 1.0, 10.0):
        x = rng.standard_normal((20, 6))
        r = rng.uniform(0.01, 4.0, 20)
        np.testing.assert_allclose(L.radius(L.point_at_radius(x, r, c), c), r, rtol=1e-12)
    assert np.all(L.point_at_radius(np.zeros(3), 1.0, 1.0) == 0)


def test_maps_keep_float32_and_zero():
    z = np.zeros((2, 4), np.float32)
    assert L.exp_map0(z, 1.0).dtype == np.float32
    assert np.all(L.exp_map0(z, 1.0) == 0) and np.all(L.log_map0(z, 1.0) == 0)
    assert float(L.distance(z[0], z[1], 1.0)) == 0.0


def test_metric_axioms():
    rng = np.random.default_rng(3)
    c = 0.7
    x = L.exp_map0(rng.standard_normal((30, 5)), c)
    d = L.pairwise_distance(x, x, c)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    np.testing.assert_allclose(d, d.T, rtol=1e-12)
    # triangle inequality over all triples
    assert np.all(d[:, None, :] <= d[:, :, None] + d[None, :, :].transpose(0, 2, 1) + 1e-9)


def test_inner_product_agrees_with_distance_when_well_conditioned():
    rng = np.random.default_rng(4)
    c = 2.0
    x = L.exp_map0(rng.standard_normal((10, 5)), c)
    y = L.exp_map0(rng.standard_normal((10, 5)), c)
    textbook = np.arccosh(-c * L.inner(x, y, c)) / np.sqrt(c)
    np.testing.assert_allclose(L.distance(x, y, c), textbook, rtol=1e-9)


def test_bad_curvature_is_rejected():
    with pytest.raises(ValueError):
        L.distance(np.zeros(2), np.zeros(2), 0.0)
    with pytest.raises(ValueError):
        L.radius(np.zeros(2), float("nan"))
