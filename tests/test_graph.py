"""The Numba HNSW walk against a brute-force Lorentz inner-product ranking."""

from __future__ import annotations

import faiss
import numpy as np

from hyperret.geometry import lorentz
from hyperret.search import graph
from hyperret.search.proxies import PROXIES
from hyperret.storage.shardset import ShardSet


def _setup(n=3000, dim=12, curv=0.8, seed=0):
    rng = np.random.default_rng(seed)
    x = lorentz.exp_map0(rng.standard_normal((n, dim)) * 1.2, curv).astype(np.float32)
    q = lorentz.exp_map0(rng.standard_normal((9, dim)) * 1.2, curv).astype(np.float32)
    h = faiss.IndexHNSWFlat(dim, 16)
    h.add(PROXIES["poincare"].database(x, curv, {}))
    return x, q, h, curv


def _brute(q, x, curv, k):
    score = -lorentz.inner(q[:, None, :], x[None, :, :], curv)  # smaller = nearer
    return np.argsort(score, axis=1, kind="stable")[:, :k]


def test_exhaustive_beam_equals_brute_force():
    """With ef >= n the walk visits the whole (connected) graph: the exact top k."""
    x, q, h, curv = _setup()
    shards = ShardSet([x[:1000], x[1000:]], x.shape[1])  # two shards: row offsets matter
    got = graph.search(graph.Graph.of(h), q, shards, curv, kc=10, ef=len(x))
    np.testing.assert_array_equal(got, _brute(q, x, curv, 10))


def test_small_ef_finds_most_and_pads():
    x, q, h, curv = _setup(seed=1)
    g = graph.Graph.of(h)
    got = graph.search(g, q, ShardSet([x], x.shape[1]), curv, kc=10, ef=64)
    want = _brute(q, x, curv, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]) >= 0.9
    # serial (1 query) and parallel (9 queries) paths agree
    np.testing.assert_array_equal(graph.search(g, q[:1], ShardSet([x], x.shape[1]), curv, 10, 64), got[:1])
    tiny = x[:5]
    ht = faiss.IndexHNSWFlat(x.shape[1], 4)
    ht.add(PROXIES["poincare"].database(tiny, curv, {}))
    out = graph.search(graph.Graph.of(ht), q[:2], ShardSet([tiny], x.shape[1]), curv, kc=8, ef=16)
    assert (out[:, 5:] == -1).all() and sorted(out[0, :5].tolist()) == [0, 1, 2, 3, 4]
