"""The Numba rerank kernel against a pure-NumPy reference: identical ids, same distances."""

from __future__ import annotations

import numpy as np
import pytest

from hyperret.geometry import lorentz
from hyperret.kernels.parallel import PARALLEL_MIN_QUERIES
from hyperret.search.rerank import rerank
from hyperret.storage.shardset import ShardSet


def reference_rerank(q, cand, data, curv, k):
    """Pure NumPy: dedupe valid candidates, stable distance, sort by (distance, row)."""
    m = len(q)
    rows = np.full((m, k), -1, np.int64)
    dist = np.full((m, k), np.inf)
    for i in range(m):
        c = np.unique(cand[i][(cand[i] >= 0) & (cand[i] < len(data))])
        d = lorentz.distance(q[i][None, :], data[c], curv)
        o = np.lexsort((c, d))[:k]
        rows[i, : len(o)] = c[o]
        dist[i, : len(o)] = d[o]
    return rows, dist


@pytest.mark.parametrize("m", [1, PARALLEL_MIN_QUERIES + 3])
@pytest.mark.parametrize("curv", [0.1, 1.0, 10.0])
def test_matches_numpy_reference(m, curv):
    rng = np.random.default_rng(int(curv * 10) + m)
    parts = [lorentz.exp_map0(rng.standard_normal((n, 24)) * 0.8, curv).astype(np.float32) for n in (300, 1, 0, 200)]
    data = np.concatenate(parts)
    shards = ShardSet(parts, 24)
    q = lorentz.exp_map0(rng.standard_normal((m, 24)) * 0.8, curv).astype(np.float32)
    cand = rng.integers(-1, len(data) + 5, (m, 80))  # -1, out of range and repeated rows included
    rows, dist = rerank(q, cand, shards, curv, 10)
    ref_rows, ref_dist = reference_rerank(q, cand, data, curv, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12, atol=1e-15)


def test_far_near_duplicates_keep_their_order():
    """Radius 6, gaps of 1e-5: float32 acosh would call them all 0; the kernel ranks them."""
    curv = 1.0
    rng = np.random.default_rng(7)
    base = lorentz.point_at_radius(rng.standard_normal(16), 6.0, curv)
    v = lorentz.log_map0(base, curv)
    steps = np.array([3e-3, 1e-3, 5e-3, 2e-3])
    dirs = rng.standard_normal((4, 16))
    pts = lorentz.exp_map0(v + steps[:, None] * dirs / np.linalg.norm(dirs, axis=1, keepdims=True), curv)
    data = pts.astype(np.float32)
    rows, dist = rerank(base[None].astype(np.float32), np.array([[0, 1, 2, 3]]), ShardSet([data], 16), curv, 4)
    ref = lorentz.distance(base.astype(np.float32)[None], data, curv)
    np.testing.assert_array_equal(rows[0], np.argsort(ref))
    assert len(set(dist[0].tolist())) == 4 and dist[0].min() > 0


def test_fewer_candidates_than_k_are_padded():
    data = np.zeros((3, 4), np.float32)
    rows, dist = rerank(np.zeros((1, 4), np.float32), np.array([[2, -1, 2]]), ShardSet([data], 4), 1.0, 5)
    assert rows.tolist() == [[2, -1, -1, -1, -1]]
    assert dist[0, 0] == 0 and np.isinf(dist[0, 1:]).all()


def test_empty_batch_and_dimension_check():
    s = ShardSet([np.zeros((3, 4), np.float32)], 4)
    rows, dist = rerank(np.zeros((0, 4), np.float32), np.zeros((0, 5), np.int64), s, 1.0, 3)
    assert rows.shape == (0, 3) and dist.shape == (0, 3)
    with pytest.raises(ValueError):
        rerank(np.zeros((1, 5), np.float32), np.zeros((1, 2), np.int64), s, 1.0, 1)


def test_distance_to_itself_is_exactly_zero():
    rng = np.random.default_rng(11)
    data = lorentz.exp_map0(rng.standard_normal((50, 32)) * 2, 1.0).astype(np.float32)
    rows, dist = rerank(data[:7], np.tile(np.arange(50), (7, 1)), ShardSet([data], 32), 1.0, 1)
    assert rows[:, 0].tolist() == list(range(7)) and (dist[:, 0] == 0).all()
