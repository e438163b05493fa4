"""Query traversals (pure NumPy): HySAC's safe redirection, the geodesic move, the outward push.

Space-component convention as in :mod:`hyperret.geometry.lorentz`; radii are geodesic
distances to the origin on the hyperboloid of curvature ``-curv``.

Two redirection modes:

- ``hysac`` reproduces HySAC's reference code (``traverse_to_safe_image`` /
  ``traverse_to_safe_text``): with ``b`` the ``up_95`` radius of the safe class of
  the modality being retrieved, ``target = b + (tanh((b - alpha) / curv) + 1)``;
  a query whose distance to the origin exceeds ``target`` gets its space components
  rescaled to Euclidean norm ``target`` (so its radius becomes
  ``asinh(sqrt(c) target) / sqrt(c)``, not ``target``), whatever any classifier
  says of it. The ``+ 1`` was tuned on the official model's radii. The reference
  computes in float32 (torch), and so does this mode, operation for operation: the
  distance ``acosh(c sqrt(1/c) sqrt(1/c + |q|^2)) / sqrt(c)`` compared with the
  target rounded to float32, and the point ``float32(target) * (q / |q|)``. Only the
  two float32 sums (``|q|^2`` and ``|q|``) are correctly rounded here, where torch
  accumulates in float32 in an order of its own: measured against the reference
  (``docs/benchmarks.md``), 60-75% of moved queries are bit-identical and the rest
  within 4 float32 ulps, and a decision can differ only for a query within about
  3e-6 (relative) of the target.
- ``geodesic`` moves the query along its own geodesic to the origin (the ray of
  ``q_s``) until its radius is exactly the target radius, a statistic of the safe
  class of the modality being retrieved; it never moves a query outward.
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry import lorentz

#: HySAC's default ``alpha`` in the traversal offset.
HYSAC_ALPHA = 0.8


def hysac_target(bound: float, curv: float, alpha: float = HYSAC_ALPHA) -> float:
    """HySAC's traversal target ``b + (tanh((b - alpha) / curv) + 1)`` (a Euclidean norm).

    The quotient is float32, as in the reference, where a Python float over the float32
    tensor ``curv.exp()`` is torch's ``reciprocal(curv) * (b - alpha)``; the rest is float64
    (Python's ``math``).
    """
    q = (np.float32(1.0) / np.float32(curv)) * np.float32(bound - alpha)
    return bound + (math.tanh(float(q)) + 1)


def hysac_radius(q: np.ndarray, curv: float) -> np.ndarray:
    """The reference's float32 distance to the origin of ``q: (m, D)`` -> ``(m,)`` float32.

    HySAC's ``pairwise_dist(0, q)``: ``acosh(max(c x_t y_t, 1)) / sqrt(c)`` with the origin's
    time component ``x_t = sqrt(1/c)`` and ``y_t = sqrt(1/c + |q|^2)``, every step rounded to
    float32 (``|q|^2`` is summed exactly, then rounded). For HySAC's decision only: the
    engine's :func:`hyperret.geometry.lorentz.radius` is the accurate one.
    """
    x = np.atleast_2d(np.asarray(q, dtype=np.float32)).astype(np.float64)
    c = np.float32(curv)
    sq = np.einsum("ij,ij->i", x, x).astype(np.float32)
    inv = np.float32(1.0) / c
    arg = c * (np.sqrt(inv) * np.sqrt(inv + sq))
    return (np.arccosh(np.maximum(arg, np.float32(1.0))) / np.sqrt(c)).astype(np.float32)


def hysac_redirect(q: np.ndarray, bound: float, curv: float,
                   alpha: float = HYSAC_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """HySAC's inward traversal of queries ``q: (m, D)`` -> ``(moved queries (m, D), moved (m,) bool)``.

    A query is moved iff its (float32) distance to the origin exceeds :func:`hysac_target`;
    it then becomes ``target * q / |q|`` in float32 (see the module docstring).
    """
    target = hysac_target(bound, curv, alpha)
    return _hysac_rescale(q, target, hysac_radius(q, curv) > np.float32(target))


def hysac_outward(q: np.ndarray, bound: float, curv: float,
                  alpha: float = HYSAC_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The reference evaluation's outward push: distance below the target -> rescaled to it (zero rows stay)."""
    target = hysac_target(bound, curv, alpha)
    q = np.atleast_2d(q)
    where = (hysac_radius(q, curv) < np.float32(target)) & np.any(q != 0, axis=-1)
    return _hysac_rescale(q, target, where)


def _hysac_rescale(q: np.ndarray, norm: float, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``q: (m, D)`` with the rows in ``where`` set to ``float32(norm) * (q / float32(|q|))``, float32 steps."""
    q = np.atleast_2d(q)
    out = q.copy()
    if where.any():
        x = q[where].astype(np.float32)
        n = np.sqrt(np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64))).astype(np.float32)
        out[where] = (x / n[:, None]) * np.float32(norm)
    return out, where


def geodesic_move(q: np.ndarray, target_radius: np.ndarray | float, curv: float) -> np.ndarray:
    """Move queries ``q: (m, D)`` along their geodesic to the origin to radius ``target_radius`` -> ``(m, D)``."""
    return lorentz.point_at_radius(np.atleast_2d(q), target_radius, curv)


def geodesic_redirect(q: np.ndarray, target_radius: float, curv: float) -> tuple[np.ndarray, np.ndarray]:
    """Inward geodesic move of the queries farther out than ``target_radius`` -> ``(queries, moved)``."""
    q = np.atleast_2d(q)
    moved = lorentz.radius(q, curv) > target_radius
    out = q.copy()
    if moved.any():
        out[moved] = geodesic_move(q[moved], target_radius, curv)
    return out, moved


def geodesic_outward(q: np.ndarray, target_radius: float, curv: float) -> tuple[np.ndarray, np.ndarray]:
    """Outward geodesic move of the queries nearer the origin than ``target_radius`` -> ``(queries, moved)``."""
    q = np.atleast_2d(q)
    moved = (lorentz.radius(q, curv) < target_radius) & (np.linalg.norm(q, axis=-1) > 0)
    out = q.copy()
    if moved.any():
        out[moved] = geodesic_move(q[moved], target_radius, curv)
    return out, moved


def tangent_path(x: np.ndarray, steps: int, curv: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference traversal from ``x: (D,)`` to the origin: ``(t (steps+1,), points (steps+1, D))``.

    Log map at the origin, linear interpolation ``t * v`` for ``t`` from 1 down to 0,
    exp map back; ``points[0]`` is ``x`` itself and ``points[-1]`` the origin.
    """
    v = lorentz.log_map0(np.asarray(x, dtype=np.float64), curv)
    t = np.linspace(1.0, 0.0, int(steps) + 1)
    return t, lorentz.exp_map0(t[:, None] * v[None, :], curv)


def half_aperture(x: np.ndarray, curv: float, min_radius: float = 0.1) -> np.ndarray:
    """Entailment-cone half-aperture of points ``x: (..., D)`` -> ``(...)`` radians.

    ``asin(2 min_radius / (sqrt(curv) |x_s|))``, clamped to ``[0, pi/2]`` (points
    within ``2 min_radius`` of the origin's axis get the widest cone), as MERU and HySAC.
    """
    n = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=-1)
    with np.errstate(divide="ignore"):
        s = np.where(n > 0, 2.0 * min_radius / (math.sqrt(curv) * n), np.inf)
    return np.arcsin(np.clip(s, 0.0, 1.0))


def exterior_angle(x: np.ndarray, y: np.ndarray, curv: float) -> np.ndarray:
    """Exterior angle at ``x`` of the triangle origin-``x``-``y``, ``(..., D)`` pairs -> ``(...)`` radians.

    ``pi`` minus the angle at ``x`` between the geodesics to the origin and to ``y``
    (hyperbolic law of cosines, MERU's ``oxy_angle``): 0 when ``y`` lies straight out
    from ``x``. ``y`` is in the entailment cone of ``x`` iff this is at most
    :func:`half_aperture` of ``x``. Cancellation-free through the Minkowski gap
    ``m``: ``-curv <x, y>_L = 1 + curv m / 2``.
    """
    x64, y64 = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    m = lorentz._minkowski_gap(x64, y64, curv)
    rx2 = np.sum(x64 * x64, axis=-1)
    ry2 = np.sum(y64 * y64, axis=-1)
    tx = np.sqrt(1.0 / curv + rx2)
    ty = np.sqrt(1.0 / curv + ry2)
    numer = (ry2 - rx2) / (tx + ty) - 0.5 * curv * m * tx  # y_t + curv <x, y>_L x_t
    denom = np.sqrt(rx2) * np.sqrt(curv * m * (1.0 + 0.25 * curv * m))  # |x_s| sinh(sqrt(c) d)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, numer / denom, 1.0)
    return np.arccos(np.clip(cos, -1.0, 1.0))
