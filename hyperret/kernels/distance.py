"""The exact Lorentz distance of one float32 row to one query, as Numba kernels.

Every stage that decides by distance (rerank, graph navigation, dedup, entailment)
calls these, so one formula holds throughout: the cancellation-free geodesic
distance of :func:`hyperret.geometry.lorentz.distance`, computed in float64 from
float32 space components. Curvature ``curv > 0``; ``inv_c = 1 / curv``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .rows import FASTMATH, sqnorm


@njit(cache=True, fastmath=FASTMATH)
def prepare_query(q, inv_c):
    """Float64 norm ``rq`` and time component ``tq`` of one query ``q: (D,)``."""
    rq2 = sqnorm(q)
    return math.sqrt(rq2), math.sqrt(inv_c + rq2)


@njit(cache=True, fastmath=FASTMATH)  # no Numba inlining: it would compile the loop without fastmath
def gap_row(x, q, rq, tq, inv_c):
    """``(m, |x|^2, |x|^2 - |q|^2, x_t)`` of row ``x: (D,)`` float32 and query ``q`` (norm ``rq``, time ``tq``).

    ``m = <x - q, x - q>_L >= 0``, the formula of :func:`hyperret.geometry.lorentz.distance`:
    non-negative radial and angular terms. The direction difference ``x / rx - q / rq``
    is computed as ``(x - q) / r_max - z (rx^2 - rq^2) / (rx rq (rx + rq))`` with ``z``
    the point of the smaller norm: exactly 0 for ``x == q``, symmetric, and free of
    cancellation. The other three values serve the entailment-cone test.
    """
    d = x.shape[0]
    rx2 = sqnorm(x)
    num = 0.0  # rx^2 - rq^2, summed per component
    for j in range(d):
        xj = np.float64(x[j])
        qj = np.float64(q[j])
        num += (xj - qj) * (xj + qj)
    rx = math.sqrt(rx2)
    tx = math.sqrt(inv_c + rx2)
    p = rx + rq
    t = tx + tq
    drho = num / p if p > 0.0 else 0.0
    ex = inv_c / (tx + rx)
    eq = inv_c / (tq + rq)
    m = drho * drho * (ex + eq) * (t + p) / (t * t)
    den = rx * rq * p
    if rx > 0.0 and rq > 0.0 and den > 0.0:  # den: also 0 when the product underflows
        corr = num / den
        s = 0.0
        if rx >= rq:  # divide by the larger norm, correct with the smaller point: no cancellation
            inv = 1.0 / rx
            for j in range(d):
                qj = np.float64(q[j])
                du = (np.float64(x[j]) - qj) * inv - qj * corr
                s += du * du
        else:
            inv = 1.0 / rq
            for j in range(d):
                xj = np.float64(x[j])
                du = (xj - np.float64(q[j])) * inv - xj * corr
                s += du * du
        m += rx * rq * s
    return m, rx2, num, tx


@njit(cache=True, fastmath=FASTMATH)  # no Numba inlining: it would compile the loop without fastmath
def distance_row(x, q, rq, tq, inv_c, curv):
    """Stable geodesic distance (curvature ``-curv``) of row ``x: (D,)`` to query ``q``."""
    m = gap_row(x, q, rq, tq, inv_c)[0]
    return (2.0 / math.sqrt(curv)) * math.asinh(math.sqrt(curv * m) / 2.0)
