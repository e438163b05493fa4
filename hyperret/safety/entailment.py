"""Entailment-cone search: Numba kernels over memory-mapped shards (torch-free).

Conventions as in :mod:`hyperret.geometry.lorentz`: only space components ``x_s`` are stored,
``x_t = sqrt(1/curv + |x_s|^2)``, curvature ``-curv``. A stored row ``y`` (a caption)
entails a point ``p`` iff ``p`` lies in ``y``'s entailment cone, apex at ``y``:
``exterior_angle(y, p) <= half_aperture(y)`` as in :mod:`hyperret.safety.traversal`
(MERU/HySAC). For each point the kernel returns the nearest entailing candidate by
exact geodesic distance (the stable formula of :mod:`hyperret.kernels.distance`), ties broken
by the lower row. Rows are read straight from the shards through a
:class:`~hyperret.storage.shardset.ShardSet`; candidate rows outside ``[0, shards.rows)``
(``-1`` pads) count as none, as in rerank. Arithmetic is float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .. import validate
from ..errors import InvalidInputError, NonFiniteError
from ..kernels import parallel
from ..kernels.distance import gap_row
from ..kernels.rows import FASTMATH, row_view, sqnorm
from ..storage.shardset import ShardSet
from . import traversal

__all__ = ["entails", "nearest_entailing"]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _half_aperture(rx, sc, min_radius):
    """Cone half-aperture ``asin(clamp(2 min_radius / (sqrt(c) |y_s|), 0, 1))`` of a row of norm ``rx``."""
    den = sc * rx
    if not den > 0.0:
        return 0.5 * math.pi
    return math.asin(min(max(2.0 * min_radius / den, 0.0), 1.0))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _exterior_angle(m, rx, num, tx, tq, curv):
    """Exterior angle at row ``y`` of the triangle origin-``y``-``p`` from the gap ``m`` (radians).

    ``cos = ((|p|^2 - |y|^2) / (y_t + p_t) - c m y_t / 2) / (|y| sqrt(c m (1 + c m / 4)))``,
    1 where the denominator is 0, as :func:`hyperret.safety.traversal.exterior_angle`.
    """
    cm = curv * m
    numer = -num / (tx + tq) - 0.5 * cm * tx
    denom = rx * math.sqrt(cm * (1.0 + 0.25 * cm))
    cos = numer / denom if denom > 0.0 else 1.0
    return math.acos(min(max(cos, -1.0), 1.0))


@njit(cache=True, nogil=True, error_model="numpy")
def _nearest_one(p, cand_row, offsets, bases, curv, min_radius, out_rows, out_dist, out_angle, out_aperture, i):
    """Nearest entailing candidate of point ``p: (D,)`` float64 among ``cand_row: (kc,)``, written to slot ``i``."""
    dim = p.shape[0]
    inv_c = 1.0 / curv
    sc = math.sqrt(curv)
    total = offsets[offsets.shape[0] - 1]
    rq2 = sqnorm(p)
    rq = math.sqrt(rq2)
    tq = math.sqrt(inv_c + rq2)
    best_row = -1
    best_d = np.inf
    best_ang = np.nan
    best_ap = np.nan
    for j in range(cand_row.shape[0]):
        g = cand_row[j]
        if g < 0 or g >= total or g == best_row:
            continue
        x = row_view(bases, offsets, g, dim)
        m, rx2, num, tx = gap_row(x, p, rq, tq, inv_c)
        d = (2.0 / sc) * math.asinh(math.sqrt(curv * m) / 2.0)
        if d > best_d or (d == best_d and g > best_row):
            continue  # cannot beat the current best: skip the cone test
        rx = math.sqrt(rx2)
        ap = _half_aperture(rx, sc, min_radius)
        ang = _exterior_angle(m, rx, num, tx, tq, curv)
        if ang <= ap:
            best_row = g
            best_d = d
            best_ang = ang
            best_ap = ap
    out_rows[i] = best_row
    out_dist[i] = best_d
    out_angle[i] = best_ang
    out_aperture[i] = best_ap


@njit(cache=True, parallel=True, nogil=True)
def _nearest_parallel(points, cand, offsets, bases, curv, min_radius, out_rows, out_dist, out_angle, out_aperture):
    for i in prange(points.shape[0]):
        _nearest_one(points[i], cand[i], offsets, bases, curv, min_radius,
                     out_rows, out_dist, out_angle, out_aperture, i)


@njit(cache=True, nogil=True)
def _nearest_serial(points, cand, offsets, bases, curv, min_radius, out_rows, out_dist, out_angle, out_aperture):
    for i in range(points.shape[0]):
        _nearest_one(points[i], cand[i], offsets, bases, curv, min_radius,
                     out_rows, out_dist, out_angle, out_aperture, i)


def nearest_entailing(points: np.ndarray, candidates: np.ndarray, shards: ShardSet, curv: float,
                      min_radius: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest entailing row of ``points: (s, D)`` among ``candidates: (s, kc)``.

    Returns ``(rows, distance, angle, aperture)``, each ``(s,)``.

    ``rows`` int64 (``-1`` where no candidate's cone contains the point), ``distance``
    float64 geodesic (``inf`` then), ``angle`` the exterior angle at the row and
    ``aperture`` its cone half-aperture, radians (``nan`` then).
    """
    curv = validate.curvature(curv)
    min_radius = float(min_radius)
    if not math.isfinite(min_radius) or min_radius < 0.0:
        raise InvalidInputError(f"min_radius must be a non-negative finite number, got {min_radius!r}")
    p = np.asarray(points)
    c = np.asarray(candidates)
    if p.ndim != 2 or p.shape[1] != shards.dim:
        raise InvalidInputError(f"points of shape {p.shape}, expected (s, {shards.dim})")
    if c.ndim != 2 or c.shape[0] != p.shape[0]:
        raise InvalidInputError(f"candidates of shape {c.shape} for {p.shape[0]} points, expected ({p.shape[0]}, kc)")
    if c.size and not np.issubdtype(c.dtype, np.integer):
        raise InvalidInputError(f"candidate rows must be integers, got {c.dtype}")
    p = np.ascontiguousarray(p, dtype=np.float64)
    if not np.isfinite(p).all():
        raise NonFiniteError("points contain NaN or infinite values")
    c = np.ascontiguousarray(c, dtype=np.int64)
    s = p.shape[0]
    rows = np.full(s, -1, dtype=np.int64)
    dist = np.full(s, np.inf, dtype=np.float64)
    angle = np.full(s, np.nan, dtype=np.float64)
    aperture = np.full(s, np.nan, dtype=np.float64)
    if s and c.shape[1]:
        parallel.run(_nearest_serial, _nearest_parallel, s,
                     p, c, shards.offsets, shards.bases, curv, min_radius, rows, dist, angle, aperture)
    return rows, dist, angle, aperture


def entails(y: np.ndarray, p: np.ndarray, curv: float, min_radius: float = 0.1) -> np.ndarray:
    """NumPy reference: does ``y: (..., D)``'s cone contain ``p: (..., D)`` (broadcast) -> ``(...)`` bool."""
    return traversal.exterior_angle(y, p, curv) <= traversal.half_aperture(y, curv, min_radius)
