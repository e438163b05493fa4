"""HySAC-like labelled points for the demo, the tests and the benchmarks.

Four classes, as in the ViSU benchmark and HySAC's Figure 1: ``S`` safe text,
``V`` safe image, ``U`` unsafe text, ``G`` unsafe image. Each point belongs to a
concept (a random direction); modality and safety shift the direction a little
(a modality gap and a per-concept unsafe offset) and set the distance to the
origin, drawn around one of four separate peaks. Points are space components on
the hyperboloid of curvature ``-curv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import lorentz

CLASSES = ("S", "V", "U", "G")
#: Default peaks of the geodesic distance to the origin, per class (curvature-free
#: units: the radius is ``peak / sqrt(curv)``, so the four peaks stay separate at
#: any curvature).
DEFAULT_PEAKS = {"S": 0.9, "V": 1.5, "U": 2.2, "G": 2.8}


@dataclass(frozen=True)
class LabelledPoints:
    """Generated points and their labels (all arrays of length ``n``)."""

    space: np.ndarray  # shape: (n, dim) float32 space components
    cls: np.ndarray  # shape: (n,) str, one of CLASSES
    concept: np.ndarray  # shape: (n,) int64
    curv: float

    @property
    def modality(self) -> np.ndarray:
        """``"text"`` for S/U, ``"image"`` for V/G, shape ``(n,)``."""
        return np.where(np.isin(self.cls, ("S", "U")), "text", "image")

    @property
    def unsafe(self) -> np.ndarray:
        """True for U/G, shape ``(n,)``."""
        return np.isin(self.cls, ("U", "G"))

    def __len__(self) -> int:
        return int(self.space.shape[0])


def make_points(
    n: int,
    dim: int = 64,
    *,
    curv: float = 1.0,
    n_concepts: int = 32,
    classes: tuple[str, ...] = CLASSES,
    peaks: dict[str, float] | None = None,
    spread: float = 0.06,
    concept_noise: float = 0.35,
    intrinsic_dim: int | None = None,
    unsafe_shift: float = 0.5,
    modality_gap: float = 0.3,
    seed: int = 0,
    part: int = 0,
    assign: tuple[np.ndarray, np.ndarray] | None = None,
) -> LabelledPoints:
    """``n`` labelled points in ``dim`` dimensions, classes drawn uniformly from ``classes``.

    ``unsafe_shift`` and ``modality_gap`` set how far unsafe content and images lie
    from their concept's direction (the larger the shift, the more an unsafe query
    finds unsafe content when searched as it is). ``intrinsic_dim`` confines the
    within-concept variation to that many random directions (real embeddings vary along few); ``None``
    spreads it over all ``dim``.
    ``part`` draws a further batch of the same collection (same concepts, new points),
    so large collections can be generated in pieces. ``assign`` = ``(cls, concept)``
    fixes every point's class and concept instead of drawing them (``n`` is then ignored).
    """
    if n < 0 or dim < 2 or n_concepts < 1:
        raise ValueError("need n >= 0, dim >= 2, n_concepts >= 1")
    rng = np.random.default_rng(seed)
    peaks = {**DEFAULT_PEAKS, **(peaks or {})}
    centres = _unit(rng.standard_normal((n_concepts, dim)))
    shift_dirs = _unit(rng.standard_normal((n_concepts, dim)))
    gap_dir = _unit(rng.standard_normal(dim))
    basis = _unit(rng.standard_normal((intrinsic_dim, dim))) if intrinsic_dim else None
    if part:
        rng = np.random.default_rng([seed, part])

    if assign is None:
        cls = np.asarray(classes)[rng.integers(0, len(classes), n)]
        concept = rng.integers(0, n_concepts, n).astype(np.int64)
    else:
        cls, concept = np.asarray(assign[0]).astype(str), np.asarray(assign[1], dtype=np.int64)
        n = len(cls)
    is_unsafe = np.isin(cls, ("U", "G"))
    is_image = np.isin(cls, ("V", "G"))

    if intrinsic_dim is None:
        noise = rng.standard_normal((n, dim)) / np.sqrt(dim)
    else:
        noise = (rng.standard_normal((n, intrinsic_dim)) / np.sqrt(intrinsic_dim)) @ basis
    direction = centres[concept] + concept_noise * noise
    direction += unsafe_shift * is_unsafe[:, None] * shift_dirs[concept]
    direction += modality_gap * is_image[:, None] * gap_dir
    peak = np.array([peaks[c] for c in cls], dtype=np.float64) if n else np.zeros(0)
    r = np.clip(peak + spread * rng.standard_normal(n), 0.05, None) / np.sqrt(curv)
    space = lorentz.point_at_radius(_unit(direction), r, curv).astype(np.float32)
    return LabelledPoints(space=space, cls=cls, concept=concept, curv=float(curv))


def make_quadruples(n: int, dim: int = 64, *, curv: float = 1.0, unsafe_shift: float = 1.0,
                    seed: int = 0, **kw) -> dict[str, np.ndarray]:
    """``n`` paired quadruples as in ViSU: ``{"S", "U", "V", "G"}`` -> ``(n, dim)`` float32 each.

    Quadruple ``i`` is concept ``i`` seen four ways (safe/unsafe text, safe/unsafe
    image); further keywords go to :func:`make_points`.
    """
    cls = np.repeat(np.array(["S", "U", "V", "G"]), n)
    concept = np.tile(np.arange(n, dtype=np.int64), 4)
    pts = make_points(4 * n, dim, curv=curv, n_concepts=max(n, 1), unsafe_shift=unsafe_shift, seed=seed,
                      assign=(cls, concept), **kw)
    return {c: pts.space[j * n : (j + 1) * n] for j, c in enumerate("SUVG")}


def make_queries(points: LabelledPoints, m: int, *, jitter: float = 0.05, seed: int = 1) -> np.ndarray:
    """``m`` queries near randomly chosen ``points`` (tangent-space jitter) -> ``(m, dim)`` float32."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(points), m)
    v = lorentz.log_map0(points.space[pick].astype(np.float64), points.curv)
    v += jitter * rng.standard_normal(v.shape) / np.sqrt(v.shape[1])
    return lorentz.exp_map0(v, points.curv).astype(np.float32)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@dataclass(frozen=True)
class DuplicateSet:
    """Points with injected near-duplicate groups."""

    space: np.ndarray  # shape: (n, dim) float32
    group: np.ndarray  # shape: (n,) int64, injected group of each point, -1 for none
    offset: np.ndarray  # shape: (n,) float64, geodesic distance asked from the group's base (0 for the base)
    curv: float


def make_duplicates(n: int, dim: int, *, curv: float = 1.0, groups: int = 100, sizes: tuple[int, int] = (2, 6),
                    distances: tuple[float, float] = (1e-4, 1e-2), radii: tuple[float, float] = (0.5, 5.0),
                    base: np.ndarray | None = None, seed: int = 0) -> DuplicateSet:
    """``n`` points (random directions at radii uniform in ``radii``, or ``base``) with ``groups`` injected
    near-duplicate groups: a base point and copies at geodesic distances log-uniform in ``distances``."""
    rng = np.random.default_rng(seed)
    if base is None:
        r = rng.uniform(radii[0], radii[1], n)
        base = lorentz.point_at_radius(_unit(rng.standard_normal((n, dim))), r, curv)
    x = np.array(base, dtype=np.float32)  # copied; members are moved in float64
    group = np.full(len(x), -1, dtype=np.int64)
    offset = np.zeros(len(x))
    size = rng.integers(sizes[0], sizes[1] + 1, groups)
    if size.sum() > len(x):
        raise ValueError(f"{int(size.sum())} group members do not fit in {len(x)} points")
    rows = rng.permutation(len(x))[: int(size.sum())]
    at = 0
    for g, s in enumerate(size):
        members = rows[at : at + s]
        at += s
        b = members[0]
        d = np.exp(rng.uniform(np.log(distances[0]), np.log(distances[1]), s - 1))
        xb = np.broadcast_to(x[b].astype(np.float64), (s - 1, x.shape[1]))
        x[members[1:]] = lorentz.step(xb, rng.standard_normal((s - 1, x.shape[1])), d, curv)
        group[members] = g
        offset[members[1:]] = d
    return DuplicateSet(x, group, offset, curv)


def make_concept_cloud(n: int, dim: int = 64, *, curv: float = 1.0, n_concepts: int = 20,
                       radii: tuple[float, float] = (1.0, 3.0), spread: float = 0.5, seed: int = 0,
                       part: int = 0) -> np.ndarray:
    """``n`` points around ``n_concepts`` concept centres -> ``(n, dim)`` float32 space components.

    Each centre is a random tangent vector at the origin whose length (its geodesic
    radius) is uniform in ``radii``; a point is its concept's centre plus isotropic
    Gaussian noise of expected norm about ``spread`` (all ``dim`` directions, unlike
    :func:`make_points`' ``intrinsic_dim``), carried onto the hyperboloid of curvature
    ``-curv`` by the exponential map at the origin. Radii are curvature-free units (the
    tangent vectors are scaled by ``1 / sqrt(curv)``). ``part`` draws a further batch of
    the same collection (same centres, new points), as in :func:`make_points`.
    """
    if n < 0 or dim < 2 or n_concepts < 1:
        raise ValueError("need n >= 0, dim >= 2, n_concepts >= 1")
    rng = np.random.default_rng([seed, 1])
    centres = _unit(rng.standard_normal((n_concepts, dim))) * rng.uniform(radii[0], radii[1], (n_concepts, 1))
    rng = np.random.default_rng([seed, 1, part])
    concept = rng.integers(0, n_concepts, n)
    v = centres[concept] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return lorentz.exp_map0(v / np.sqrt(curv), curv).astype(np.float32)


def make_heavy_tailed(n: int, dim: int = 64, *, curv: float = 1.0, rank: int = 16, isotropic: float = 0.5,
                      tail: str = "lognormal", median_radius: float = 1.5, sigma: float = 0.6,
                      pareto_alpha: float = 2.5, max_radius: float = 6.0, seed: int = 0,
                      part: int = 0) -> np.ndarray:
    """``n`` points with heavy-tailed radii -> ``(n, dim)`` float32 space components.

    Directions: a Gaussian in a random ``rank``-dimensional subspace plus isotropic
    Gaussian noise of relative size ``isotropic``, normalised (so uniform on the
    sphere when ``rank >= dim`` or ``isotropic`` dominates, low-rank otherwise).
    Geodesic radii: ``tail="lognormal"`` (median ``median_radius``, log-sd ``sigma``)
    or ``"pareto"`` (``median_radius * (1 + Pareto(pareto_alpha)) / 2``, so a few points
    lie far out), clipped to ``[0.05, max_radius]``; curvature-free units (the radius
    is ``r / sqrt(curv)``). ``part`` draws a further batch of the same collection.
    """
    if n < 0 or dim < 2 or rank < 1:
        raise ValueError("need n >= 0, dim >= 2, rank >= 1")
    if tail not in ("lognormal", "pareto"):
        raise ValueError(f"tail must be 'lognormal' or 'pareto', got {tail!r}")
    rng = np.random.default_rng([seed, 2])
    basis = _unit(rng.standard_normal((rank, dim)))
    rng = np.random.default_rng([seed, 2, part])
    direction = (rng.standard_normal((n, rank)) / np.sqrt(rank)) @ basis
    direction += isotropic * rng.standard_normal((n, dim)) / np.sqrt(dim)
    if tail == "lognormal":
        r = np.exp(np.log(median_radius) + sigma * rng.standard_normal(n))
    else:
        r = median_radius * (1.0 + rng.pareto(pareto_alpha, n)) / 2.0
    r = np.clip(r, 0.05, max_radius) / np.sqrt(curv)
    return lorentz.point_at_radius(_unit(direction), r, curv).astype(np.float32)
