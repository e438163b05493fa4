"""The two geometries an index can hold: Lorentz (HySAC) and cosine (Euclidean CLIP baselines).

A cosine index stores unit vectors as points on the hyperboloid of curvature 1:
all of them at the same distance from the origin, where the geodesic distance is
a monotone function of the angle. With ``|x_s| = |y_s| = 1`` the time components
are equal, so the squared Minkowski gap is ``|x_s - y_s|^2 = 2 (1 - cos)`` and the
geodesic distance ``d = 2 asinh(sqrt(2 (1 - cos)) / 2)``. The whole engine
(candidate stage, exact rerank, dedup) then ranks by cosine similarity unchanged,
and search reports the cosine distance ``1 - cos = 2 sinh(d / 2)^2``. For small
angles ``d`` is about the angle in radians (dedup radii on a cosine index).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

GEOMETRIES = ("lorentz", "cosine")
COSINE_CURV = 1.0


def unit_rows(x: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Rows of ``x: (n, D)`` scaled to unit L2 norm (float32); a zero row is an error."""
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x64, axis=1)
    if len(norms) and not (norms > 0).all():
        raise InvalidInputError(f"{what}: row {int(np.flatnonzero(~(norms > 0))[0])} is zero; a cosine index "
                                f"needs a direction")
    return (x64 / norms[:, None]).astype(np.float32) if len(norms) else x64.astype(np.float32)


def cosine_distance(d: np.ndarray) -> np.ndarray:
    """Geodesic distance between unit points on the curvature-1 hyperboloid -> ``1 - cos`` (same shape)."""
    d64 = np.asarray(d, dtype=np.float64)
    return np.where(np.isfinite(d64), 2.0 * np.sinh(d64 / 2.0) ** 2, np.inf)


def check(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise InvalidInputError(f"unknown geometry {geometry!r} (one of: {', '.join(GEOMETRIES)})")
    return geometry
