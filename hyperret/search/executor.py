"""Running planned queries against a snapshot: candidates, exact rerank, widened until ``k``.

Three searches ask the candidate stage for a fixed number of rows and then find
fewer than they need: a filtered or deletion-masked rerank (skipped rows leave
holes), search-time dedup (collapsed hits leave holes), and the dedup range pass
(a ball that swallowed every candidate may hold more rows). All three repeat the
short queries with a wider request until they are full or every row was seen:
:func:`widen` is that one loop, and the searches here are its steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..safety.planner import Plan
from ..storage.snapshot import Snapshot
from .exact import CpuExact, Exact, scan_width

#: ``step(todo, width, round) -> short``: run queries ``todo: (t,)`` at ``width``
#: candidates (round ``0, 1, ...``); ``short: (t,)`` bool marks those still not full.
Step = Callable[[np.ndarray, int, int], np.ndarray]


def widen(todo: np.ndarray, width: int, limit: int, step: Step, *, growth: int) -> np.ndarray:
    """Run ``step`` on ``todo`` and again on its short queries at ``growth`` times the width.

    Stops when no query is short or ``width`` reached ``limit`` (every row seen).
    Returns the queries still short at the end ``(s,)`` int64: they cannot be filled.
    """
    todo = np.asarray(todo, dtype=np.int64)
    rnd = 0
    while len(todo):
        short = np.asarray(step(todo, width, rnd), dtype=bool)
        if width >= limit or not short.any():
            return todo[short]
        todo = todo[short]
        width = min(limit, width * growth)
        rnd += 1
    return todo


@dataclass(frozen=True)
class Settings:
    """How a search runs: the structure's knob, or the exhaustive scan; and the rows a predicate allows."""

    ef: int | None = None
    nprobe: int | None = None
    scan: bool = False  # the exhaustive scan answers (the cost model, or no knob reaches the recall asked)
    allowed: np.ndarray | None = None  # (rows,) bool: rows a ``where`` predicate matches
    #: the cost model of a restricted search: seconds per query of the structure at this setting,
    #: and per row of the scan (0: not measured, the scan answers below SCAN_FRACTION)
    walk_seconds: float = 0.0
    scan_row_seconds: float = 0.0

    def scans(self, allowed_rows: int, rows: int) -> bool:
        """True when the scan of ``allowed_rows`` of ``rows`` is cheaper than the walk that must find them."""
        if self.scan or allowed_rows == 0:
            return True
        if allowed_rows >= rows:
            return False
        if self.walk_seconds <= 0 or self.scan_row_seconds <= 0:
            return allowed_rows <= SCAN_FRACTION * rows
        # a walk must visit about rows/allowed as many rows to meet as many allowed ones
        return allowed_rows * self.scan_row_seconds <= self.walk_seconds * rows / allowed_rows


#: Without a measured cost model, a restricted search scans when at most this fraction of rows qualifies.
SCAN_FRACTION = 0.02


def ranked(snap: Snapshot, plan: Plan, labels: np.ndarray | None, k: int, kc: int | None,
           curv: float, settings: Settings = Settings(), exact: Exact | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` rows and distances ``(m, k)`` of each planned query (blocked: none).

    ``kc``: candidates the stage proposes per query (``None``: the preset's).
    ``labels: (n,)`` bool unsafe per row, needed by the plan's filtered queries.
    Deleted rows, unsafe rows (filtered queries) and rows the predicate rejects are
    a skip mask the candidate stage honours; when few rows qualify (or the settings
    say so) the exhaustive scan of the qualifying rows answers instead.
    ``exact``: the scan and rerank kernels (default: the CPU's over ``snap``'s shards).
    """
    m, n = len(plan.queries), snap.rows
    rows = np.full((m, k), -1, np.int64)
    dist = np.full((m, k), np.inf)
    if snap.stage is None or not n:
        return rows, dist
    if kc is None:
        kc = snap.stage.preset.candidates_for(k)
        if settings.ef is not None:  # the beam sets the candidates too: a narrow beam is a fast search
            kc = min(kc, settings.ef)
    kc = max(kc, k)
    ex = exact if exact is not None else CpuExact(snap.shardset, curv)
    base: np.ndarray | None = snap.deleted  # rows never returned: deleted, and rejected by the predicate
    if settings.allowed is not None:
        base = np.where(settings.allowed, 0, 3).astype(np.uint8)
        if snap.deleted is not None:
            base[snap.deleted] = 2
    if len(plan.plain):
        _run(snap, ex, plan, plan.plain, base, k, kc, settings, rows, dist)
    if len(plan.filtered) and labels is not None:  # search() refuses filter where rows have no labels
        if settings.allowed is None:
            skip = snap.skip_codes(labels)  # unsafe 1, deleted 2 (cached per snapshot)
        else:
            assert base is not None
            skip = np.where(base > 0, base, labels.astype(np.uint8))
        _run(snap, ex, plan, plan.filtered, skip, k, kc, settings, rows, dist, filtered=True)
    return rows, dist


def _run(snap: Snapshot, ex: Exact, plan: Plan, todo: np.ndarray, skip: np.ndarray | None, k: int, kc: int,
         settings: Settings, rows: np.ndarray, dist: np.ndarray, filtered: bool = False) -> None:
    """Rank queries ``todo`` leaving ``skip`` rows out (unsafe 1, deleted 2, rejected 3) into ``rows``/``dist``."""
    stage = snap.stage
    assert stage is not None  # ranked() returns early without a stage
    n = snap.rows
    allowed = n if skip is None else int(n - np.count_nonzero(skip))
    if settings.scans(allowed, n):
        q = plan.queries[todo]
        # the scan's order is exact up to rounding (float32; wider for rows stored in float16)
        width = min(kc + ex.width(k) - scan_width(k), ex.width(k), max(allowed, 1))
        cand = ex.scan(q, width, skip=skip)
        rows[todo], dist[todo] = ex.rerank(q, cand, k, skip=skip)
        unsafe_out = int(np.count_nonzero(np.asarray(skip) == 1)) if filtered and skip is not None else 0
        for i in todo:
            p = plan.plans[i]
            p.candidates, p.scanned = int(cand.shape[1]), allowed
            if filtered:
                p.unsafe_skipped = unsafe_out  # the scan never looked at them
        _note_short(plan, todo, rows, filtered)
        return

    def step(todo: np.ndarray, kc: int, rnd: int) -> np.ndarray:
        skipped = np.zeros(len(todo), dtype=np.int64)
        cand = stage.search(plan.queries[todo], kc, snap.shardset, ef=settings.ef, nprobe=settings.nprobe,
                            skip=skip)
        r, d = ex.rerank(plan.queries[todo], cand, k, skip=skip, skipped=skipped)
        rows[todo], dist[todo] = r, d
        for j, i in enumerate(todo):
            p = plan.plans[i]
            p.candidates, p.refills = kc, rnd
            if filtered:
                p.unsafe_skipped = int(skipped[j])
        return r[:, k - 1] < 0

    _note_short(plan, widen(todo, min(kc, n), n, step, growth=4), rows, filtered)


def _note_short(plan: Plan, todo: np.ndarray, rows: np.ndarray, filtered: bool) -> None:
    for i in todo if filtered else ():
        if rows[i, -1] < 0:
            plan.plans[i].reason += f" (only {int(np.count_nonzero(rows[i] >= 0))} safe rows exist)"


def deduplicated(snap: Snapshot, plan: Plan, labels: np.ndarray | None, k: int, kc: int | None, curv: float,
                 radius: float, settings: Settings = Settings(),
                 exact: Exact | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` with near-duplicates within ``radius`` collapsed: rank ``k2 > k`` hits, collapse, widen ``k2``."""
    from ..dedup import collapse  # dedup builds on the search path, not the reverse

    m = len(plan.queries)
    rows = np.full((m, k), -1, np.int64)
    dist = np.full((m, k), np.inf)

    def step(todo: np.ndarray, k2: int, rnd: int) -> np.ndarray:
        sub = plan.subset(todo)
        r2, d2 = ranked(snap, sub, labels, k2, None if kc is None else max(kc, k2), curv, settings, exact)
        r, d, gone = collapse(r2, d2, snap.shardset, curv, radius, k)
        rows[todo], dist[todo] = r, d
        for p, g in zip(sub.plans, gone):
            p.collapsed = int(g)
        # Short of k while the ranked list was full: more rows exist behind the collapsed ones.
        return (r[:, k - 1] < 0) & (r2[:, k2 - 1] >= 0)

    widen(np.arange(m), min(2 * k, max(snap.rows, 1)), snap.rows, step, growth=4)
    return rows, dist
