"""Query traversals (pure NumPy): HySAC's safe redirection, the geodesic move, the outward push.

Space-component convention as in :mod:`hyperret.lorentz`; radii are geodesic
distances to the origin on the hyperboloid of curvature ``-curv``.

Two redirection modes:

- ``hysac`` reproduces HySAC's reference code (``traverse_to_safe_image`` /
  ``traverse_to_safe_text``): with ``b`` the ``up_95`` radius of the safe class of
  the modality being retrieved, ``target = b + (tanh((b - alpha) / curv) + 1)``;
  a query whose radius exceeds ``target`` gets its space components rescaled to
  Euclidean norm ``target`` (so its radius becomes ``asinh(sqrt(c) target) / sqrt(c)``,
  not ``target``). The ``+ 1`` was tuned on the official model's radii.
- ``geodesic`` moves the query along its own geodesic to the origin (the ray of
  ``q_s``) until its radius is exactly the target radius, a statistic of the safe
  class of the modality being retrieved; it never moves a query outward.
"""

from __future__ import annotations

import math

import numpy as np

from .. import lorentz

#: HySAC's default ``alpha`` in the traversal offset.
HYSAC_ALPHA = 0.8


def hysac_target(bound: float, curv: float, alpha: float = HYSAC_ALPHA) -> float:
    """HySAC's traversal target ``b + (tanh((b - alpha) / curv) + 1)`` (a Euclidean norm)."""
    return bound + (math.tanh((bound - alpha) / curv) + 1)


def hysac_redirect(q: np.ndarray, bound: float, curv: float, alpha: float = HYSAC_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """HySAC's inward traversal of queries ``q: (m, D)`` -> ``(moved queries (m, D), moved (m,) bool)``.

    A query is moved iff its radius exceeds :func:`hysac_target`; it then becomes
    ``target * q / |q|`` (float64 arithmetic, returned in ``q``'s dtype).
    """
    target = hysac_target(bound, curv, alpha)
    return _rescale_where(q, target, lorentz.radius(q, curv) > target)


def hysac_outward(q: np.ndarray, bound: float, curv: float, alpha: float = HYSAC_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The reference evaluation's outward push: radius below the target -> rescaled out to it."""
    target = hysac_target(bound, curv, alpha)
    return _rescale_where(q, target, lorentz.radius(q, curv) < target)


def _rescale_where(q: np.ndarray, norm: float, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``q`` with the rows in ``where`` rescaled to Euclidean norm ``norm``."""
    q = np.atleast_2d(q)
    out = q.copy()
    if where.any():
        x = q[where].astype(np.float64)
        out[where] = (norm * (x / np.linalg.norm(x, axis=-1, keepdims=True))).astype(q.dtype)
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
