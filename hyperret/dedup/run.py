"""Deduplicate a snapshot: exact copies by content hash, near copies by geodesic radius.

Pipeline: exact-duplicate classes (``hashes``) are united first and represented
by one row each; the range pass (``pairs``) unites every remaining row with the
rows within the radius; the union-find's sets of two or more rows are the groups
(``groups``: representative, distances, diameters). ``--auto`` picks the radius
from a sample's nearest-neighbour distances first (``radius``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .. import validate
from ..errors import InvalidInputError
from ..storage.snapshot import Snapshot
from . import groups as G
from .cells import cell_join
from .hashes import content_source, exact_classes
from .pairs import PassStats, nearest, range_pass
from .radius import pick_radius
from .unionfind import new_forest, roots, union_pairs

Progress = Callable[[str, int, int], None]  # (phase, done, total)
#: Candidates per row at the first round of the range pass.
DEFAULT_CANDIDATES = 16
#: Rows sampled for ``auto``.
AUTO_SAMPLE = 20_000
#: Candidates per sampled row when looking for its nearest neighbour.
AUTO_CANDIDATES = 16
PASSTHROUGH_COLUMNS = ("uri", "unsafe_score")
#: ``cells``: the exact tangent-space join (every pair within the radius); ``stage``: ask the
#: index's candidate stage for each row's neighbours (fast, as complete as the stage's recall).
METHODS = ("cells", "stage")
OUT_SUFFIXES = (".parquet", ".csv", ".json")


@dataclass
class DedupResult:
    """Duplicate groups of a snapshot: one table row per member, and a summary."""

    groups: pa.Table  # group, id, representative, distance_to_representative, exact, size, diameter, ...
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def radius(self) -> float:
        return float(self.summary["radius"])

    @property
    def to_delete(self) -> np.ndarray:
        """Ids of every member that is not its group's representative -> ``(d,)`` int64."""
        rep = self.groups.column("representative").to_numpy(zero_copy_only=False)
        return self.groups.column("id").to_numpy()[~rep].astype(np.int64)

    def write(self, path: str | Path) -> Path:
        """Write the groups table (``.parquet``, ``.csv`` or ``.json`` by suffix); atomic."""
        from ..storage.fsutil import atomic_write_bytes, atomic_write_table

        path = check_out_path(path)
        if path.suffix.lower() == ".json":
            import json

            data = json.dumps({"summary": self.summary, "members": self.groups.to_pylist()}, indent=1).encode()
            atomic_write_bytes(path, data)
        else:  # .parquet or .csv (check_out_path admits only these three)
            atomic_write_table(path, self.groups)
        return path


def check_out_path(path: str | Path) -> Path:
    """``path`` for the groups table: a ``.parquet``, ``.csv`` or ``.json`` file in an existing folder."""
    path = Path(path)
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise InvalidInputError(f"--out must end in .parquet, .csv or .json, got {path.name!r}")
    if not path.parent.exists():
        raise InvalidInputError(f"the folder of {path} does not exist")
    return path


def dedup(snap: Snapshot, *, radius: float | None = None, auto: bool = False, unsafe_only: bool = False,
          labels: np.ndarray | None = None, grouping: str = "components", keep: str = "centre",
          candidates: int = DEFAULT_CANDIDATES, method: str = "cells", sample: int = AUTO_SAMPLE, seed: int = 0,
          progress: Progress | None = None, join: Any = None) -> DedupResult:
    """Duplicate groups of ``snap``'s live rows (see :meth:`hyperret.Index.dedup`).

    ``join``: the cell join to run (default :func:`~hyperret.dedup.cells.cell_join`; e.g.
    :class:`hyperret.distributed.dedup.RayCellJoin`, same signature, same pairs).
    """
    t0 = time.perf_counter()
    if auto == (radius is not None):
        raise InvalidInputError("give a radius or ask for auto, not both" if auto else "give a radius (or auto)")
    if radius is not None:
        radius = validate.radius(radius)
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r} (one of: {', '.join(METHODS)})")
    if grouping not in G.GROUPINGS:
        raise InvalidInputError(f"unknown grouping {grouping!r} (one of: {', '.join(G.GROUPINGS)})")
    G.parse_keep(keep)
    if not isinstance(candidates, (int, np.integer)) or candidates < 2:
        raise InvalidInputError(f"candidates must be an integer >= 2, got {candidates!r}")
    n = snap.rows
    eligible = np.ones(n, dtype=bool) if snap.deleted is None else ~snap.deleted
    if unsafe_only:
        if labels is None:
            raise InvalidInputError("--unsafe-only needs safety labels: build the index with --bounds")
        eligible &= labels
    summary: dict[str, Any] = {"method": method, "grouping": grouping, "keep": keep, "unsafe_only": bool(unsafe_only),
                               "content": content_source(snap), "rows": snap.live, "eligible_rows": int(eligible.sum())}
    timings: dict[str, float] = {}

    # Exact copies: united now, represented by their smallest row in the range pass.
    t = time.perf_counter()
    parent = new_forest(n)
    dup, canon = exact_classes(snap, eligible)
    union_pairs(parent, dup, canon)
    query = eligible.copy()
    query[dup] = False
    summary["exact_duplicate_rows"] = int(len(dup))
    timings["exact"] = time.perf_counter() - t

    if snap.stage is None or not query.any():
        radius = 0.0 if radius is None else radius
        summary["radius_source"] = "given" if not auto else "auto (nothing to compare)"
    elif auto:
        t = time.perf_counter()
        pool = np.flatnonzero(query)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(pool, size=min(sample, len(pool)), replace=False))
        if progress is not None:
            progress("sampling", 0, len(pick))
        nn = nearest(snap, pick, query, AUTO_CANDIDATES)
        radius, why = pick_radius(nn)
        why["sample"] = int(len(pick))
        summary["radius_source"] = "auto"
        summary["auto"] = why
        timings["auto"] = time.perf_counter() - t
    else:
        summary["radius_source"] = "given"
    if radius is None:  # pragma: no cover - validated above: a radius or auto
        raise AssertionError("dedup without a radius")
    summary["radius"] = float(radius)

    t = time.perf_counter()
    stats = PassStats()
    rows = np.flatnonzero(query)
    if snap.stage is not None and len(rows) > 1:
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            if progress is not None:
                progress("range search", done[0], len(rows))

        if method == "cells":
            (join or cell_join)(snap, rows, float(radius), parent, progress=tick, stats=stats)
        else:
            range_pass(snap, rows, query, float(radius), parent, int(candidates), progress=tick, stats=stats)
    timings["range_search"] = time.perf_counter() - t

    t = time.perf_counter()
    root = roots(parent)
    members, starts = G.groups_of(root, np.flatnonzero(eligible))
    ids_of = snap.stored_ids()
    reps = G.choose_representatives(snap, members, starts, ids_of[members], keep)
    to_rep = G.rep_distances(snap, members, starts, reps)
    if grouping == "star":
        members, starts, reps = G.star_split(snap, members, starts, reps, to_rep, ids_of, keep, float(radius))
        to_rep = G.rep_distances(snap, members, starts, reps)
    diam, diam_exact = G.diameters(snap, members, starts, to_rep)
    timings["groups"] = time.perf_counter() - t

    canon_of = np.arange(n, dtype=np.int64)
    canon_of[dup] = canon
    table = _table(snap, members, starts, reps, to_rep, diam, diam_exact, ids_of, canon_of)
    sizes = np.diff(starts)
    summary.update({
        "groups": int(len(sizes)),
        "rows_in_groups": int(sizes.sum()),
        "to_delete": int(sizes.sum() - len(sizes)),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "max_diameter": float(diam.max()) if len(diam) else 0.0,
        "groups_wider_than_radius": int(np.count_nonzero(diam > radius)),
        "candidate_stage": {"structure": snap.stage.factory if snap.stage else None,
                            "walk": "from each row's own graph node" if snap.stage is not None
                            and snap.stage.navigates_lorentz else "search with the row's vector"}
        if method == "stage" else {"structure": f"tangent-space cells (k-means, {stats.cells})",
                                   "walk": "every pair within the radius (exact join)"},
        "range_pass": stats.__dict__,
        "seconds": {**{k: round(v, 3) for k, v in timings.items()}, "total": round(time.perf_counter() - t0, 3)},
    })
    return DedupResult(table, summary)


def _table(snap: Snapshot, members: np.ndarray, starts: np.ndarray, reps: np.ndarray, to_rep: np.ndarray,
           diam: np.ndarray, diam_exact: np.ndarray, ids_of: np.ndarray, canon_of: np.ndarray) -> pa.Table:
    """One row per member: groups numbered by their representative's id, the representative first."""
    g = len(starts) - 1
    sizes = np.diff(starts)
    group_of = np.repeat(np.arange(g), sizes)
    rep_row = np.repeat(reps, sizes)
    is_rep = members == rep_row
    gorder = np.argsort(ids_of[reps], kind="stable")  # group number: rank of the representative's id
    rank = np.empty(g, dtype=np.int64)
    rank[gorder] = np.arange(g)
    gnum = rank[group_of]
    order = np.lexsort((ids_of[members], to_rep, ~is_rep, gnum))
    m = members[order]
    cols: dict[str, Any] = {
        "group": pa.array(gnum[order], pa.int64()),
        "id": pa.array(ids_of[m], pa.int64()),
        "representative": pa.array(is_rep[order], pa.bool_()),
        "distance_to_representative": pa.array(to_rep[order], pa.float64()),
        "exact": pa.array(canon_of[m] == canon_of[rep_row[order]], pa.bool_()),
        "size": pa.array(sizes[group_of[order]], pa.int32()),
        "diameter": pa.array(diam[group_of[order]], pa.float64()),
        "diameter_exact": pa.array(diam_exact[group_of[order]], pa.bool_()),
    }
    have = set(snap.column_names())
    extra = [c for c in PASSTHROUGH_COLUMNS if c in have]
    if extra:
        t = snap.take(m, extra) if len(m) else pa.table({c: pa.array([], snap.column_type(c)) for c in extra})
        for c in extra:
            cols[c] = t.column(c)
    return pa.table(cols)
