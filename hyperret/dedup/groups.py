"""From united rows to duplicate groups: representatives, distances, diameters.

Groups are given as ``members`` (global rows, grouped) and ``starts`` (where each
group begins, ``(g + 1,)``). The kernels run over groups in parallel; each uses
the stable geodesic distance of :mod:`hyperret.kernels.distance`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..errors import InvalidInputError
from ..kernels.distance import distance_row, prepare_query
from ..kernels.rows import row_view, sqnorm
from ..storage.snapshot import Snapshot

#: Groups up to this size get an exact diameter (all pairs); larger ones the bound 2 max d(rep, member).
DIAMETER_EXACT_MAX = 2048
KEEP_RULES = ("centre", "lowest-id", "min:COLUMN", "max:COLUMN")
GROUPINGS = ("components", "star")


def groups_of(root: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sets of two or more among ``rows: (m,)`` given each stored row's ``root`` -> ``(members, starts)``.

    Members in row order within a group; groups in the order of their smallest row.
    """
    r = root[rows]
    order = np.lexsort((rows, r))
    rows, r = rows[order], r[order]
    if not len(rows):
        return rows.astype(np.int64), np.zeros(1, np.int64)
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    sizes = np.diff(np.r_[starts, len(rows)])
    keep = np.repeat(sizes > 1, sizes)
    rows = rows[keep]
    sizes = sizes[sizes > 1]
    return rows.astype(np.int64), np.r_[0, np.cumsum(sizes)].astype(np.int64)


@njit(cache=True, nogil=True)
def _centre_one(members, offsets, bases, dim, curv, out):
    """Distance of each member to the Lorentzian centroid of the group (its mean, projected on the hyperboloid)."""
    inv_c = 1.0 / curv
    m = members.shape[0]
    mean = np.zeros(dim, dtype=np.float64)
    mt = 0.0
    for i in range(m):
        x = row_view(bases, offsets, members[i], dim)
        mt += math.sqrt(inv_c + sqnorm(x))
        for j in range(dim):
            mean[j] += np.float64(x[j])
    mt /= m
    s2 = 0.0
    for j in range(dim):
        mean[j] /= m
        s2 += mean[j] * mean[j]
    scale = 1.0 / (math.sqrt(curv) * math.sqrt(max(mt * mt - s2, 1e-300)))
    for j in range(dim):
        mean[j] *= scale
    rq, tq = prepare_query(mean, inv_c)
    for i in range(m):
        out[i] = distance_row(row_view(bases, offsets, members[i], dim), mean, rq, tq, inv_c, curv)


@njit(cache=True, parallel=True, nogil=True)
def _centre_distances(members, starts, offsets, bases, dim, curv, out):
    for g in prange(starts.shape[0] - 1):
        a, b = starts[g], starts[g + 1]
        _centre_one(members[a:b], offsets, bases, dim, curv, out[a:b])


@njit(cache=True, parallel=True, nogil=True)
def _rep_distances(members, starts, reps, offsets, bases, dim, curv, out):
    inv_c = 1.0 / curv
    for g in prange(starts.shape[0] - 1):
        q = row_view(bases, offsets, reps[g], dim)
        rq, tq = prepare_query(q, inv_c)
        for i in range(starts[g], starts[g + 1]):
            if members[i] == reps[g]:
                out[i] = 0.0
            else:
                out[i] = distance_row(row_view(bases, offsets, members[i], dim), q, rq, tq, inv_c, curv)


@njit(cache=True, parallel=True, nogil=True)
def _diameters(members, starts, limit, offsets, bases, dim, curv, out):
    """Largest pairwise distance per group of at most ``limit`` members (others: -1)."""
    inv_c = 1.0 / curv
    for g in prange(starts.shape[0] - 1):
        a, b = starts[g], starts[g + 1]
        if b - a > limit:
            out[g] = -1.0
            continue
        best = 0.0
        for i in range(a, b):
            q = row_view(bases, offsets, members[i], dim)
            rq, tq = prepare_query(q, inv_c)
            for j in range(i + 1, b):
                d = distance_row(row_view(bases, offsets, members[j], dim), q, rq, tq, inv_c, curv)
                if d > best:
                    best = d
        out[g] = best


def parse_keep(keep: str) -> tuple[str, str | None]:
    """``centre`` | ``lowest-id`` | ``min:COL`` | ``max:COL`` -> (rule, column)."""
    if keep in ("centre", "center"):
        return "centre", None
    if keep == "lowest-id":
        return "lowest-id", None
    if keep.startswith(("min:", "max:")) and len(keep) > 4:
        return keep[:3], keep[4:]
    raise InvalidInputError(f"unknown keep rule {keep!r} (one of: {', '.join(KEEP_RULES)})")


def choose_representatives(snap: Snapshot, members: np.ndarray, starts: np.ndarray, ids: np.ndarray,
                           keep: str) -> np.ndarray:
    """The representative row of each group ``(g,)``: by the ``keep`` rule, ties by lowest id.

    ``centre``: the member nearest the group's Lorentzian centroid. ``lowest-id``:
    the oldest. ``min:COL`` / ``max:COL``: the member with the smallest / largest
    value of a numeric metadata column (nulls never win unless all are null).
    """
    rule, col = parse_keep(keep)
    g = len(starts) - 1
    if g == 0:
        return np.zeros(0, np.int64)
    group = np.repeat(np.arange(g), np.diff(starts))
    if rule == "centre":
        key = np.empty(len(members), dtype=np.float64)
        sh = snap.shardset
        _centre_distances(members, starts, sh.offsets, sh.bases, sh.dim, float(snap.manifest.curv), key)
    elif rule == "lowest-id":
        key = np.zeros(len(members))
    else:
        if col not in snap.manifest.metadata_columns:
            raise InvalidInputError(f"keep rule {keep!r}: the index has no metadata column {col!r}")
        vals = snap.take(members, [col]).column(col)
        try:
            arr = np.asarray(vals.to_numpy(zero_copy_only=False), dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInputError(f"keep rule {keep!r}: column {col!r} is not numeric") from None
        arr = np.where(np.isnan(arr), np.inf if rule == "min" else -np.inf, arr)
        key = arr if rule == "min" else -arr
    order = np.lexsort((ids, key, group))  # by group, then key, then id
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    return members[order][first]


def rep_distances(snap: Snapshot, members: np.ndarray, starts: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Geodesic distance of each member to its group's representative -> ``(len(members),)`` float64."""
    out = np.empty(len(members), dtype=np.float64)
    if len(reps):
        sh = snap.shardset
        _rep_distances(members, starts, reps, sh.offsets, sh.bases, sh.dim, float(snap.manifest.curv), out)
    return out


def diameters(snap: Snapshot, members: np.ndarray, starts: np.ndarray, to_rep: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Each group's diameter ``(g,)`` and whether it is exact ``(g,)`` bool.

    Exact (the largest pairwise distance) up to :data:`DIAMETER_EXACT_MAX` members;
    beyond, the triangle-inequality bound ``2 max d(rep, member)``.
    """
    g = len(starts) - 1
    out = np.empty(g, dtype=np.float64)
    if g:
        sh = snap.shardset
        _diameters(members, starts, DIAMETER_EXACT_MAX, sh.offsets, sh.bases, sh.dim, float(snap.manifest.curv), out)
    exact = out >= 0
    if (~exact).any():
        bound = np.maximum.reduceat(to_rep, starts[:-1]) * 2.0
        out[~exact] = bound[~exact]
    return out, exact


def star_split(snap: Snapshot, members: np.ndarray, starts: np.ndarray, reps: np.ndarray, to_rep: np.ndarray,
               ids_of: np.ndarray, keep: str, radius: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split groups with a member beyond ``radius`` of the representative, so none chains.

    Repeatedly: the rule's representative of the remaining members takes every
    remaining member within ``radius`` of it. A member left alone is no longer a
    duplicate. Returns the new ``(members, starts, reps)``.
    """
    far = np.flatnonzero(np.maximum.reduceat(to_rep, starts[:-1]) > radius) if len(reps) else np.zeros(0, int)
    if not len(far):
        return members, starts, reps
    out_m, out_s, out_r = [], [], []
    far_set = set(far.tolist())
    for gi in range(len(starts) - 1):
        part = members[starts[gi] : starts[gi + 1]]
        if gi not in far_set:
            out_m.append(part)
            out_s.append(len(part))
            out_r.append(reps[gi])
            continue
        rest = part
        while len(rest) > 1:
            one = np.array([0, len(rest)], dtype=np.int64)
            rep = choose_representatives(snap, rest, one, ids_of[rest], keep)
            d = rep_distances(snap, rest, one, rep)
            take = d <= radius
            if take.sum() > 1:
                out_m.append(rest[take])
                out_s.append(int(take.sum()))
                out_r.append(rep[0])
            rest = rest[~take]
    members = np.concatenate(out_m).astype(np.int64) if out_m else np.zeros(0, np.int64)
    return members, np.r_[0, np.cumsum(out_s)].astype(np.int64), np.asarray(out_r, dtype=np.int64)
