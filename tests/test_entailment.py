"""The Numba entailment-cone kernel against a pure-NumPy reference: same rows, same distances and angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyperret.errors import InvalidInputError
from hyperret.geometry import lorentz
from hyperret.kernels.parallel import PARALLEL_MIN_QUERIES
from hyperret.safety import traversal
from hyperret.safety.entailment import entails, nearest_entailing
from hyperret.storage.shardset import ShardSet

DIM = 8


def reference_nearest_entailing(points, cand, data, curv, min_radius=0.1):
    """Pure NumPy: per point, loop over the valid candidates, keep the nearest entailing one (lowest row on ties)."""
    s = len(points)
    rows = np.full(s, -1, np.int64)
    dist = np.full(s, np.inf)
    angle = np.full(s, np.nan)
    aperture = np.full(s, np.nan)
    for i in range(s):
        for g in cand[i]:
            if g < 0 or g >= len(data):
                continue
            y = data[g]
            ang = float(traversal.exterior_angle(y, points[i], curv))
            ap = float(traversal.half_aperture(y, curv, min_radius))
            if not ang <= ap:
                continue
            d = float(lorentz.distance(y, points[i], curv))
            if d < dist[i] or (d == dist[i] and g < rows[i]):
                rows[i], dist[i], angle[i], aperture[i] = g, d, ang, ap
    return rows, dist, angle, aperture


def plain_nearest(points, cand, data, curv):
    """Nearest valid candidate ignoring the cones (lowest row on ties), -1 if none."""
    out = np.full(len(points), -1, np.int64)
    for i in range(len(points)):
        c = np.unique(cand[i][(cand[i] >= 0) & (cand[i] < len(data))])
        if len(c):
            out[i] = c[np.lexsort((c, lorentz.distance(data[c], points[i], curv)))[0]]
    return out


def make_scene(curv, s, seed):
    """Captions (radius 0.3-1.5) in three shards, each with an outer sibling, and points scattered outward around them.

    Rows ``h + i`` (``h = 60``) lie near and beyond caption ``i``: often nearer a point than
    its caption, seldom containing it in their narrower cones.
    """
    rng = np.random.default_rng(seed)
    h = 60
    sc = math.sqrt(curv)
    unit = rng.standard_normal((h, DIM))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    r = rng.uniform(0.3, 1.5, h) / sc
    outer = unit + 0.05 * rng.standard_normal((h, DIM))
    data = np.concatenate([lorentz.point_at_radius(unit, r, curv),
                           lorentz.point_at_radius(outer, r + rng.uniform(0.3, 1.5, h) / sc, curv)]).astype(np.float32)
    pick = rng.integers(0, h, s)
    direction = unit[pick] + rng.standard_normal((s, DIM)) * rng.uniform(0.0, 0.1, (s, 1))
    points = lorentz.point_at_radius(direction, np.maximum(r[pick] + rng.uniform(-0.3, 1.8, s) / sc, 0.05), curv)
    # Candidates: the picked caption, its sibling, random rows, -1 pads and repeats.
    cand = np.concatenate([pick[:, None], pick[:, None] + h, rng.integers(-1, 2 * h, (s, 30)),
                           np.full((s, 2), -1), pick[:, None]], axis=1)
    shards = ShardSet([data[:50], data[50:51], data[51:]], DIM)
    return data, shards, points, cand


def assert_matches(got, ref):
    rows, dist, angle, aperture = got
    np.testing.assert_array_equal(rows, ref[0])
    np.testing.assert_array_equal(np.isinf(dist), rows < 0)
    for a, b in zip((dist, angle, aperture), ref[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, equal_nan=True)


@pytest.mark.parametrize("s", [3, PARALLEL_MIN_QUERIES + 37])
@pytest.mark.parametrize("curv", [1.0, 2.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_numpy_reference(s, curv, dtype):
    data, shards, points, cand = make_scene(curv, s, seed=int(curv * 10) + s)
    points = points.astype(dtype)
    got = nearest_entailing(points, cand, shards, curv)
    ref = reference_nearest_entailing(points, cand, data, curv)
    assert_matches(got, ref)
    assert got[0].dtype == np.int64 and all(a.dtype == np.float64 for a in got[1:])
    if s > PARALLEL_MIN_QUERIES:  # the scene exercises every branch
        rows = got[0]
        assert (rows >= 0).any() and (rows < 0).any()
        nearest = plain_nearest(points, cand, data, curv)
        assert ((rows >= 0) & (rows != nearest)).any()  # a nearer candidate's cone missed the point


@pytest.mark.parametrize("min_radius", [0.0, 0.3, 5.0])
def test_min_radius_widens_cones(min_radius):
    curv = 1.0
    data, shards, points, cand = make_scene(curv, 30, seed=11)
    got = nearest_entailing(points, cand, shards, curv, min_radius)
    assert_matches(got, reference_nearest_entailing(points, cand, data, curv, min_radius))
    if min_radius == 5.0:  # every cone is a half-space: aperture pi/2 exactly
        np.testing.assert_array_equal(got[3][got[0] >= 0], np.pi / 2)


def test_float32_points_equal_their_float64_values():
    _, shards, points, cand = make_scene(2.5, 20, seed=3)
    p32 = points.astype(np.float32)
    a = nearest_entailing(p32, cand, shards, 2.5)
    b = nearest_entailing(p32.astype(np.float64), cand, shards, 2.5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("curv", [1.0, 2.5])
def test_ray_outward_is_entailed_and_inward_is_not(curv):
    y = lorentz.point_at_radius(np.arange(1.0, DIM + 1.0), 0.8, curv).astype(np.float32)
    other = lorentz.point_at_radius(-np.arange(1.0, DIM + 1.0), 0.8, curv).astype(np.float32)
    data = np.stack([other, y])
    shards = ShardSet([data[:1], data[1:]], DIM)
    y64 = y.astype(np.float64)
    out, inward = 2.0 * y64, 0.5 * y64  # same direction, radius up / down
    rows, dist, angle, aperture = nearest_entailing(np.stack([out, inward]), np.array([[0, 1], [1, 0]]), shards, curv)
    assert rows.tolist() == [1, -1]
    assert 0.0 <= angle[0] < 1e-6 and aperture[0] > 0.1
    expect = lorentz.radius(out, curv) - lorentz.radius(y64, curv)  # along the ray: difference of radii
    assert dist[0] == pytest.approx(expect, rel=1e-9)
    assert np.isinf(dist[1]) and np.isnan(angle[1]) and np.isnan(aperture[1])
    assert traversal.exterior_angle(y, inward, curv) == pytest.approx(np.pi)
    # Even a half-space cone (aperture pi/2) does not contain a point toward the origin.
    assert nearest_entailing(inward[None], np.array([[1]]), shards, curv, min_radius=100.0)[0][0] == -1
    assert entails(y, out, curv) and not entails(y, inward, curv, 100.0)


def test_nearer_caption_outside_the_cone_is_skipped():
    curv = 1.0
    base = np.zeros(DIM)
    base[0] = 1.0
    far = lorentz.point_at_radius(base, 0.5, curv)  # on the point's ray: entails it
    side = base.copy()
    side[1] = 0.3
    near = lorentz.point_at_radius(side, 1.6, curv)  # nearer the point, but off to the side
    p = lorentz.point_at_radius(base, 1.6, curv)
    data = np.stack([near, far]).astype(np.float32)
    shards = ShardSet([data], DIM)
    d = lorentz.distance(data, p, curv)
    assert d[0] < d[1] and not entails(data[0], p, curv) and entails(data[1], p, curv)
    rows, dist, _, _ = nearest_entailing(p[None], np.array([[0, 1]]), shards, curv)
    assert rows[0] == 1 and dist[0] == pytest.approx(d[1], rel=1e-9)


def test_caption_at_the_origin_entails_everything():
    data, _, points, _ = make_scene(2.5, 5, seed=4)
    data[3] = 0.0
    shards = ShardSet([data[:2], data[2:]], DIM)
    rows, dist, angle, aperture = nearest_entailing(points, np.full((5, 1), 3), shards, 2.5)
    assert (rows == 3).all() and (angle == 0.0).all() and (aperture == np.pi / 2).all()
    np.testing.assert_allclose(dist, lorentz.radius(points, 2.5), rtol=1e-9)


def test_no_valid_candidate():
    _, shards, points, _ = make_scene(1.0, 6, seed=5)
    for cand in (np.full((6, 4), -1), np.array([[-1, 120, 10**9, -7]] * 6), np.zeros((6, 0), np.int64)):
        rows, dist, angle, aperture = nearest_entailing(points, cand, shards, 1.0)
        assert (rows == -1).all() and np.isinf(dist).all()
        assert np.isnan(angle).all() and np.isnan(aperture).all()
    rows, *_ = nearest_entailing(np.zeros((0, DIM)), np.zeros((0, 3), np.int64), shards, 1.0)
    assert rows.shape == (0,)


def test_duplicates_and_ties_take_the_lowest_row():
    curv = 2.5
    data, _, _, _ = make_scene(curv, 1, seed=9)
    p = lorentz.point_at_radius(np.arange(1.0, DIM + 1.0), 1.5, curv)
    twin = data.copy()
    twin[7] = lorentz.point_at_radius(np.arange(1.0, DIM + 1.0) + 0.05 * np.eye(DIM)[0], 0.6, curv)
    twin[100] = twin[7]  # the same caption again, in the other shard
    assert entails(twin[7], p, curv) and not entails(twin[3], p, curv)
    shards = ShardSet([twin[:60], twin[60:]], DIM)
    cand = np.array([[100, 7, 100, -1, 100], [100, 100, -1, 100, 100], [100, 3, 7, 3, 100]])
    got = nearest_entailing(np.stack([p] * 3), cand, shards, curv)
    rows, dist, angle, _ = got
    assert rows.tolist() == [7, 100, 7]
    assert dist[0] == dist[1] == dist[2] and angle[0] == angle[1]
    assert_matches(got, reference_nearest_entailing(np.stack([p] * 3), cand, twin, curv))


def test_entails_matches_kernel_one_candidate_at_a_time():
    curv = 1.0
    data, shards, points, cand = make_scene(curv, 40, seed=21)
    g = np.where(np.arange(40) % 2 == 0, cand[:, 0], cand[:, 1])  # each point's caption or its sibling
    rows, *_ = nearest_entailing(points, g[:, None], shards, curv)
    e = entails(data[g], points, curv)
    assert e.any() and not e.all()
    np.testing.assert_array_equal(rows >= 0, e)
    np.testing.assert_array_equal(rows[e], g[e])


def test_bad_input_raises():
    _, shards, points, cand = make_scene(1.0, 4, seed=1)
    with pytest.raises(InvalidInputError):
        nearest_entailing(points[:, :-1], cand, shards, 1.0)  # wrong dimension
    with pytest.raises(InvalidInputError):
        nearest_entailing(points[0], cand, shards, 1.0)  # not (s, D)
    with pytest.raises(InvalidInputError):
        nearest_entailing(points, cand[:3], shards, 1.0)  # one row list per point
    with pytest.raises(InvalidInputError):
        nearest_entailing(points, cand.astype(np.float64), shards, 1.0)
    with pytest.raises(InvalidInputError):
        nearest_entailing(points, cand, shards, 0.0)
    with pytest.raises(InvalidInputError):
        nearest_entailing(points, cand, shards, 1.0, min_radius=-0.1)
