"""Union-find (disjoint sets) over global row numbers, in Numba.

The root of every set is its smallest row: deterministic whatever the order in
which pairs arrive, with path halving for near-constant finds.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def new_forest(n: int) -> np.ndarray:
    """``n`` singleton sets -> parent array ``(n,)`` int64."""
    return np.arange(n, dtype=np.int64)


@njit(cache=True, nogil=True)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, nogil=True)
def union_pairs(parent, a, b):
    """Unite the sets of ``a[i]`` and ``b[i]`` for every ``i`` (``(p,)`` int64 each); returns the merges made."""
    merged = 0
    for k in range(a.shape[0]):
        ra = _find(parent, a[k])
        rb = _find(parent, b[k])
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
            merged += 1
    return merged


@njit(cache=True, nogil=True)
def roots(parent):
    """The root (smallest row) of every row's set -> ``(n,)`` int64 (compresses every path)."""
    out = np.empty(parent.shape[0], dtype=np.int64)
    for i in range(parent.shape[0]):
        r = _find(parent, i)
        parent[i] = r
        out[i] = r
    return out
