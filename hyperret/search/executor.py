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

import numpy as np

from ..safety.planner import Plan
from ..storage.snapshot import Snapshot
from .rerank import rerank

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


def ranked(snap: Snapshot, plan: Plan, labels: np.ndarray | None, k: int, kc: int | None,
           curv: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` rows and distances ``(m, k)`` of each planned query (blocked: none).

    ``kc``: candidates the stage proposes per query (``None``: the preset's).
    ``labels: (n,)`` bool unsafe per row, needed by the plan's filtered queries.
    """
    m, n = len(plan.queries), snap.rows
    rows = np.full((m, k), -1, np.int64)
    dist = np.full((m, k), np.inf)
    if snap.stage is None or not n:
        return rows, dist
    kc = max(kc if kc is not None else snap.stage.preset.candidates_for(k), k)
    sel = plan.plain
    if len(sel) and snap.deleted is None:
        cand = snap.stage.search(plan.queries[sel], min(kc, n), snap.shardset)
        rows[sel], dist[sel] = rerank(plan.queries[sel], cand, snap.shardset, curv, k)
        for i in sel:
            plan.plans[i].candidates = min(kc, n)
    elif len(sel) and snap.deleted is not None:
        _refilled(snap, plan, sel, snap.deleted, k, kc, curv, rows, dist)
    if len(plan.filtered) and labels is not None:  # search() refuses filter where rows have no labels
        _refilled(snap, plan, plan.filtered, snap.skip_codes(labels), k, kc, curv, rows, dist, filtered=True)
    return rows, dist


def _refilled(snap: Snapshot, plan: Plan, todo: np.ndarray, skip: np.ndarray, k: int, kc: int, curv: float,
              rows: np.ndarray, dist: np.ndarray, filtered: bool = False) -> None:
    """Rerank leaving ``skip`` rows out (unsafe: 1, deleted: 2) into ``rows``/``dist``, widened until ``k``."""
    stage = snap.stage
    assert stage is not None  # ranked() returns early without a stage

    def step(todo: np.ndarray, kc: int, rnd: int) -> np.ndarray:
        skipped = np.zeros(len(todo), dtype=np.int64)
        cand = stage.search(plan.queries[todo], kc, snap.shardset)
        r, d = rerank(plan.queries[todo], cand, snap.shardset, curv, k, skip=skip, skipped=skipped)
        rows[todo], dist[todo] = r, d
        for j, i in enumerate(todo):
            p = plan.plans[i]
            p.candidates, p.refills = kc, rnd
            if filtered:
                p.unsafe_skipped = int(skipped[j])
        return r[:, k - 1] < 0

    n = snap.rows
    left = widen(todo, min(kc, n), n, step, growth=4)
    for i in left if filtered else ():
        plan.plans[i].reason += f" (only {int(np.count_nonzero(rows[i] >= 0))} safe rows exist)"


def deduplicated(snap: Snapshot, plan: Plan, labels: np.ndarray | None, k: int, kc: int | None, curv: float,
                 radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` with near-duplicates within ``radius`` collapsed: rank ``k2 > k`` hits, collapse, widen ``k2``."""
    from ..dedup import collapse  # dedup builds on the search path, not the reverse

    m = len(plan.queries)
    rows = np.full((m, k), -1, np.int64)
    dist = np.full((m, k), np.inf)

    def step(todo: np.ndarray, k2: int, rnd: int) -> np.ndarray:
        sub = plan.subset(todo)
        r2, d2 = ranked(snap, sub, labels, k2, None if kc is None else max(kc, k2), curv)
        r, d, gone = collapse(r2, d2, snap.shardset, curv, radius, k)
        rows[todo], dist[todo] = r, d
        for p, g in zip(sub.plans, gone):
            p.collapsed = int(g)
        # Short of k while the ranked list was full: more rows exist behind the collapsed ones.
        return (r[:, k - 1] < 0) & (r2[:, k2 - 1] >= 0)

    widen(np.arange(m), min(2 * k, max(snap.rows, 1)), snap.rows, step, growth=4)
    return rows, dist
