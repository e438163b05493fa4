"""Lorentz-model geometry (curvature ``-curv``, ``curv > 0``) as pure NumPy functions.

Convention, stated once: every function takes and returns the *space components*
``x_s`` of points on the hyperboloid ``<x, x>_L = -1/curv``; the time component is
derived, ``x_t = sqrt(1/curv + |x_s|^2)``. Vectors are the last axis. Inputs may be
float32; the arithmetic runs in float64, distances come back as float64, maps keep
the input's float dtype. Units: distances and radii are geodesic lengths on the
hyperboloid of curvature ``-curv``.

The distance uses a cancellation-free form (see :func:`distance`): the textbook
``acosh(-curv <x, y>_L)`` returns 0 for every near-duplicate in float32 and loses all
precision far from the origin even in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "time_component",
    "inner",
    "exp_map0",
    "log_map0",
    "radius",
    "point_at_radius",
    "distance",
    "pairwise_distance",
    "to_hyperboloid",
]

# Rows per block in pairwise_distance: bounds the (block, m, D) float64 temporary.
_PAIRWISE_BLOCK_BYTES = 64 << 20


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _check_curv(curv: float) -> float:
    curv = float(curv)
    if not np.isfinite(curv) or curv <= 0:
        raise ValueError(f"curvature must be a positive finite number, got {curv!r}")
    return curv


def time_component(x: np.ndarray, curv: float) -> np.ndarray:
    """Time component ``x_t`` of space components ``x: (..., D)`` -> ``(...)`` float64."""
    curv = _check_curv(curv)
    x = _f64(x)
    return np.sqrt(1.0 / curv + np.sum(x * x, axis=-1))


def to_hyperboloid(x: np.ndarray, curv: float) -> np.ndarray:
    """Full ambient coordinates ``[x_s, x_t]``: ``(..., D)`` -> ``(..., D + 1)`` float64."""
    x = _f64(x)
    return np.concatenate([x, time_component(x, curv)[..., None]], axis=-1)


def inner(x: np.ndarray, y: np.ndarray, curv: float) -> np.ndarray:
    """Lorentzian inner product ``x_s . y_s - x_t y_t`` of ``(..., D)`` arrays -> ``(...)`` float64.

    Broadcasts like ``x * y``. Not cancellation-free: use :func:`distance` for distances.
    """
    x, y = _f64(x), _f64(y)
    return np.sum(x * y, axis=-1) - time_component(x, curv) * time_component(y, curv)


def _over(f, z: np.ndarray) -> np.ndarray:
    """``f(z) / z`` for ``f`` = sinh or asinh, with its limit 1 at ``z = 0`` (float64, ``z >= 0``)."""
    out = np.ones_like(z)
    nz = z > 1e-8  # below this, f(z)/z == 1 to float64 precision
    out[nz] = f(z[nz]) / z[nz]
    return out


def exp_map0(v: np.ndarray, curv: float) -> np.ndarray:
    """Exponential map at the origin: tangent vectors ``(..., D)`` -> space components ``(..., D)``."""
    return _radial(v, curv, np.sinh)


def log_map0(x: np.ndarray, curv: float) -> np.ndarray:
    """Logarithmic map at the origin: space components ``(..., D)`` -> tangent vectors ``(..., D)``."""
    return _radial(x, curv, np.arcsinh)


def _radial(v: np.ndarray, curv: float, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``(f(z) / z) * v`` with ``z = sqrt(curv) |v|`` for ``(..., D)`` vectors, in float64, cast back."""
    curv = _check_curv(curv)
    v64 = _f64(v)
    z = np.sqrt(curv) * np.linalg.norm(v64, axis=-1, keepdims=True)
    return (_over(f, z) * v64).astype(_float_dtype(v), copy=False)


def radius(x: np.ndarray, curv: float) -> np.ndarray:
    """Geodesic distance to the origin of ``(..., D)`` points -> ``(...)`` float64."""
    curv = _check_curv(curv)
    sc = np.sqrt(curv)
    return np.arcsinh(sc * np.linalg.norm(_f64(x), axis=-1)) / sc


def point_at_radius(x: np.ndarray, r: np.ndarray | float, curv: float) -> np.ndarray:
    """The point at geodesic radius ``r`` in the direction of ``x: (..., D)`` -> ``(..., D)``.

    ``r`` broadcasts against ``x.shape[:-1]``. A zero ``x`` has no direction: it stays
    at the origin.
    """
    curv = _check_curv(curv)
    sc = np.sqrt(curv)
    x64 = _f64(x)
    n = np.linalg.norm(x64, axis=-1, keepdims=True)
    scale = np.sinh(sc * np.asarray(r, dtype=np.float64))[..., None] / sc
    unit = np.divide(x64, n, out=np.zeros_like(x64), where=n > 0)
    return (scale * unit).astype(_float_dtype(x), copy=False)


def step(x: np.ndarray, u: np.ndarray, dist: np.ndarray | float, curv: float) -> np.ndarray:
    """Move ``x: (..., D)`` a geodesic distance ``dist`` (``(...)`` or scalar) toward direction ``u: (..., D)``.

    ``u`` is made a tangent vector at ``x`` (time part ``<x_s, u>/x_t``), normalised
    in the Lorentz norm; the exponential map at ``x`` gives the new space components.
    """
    c = _check_curv(curv)
    x, u = _f64(x), _f64(u)
    xt = time_component(x, c)
    ut = np.sum(x * u, axis=-1) / xt
    norm = np.sqrt(np.maximum(np.sum(u * u, axis=-1) - ut * ut, 1e-300))
    sc = np.sqrt(c)
    d = np.asarray(dist, dtype=np.float64)
    return np.cosh(sc * d)[..., None] * x + (np.sinh(sc * d) / (sc * norm))[..., None] * u


def _minkowski_gap(x: np.ndarray, y: np.ndarray, curv: float) -> np.ndarray:
    """Squared Minkowski norm ``m = <x - y, x - y>_L >= 0`` of broadcast ``(..., D)`` float64 pairs.

    Cancellation-free: with ``rho = |x_s|``, ``u = x_s / rho``, ``x_t`` the time
    component and ``e_x = x_t - rho = (1/curv) / (x_t + rho)``,

        m = (rho_x - rho_y)^2 (e_x + e_y)(T + P) / T^2 + rho_x rho_y |u - w|^2,

    ``T = x_t + y_t``, ``P = rho_x + rho_y``, ``rho_x - rho_y = sum((x-y)(x+y)) / P``, and
    ``u - w = (x - y) / max(rho) - z (rho_x^2 - rho_y^2) / (rho_x rho_y P)`` with ``z`` the
    point of the smaller norm. Every term is non-negative and nothing cancels, however far
    from the origin; ``d(x, y) = d(y, x)`` and ``d(x, x) = 0`` exactly.
    """
    inv_c = 1.0 / curv
    rx = np.sqrt(np.sum(x * x, axis=-1))
    ry = np.sqrt(np.sum(y * y, axis=-1))
    tx = np.sqrt(inv_c + rx * rx)
    ty = np.sqrt(inv_c + ry * ry)
    p = rx + ry
    t = tx + ty
    num = np.sum((x - y) * (x + y), axis=-1)
    drho = np.divide(num, p, out=np.zeros_like(num), where=p > 0)
    ex = inv_c / (tx + rx)
    ey = inv_c / (ty + ry)
    radial = drho * drho * (ex + ey) * (t + p) / (t * t)
    # Direction difference u - w = (x - y) / r_max - z (rx^2 - ry^2) / (rx ry (rx + ry)), z the
    # point of the smaller norm: exactly 0 for x == y, symmetric, no cancellation at any ratio
    # of the norms. A point at the origin has no angular term.
    ok = (rx > 0) & (ry > 0)
    x_big = (rx >= ry)[..., None]
    inv = np.divide(1.0, np.maximum(rx, ry), out=np.zeros_like(rx), where=ok)
    corr = np.divide(num, rx * ry * p, out=np.zeros_like(num), where=ok)
    du = (x - y) * inv[..., None] - np.where(x_big, y, x) * corr[..., None]
    angular = rx * ry * np.sum(du * du, axis=-1)
    return radial + angular


def distance(x: np.ndarray, y: np.ndarray, curv: float) -> np.ndarray:
    """Element-wise geodesic distance of broadcast ``(..., D)`` points -> ``(...)`` float64.

    ``d = (2 / sqrt(curv)) * asinh(sqrt(curv * m) / 2)`` with ``m`` the squared
    Minkowski norm of ``x - y`` computed without cancellation (:func:`_minkowski_gap`).
    Equal to ``acosh(-curv <x, y>_L) / sqrt(curv)`` in exact arithmetic.
    """
    curv = _check_curv(curv)
    x64, y64 = np.broadcast_arrays(_f64(x), _f64(y))
    m = _minkowski_gap(x64, y64, curv)
    sc = np.sqrt(curv)
    return (2.0 / sc) * np.arcsinh(np.sqrt(curv * m) / 2.0)


def pairwise_distance(x: np.ndarray, y: np.ndarray, curv: float) -> np.ndarray:
    """All-pairs geodesic distance of ``x: (n, D)`` and ``y: (m, D)`` -> ``(n, m)`` float64.

    Same stable form as :func:`distance`, evaluated in row blocks to bound memory.
    """
    curv = _check_curv(curv)
    x64, y64 = _f64(np.atleast_2d(x)), _f64(np.atleast_2d(y))
    if x64.shape[-1] != y64.shape[-1]:
        raise ValueError(f"dimension mismatch: {x64.shape[-1]} vs {y64.shape[-1]}")
    n, m, d = x64.shape[0], y64.shape[0], x64.shape[1]
    out = np.empty((n, m), dtype=np.float64)
    block = max(1, _PAIRWISE_BLOCK_BYTES // max(1, 8 * m * d))
    for s in range(0, n, block):
        out[s : s + block] = distance(x64[s : s + block, None, :], y64[None, :, :], curv)
    return out


def _float_dtype(a: np.ndarray) -> np.dtype:
    dt = np.asarray(a).dtype
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64)
