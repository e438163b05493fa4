"""Explanations: the reference traversal from a point to the origin, captioned by entailment.

At each step of :func:`~hyperret.safety.traversal.tangent_path` (log map, linear
interpolation toward the origin, exp map), the nearest caption whose entailment
cone contains the point is listed. The candidate stage of the caption index
proposes captions in geodesic order; the Numba kernel
(:func:`~hyperret.safety.entailment.nearest_entailing`) applies the cone test and
keeps the nearest; steps with no entailing caption among the candidates ask for
four times as many, up to ``max_candidates``. Each step also names the nearest
caption outright, entailing or not, so a walk through a region no cone covers
still reads.

HySAC's walk (``scripts/safety_traversal_retrieval.py``) adds ``[ROOT]``, the origin,
to the captions: it entails everything, and it is shown at a step when the origin
is nearer to the point than every entailing caption (it scores captions by the
Lorentz inner product, i.e. by distance). Each step's ``root`` says where that
happens. By the hyperbolic law of cosines a caption whose cone holds the point is
always nearer to it than the origin (the angle at the caption is at least a right
angle), so ``[ROOT]`` marks the steps no caption entails: the origin side of the walk.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError
from ..geometry import lorentz
from ..search.rerank import rerank
from .entailment import nearest_entailing
from .traversal import tangent_path

if TYPE_CHECKING:
    from ..index import Index

CAPTION_COLUMNS = ("caption", "text", "title")


def caption_column(ix: Index, column: str | None) -> str | None:
    """The metadata column holding caption text: ``column``, else a usual name, else the first string column."""
    cols = ix.manifest.metadata_columns
    if column is not None:
        if column not in cols:
            raise InvalidInputError(f"the caption index has no column {column!r} (columns: {', '.join(cols)})")
        return column
    for name in CAPTION_COLUMNS:
        if name in cols:
            return name
    return next((n for n, t in cols.items() if t in ("string", "large_string")), None)


def explain_path(point: np.ndarray, captions: Index, *, steps: int = 10, column: str | None = None,
                 min_radius: float = 0.1, candidates: int = 256, max_candidates: int = 65_536) -> dict[str, Any]:
    """Walk from ``point: (D,)`` to the origin in ``steps`` steps; the nearest entailing caption at each."""
    x = np.asarray(point, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] != captions.dim:
        raise InvalidInputError(f"the point must have shape ({captions.dim},), got {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("the point has non-finite values")
    if steps < 1:
        raise InvalidInputError("steps must be at least 1")
    col = caption_column(captions, column)
    t, pts = tangent_path(x, steps, captions.curv)
    pts32 = pts.astype(np.float32)
    snap = captions._snap
    n = snap.rows
    rows = np.full(len(t), -1, np.int64)
    dist = np.full(len(t), np.inf)
    angle = np.full(len(t), np.nan)
    aperture = np.full(len(t), np.nan)
    near_rows = np.full((len(t), 1), -1, np.int64)
    near_dist = np.full((len(t), 1), np.inf)
    if snap.stage is not None and n:
        todo = np.arange(len(t))
        kc = min(candidates, n)
        while len(todo):
            cand = snap.stage.search(pts32[todo], kc, snap.shardset)
            if snap.deleted is not None:  # deleted rows are not in the snapshot
                cand = np.where((cand >= 0) & snap.deleted[np.maximum(cand, 0)], -1, cand)
            if kc == min(candidates, n):
                near_rows, near_dist = rerank(pts32, cand, snap.shardset, captions.curv, 1)
            r, d, a, ap = nearest_entailing(pts[todo], cand, snap.shardset, captions.curv, min_radius)
            rows[todo], dist[todo], angle[todo], aperture[todo] = r, d, a, ap
            if kc >= min(n, max_candidates):
                break
            todo = todo[r < 0]
            kc = min(n, max_candidates, kc * 4)
    ids = snap.ids_of(rows)
    meta = snap.metadata_rows(rows, [col] if col else [])
    near_ids = snap.ids_of(near_rows[:, 0])
    near_meta = snap.metadata_rows(near_rows[:, 0], [col] if col else [])
    out_steps = []
    for i in range(len(t)):
        radius = float(lorentz.radius(pts[i], captions.curv))
        st: dict[str, Any] = {"t": float(t[i]), "radius": radius, "id": int(ids[i]) if rows[i] >= 0 else None,
                              "root": bool(rows[i] < 0 or radius < dist[i])}  # HySAC's [ROOT] wins the step
        if rows[i] >= 0:
            st.update(distance=float(dist[i]), angle=float(angle[i]), aperture=float(aperture[i]))
            if col:
                st["caption"] = meta[i].get(col)
        if near_rows[i, 0] >= 0:
            st["nearest"] = {"id": int(near_ids[i]), "distance": float(near_dist[i, 0])}
            if col:
                st["nearest"]["caption"] = near_meta[i].get(col)
        out_steps.append(st)
    return {"curv": captions.curv, "steps": out_steps, "caption_column": col,
            "start_radius": float(lorentz.radius(x, captions.curv))}
