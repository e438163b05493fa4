"""Searching: the safety plan, the candidate stage and the exact rerank, refilled to ``k``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from ..errors import InvalidInputError
from ..geometry.cosine import cosine_distance, unit_rows
from ..safety.bounds import Bounds, as_bounds
from ..safety.classify import Classification, classify
from ..safety.planner import Plan, make_plan
from ..safety.traversal import HYSAC_ALPHA
from ..search.rerank import rerank
from ..search.result import SearchResult
from ..storage.snapshot import Snapshot
from .writer import Writes


class Searches(Writes):
    """``search`` and ``classify``."""

    # --------------------------------------------------------------- search
    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        candidates: int | None = None,
        policy: str | Sequence[str] = "off",
        modality: str | Sequence[str] = "text",
        redirect_mode: str = "geodesic",
        bounds: Bounds | dict[str, Any] | str | Path | None = None,
        allow_unsafe: bool = False,
        alpha: float = HYSAC_ALPHA,
        target: str | float | None = None,
        dedup: bool | float = False,
    ) -> SearchResult:
        """The ``k`` nearest rows of each query ``(m, dim)`` by exact geodesic distance, under a safety policy.

        ``policy``: ``off`` | ``redirect`` | ``filter`` | ``block`` | ``outward``, one
        for all queries or a list with one per query (see :mod:`hyperret.safety.planner`).
        ``modality``: the queries' modality (``text`` or ``image``; one or one per
        query), which picks the threshold that classifies them. ``redirect_mode``:
        ``geodesic`` (default) or ``hysac`` (the reference formula, ``alpha``).
        ``target``: the bounds statistic (or a radius) the geodesic moves aim for.
        ``bounds``: override the index's bounds for this call. ``allow_unsafe``:
        required for ``outward``. ``candidates`` overrides how many rows the
        candidate stage proposes for the exact rerank (default from the preset).
        ``dedup``: collapse near-duplicates among each query's hits, keeping the
        nearest (a hit within the radius of a nearer kept hit is dropped, and more
        are fetched to fill ``k``). ``True`` uses the radius of the index's last
        applied :meth:`dedup` (else ``hyperret.dedup.DEFAULT_SEARCH_RADIUS``); a
        number is the radius itself.
        The result's ``.unsafe`` labels every hit (when bounds are known) and
        ``.plans`` says what happened to each query.
        """
        q = validate.vectors(queries, self.dim, what="query vectors")
        if self.geometry == "cosine":
            q = unit_rows(q, "query vectors")
            if any(p != "off" for p in ([policy] if isinstance(policy, str) else policy)):
                raise InvalidInputError("safety policies need a hyperbolic (HySAC) index; this one is cosine")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        override = as_bounds(bounds)
        dedup_radius = self._search_dedup_radius(dedup)
        with self._rw.read():
            snap = self._snap
            b = override if override is not None else self.bounds
            plan = make_plan(q, curv=self.curv, policy=policy, modality=modality, index_modality=self.modality,
                             bounds=b, redirect_mode=redirect_mode, allow_unsafe=allow_unsafe, alpha=alpha,
                             target=target)
            labels = None
            if b is not None:
                unlabelled = [m for m in self._row_modalities() if not b.can_classify(m)]
                if not unlabelled:
                    labels = snap.unsafe_rows(override)
                elif len(plan.filtered):  # HySAC's minimal bounds redirect, but cannot label rows
                    b.threshold(unlabelled[0], why=f"policy 'filter' (labelling the {unlabelled[0]} rows)")
            if candidates is not None and candidates < k:
                raise InvalidInputError(f"candidates ({candidates}) must be at least k ({k})")
            if dedup_radius is None:
                rows, dist = self._ranked(snap, plan, labels, int(k), candidates)
            else:
                rows, dist = self._deduplicated(snap, plan, labels, int(k), candidates, dedup_radius)
            exact = snap.stage.is_exhaustive if snap.stage is not None else True
            for p, r in zip(plan.plans, rows):
                p.returned = int(np.count_nonzero(r >= 0))
            hit_unsafe = None
            if labels is not None:
                hit_unsafe = np.where(rows >= 0, labels[np.maximum(rows, 0)] if len(labels) else False, False)
        if self.geometry == "cosine":
            dist = cosine_distance(dist)
        return SearchResult(
            ids=snap.ids_of(rows), distances=dist.astype(np.float32), rows=rows, exact=exact, snapshot=snap,
            unsafe=hit_unsafe, plans=plan.plans,
        )

    def _ranked(self, snap: Snapshot, plan: Plan, labels: np.ndarray | None, k: int,
                candidates: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``k`` rows and distances ``(m, k)`` of each planned query (blocked: none)."""
        m, n = len(plan.queries), snap.rows
        rows = np.full((m, k), -1, np.int64)
        dist = np.full((m, k), np.inf)
        if snap.stage is None or not n:
            return rows, dist
        kc = candidates if candidates is not None else snap.stage.preset.candidates_for(k)
        kc = max(kc, k)
        sel = plan.plain
        if len(sel) and snap.deleted is None:
            cand = snap.stage.search(plan.queries[sel], min(kc, n), snap.shardset)
            rows[sel], dist[sel] = rerank(plan.queries[sel], cand, snap.shardset, self.curv, k)
            for i in sel:
                plan.plans[i].candidates = min(kc, n)
        elif len(sel) and snap.deleted is not None:
            self._refill_search(snap, plan, sel, snap.deleted, k, kc, rows, dist)
        if len(plan.filtered) and labels is not None:  # search() refuses filter where rows have no labels
            self._refill_search(snap, plan, plan.filtered, snap.skip_codes(labels), k, kc, rows, dist,
                                filtered=True)
        return rows, dist

    def _deduplicated(self, snap: Snapshot, plan: Plan, labels: np.ndarray | None, k: int,
                      candidates: int | None, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` with near-duplicates collapsed: rank ``k2 > k`` hits, collapse, widen ``k2`` where short."""
        from ..dedup import collapse

        m = len(plan.queries)
        rows = np.full((m, k), -1, np.int64)
        dist = np.full((m, k), np.inf)
        todo = np.arange(m)
        k2 = min(2 * k, max(snap.rows, 1))
        while len(todo):
            sub = plan.subset(todo)
            r2, d2 = self._ranked(snap, sub, labels, k2, None if candidates is None else max(candidates, k2))
            r, d, gone = collapse(r2, d2, snap.shardset, self.curv, radius, k)
            rows[todo], dist[todo] = r, d
            for p, g in zip(sub.plans, gone):
                p.collapsed = int(g)
            # Short of k while the ranked list was full: more rows exist behind the collapsed ones.
            short = (r[:, k - 1] < 0) & (r2[:, k2 - 1] >= 0)
            if k2 >= snap.rows or not short.any():
                break
            todo, k2 = todo[short], min(snap.rows, k2 * 4)
        return rows, dist

    def _search_dedup_radius(self, dedup: bool | float) -> float | None:
        if dedup is False or dedup is None:
            return None
        if dedup is True:
            from ..dedup import DEFAULT_SEARCH_RADIUS

            rec = self.manifest.dedup
            return float(rec["radius"]) if rec and "radius" in rec else DEFAULT_SEARCH_RADIUS
        return validate.radius(dedup, "dedup radius")

    def _refill_search(self, snap: Snapshot, plan: Plan, todo: np.ndarray, skip: np.ndarray, k: int, kc: int,
                       rows: np.ndarray, dist: np.ndarray, filtered: bool = False) -> None:
        """Rerank leaving ``skip`` rows out (unsafe: 1, deleted: 2), asking the candidate stage for more
        until ``k`` hits or every row was seen."""
        n = snap.rows
        kc = min(kc, n)
        rounds = 0
        stage = snap.stage
        while len(todo) and stage is not None:  # _ranked returned early without a stage
            skipped = np.zeros(len(todo), dtype=np.int64)
            cand = stage.search(plan.queries[todo], kc, snap.shardset)
            r, d = rerank(plan.queries[todo], cand, snap.shardset, self.curv, k, skip=skip, skipped=skipped)
            rows[todo], dist[todo] = r, d
            for j, i in enumerate(todo):
                p = plan.plans[i]
                p.candidates, p.refills = kc, rounds
                if filtered:
                    p.unsafe_skipped = int(skipped[j])
            short = r[:, k - 1] < 0
            if kc >= n or not short.any():
                for s in np.flatnonzero(short) if filtered else ():
                    plan.plans[todo[s]].reason += f" (only {int(np.count_nonzero(r[s] >= 0))} safe rows exist)"
                break
            todo = todo[short]
            kc = min(n, kc * 4)
            rounds += 1

    def classify(self, vectors: Any, modality: str | Sequence[str] = "image",
                 bounds: Bounds | dict[str, Any] | str | Path | None = None) -> Classification:
        """Classify space components ``(n, dim)`` as safe/unsafe under the index's (or given) bounds."""
        x = validate.vectors(vectors, self.dim)
        b = as_bounds(bounds) or self.bounds
        if b is None:
            raise InvalidInputError("no safety bounds: build the index with bounds (--bounds) or pass bounds=")
        return classify(x, b, self.curv, modality)

