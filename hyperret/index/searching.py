"""Searching: validate, plan the safety policy, run the plan (:mod:`hyperret.search.executor`), label the hits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from ..errors import InvalidInputError
from ..geometry.cosine import cosine_distance, unit_rows
from ..safety.bounds import Bounds, as_bounds
from ..safety.classify import Classification, classify
from ..safety.planner import make_plan
from ..safety.traversal import HYSAC_ALPHA
from ..search.executor import Settings, deduplicated, ranked
from ..search.predicates import where_mask
from ..search.recall import MIN_ROWS as MIN_CALIBRATED_ROWS
from ..search.recall import Calibration
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
        recall: float | None = None,
        ef: int | None = None,
        nprobe: int | None = None,
        where: str | None = None,
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
        ``recall``: the recall@10 to reach, as this index measured it on its own rows
        (``info()["recall"]``): the smallest setting that reached it plus a 0.01 margin
        (:data:`hyperret.search.recall.MARGIN`), or the exhaustive scan where none did.
        ``ef`` (graphs) / ``nprobe`` (IVF) set the knob directly.
        Neither: the preset's ``default_recall`` (``fast``: 0.98). Whatever is asked,
        the exhaustive scan answers where it was measured faster (small indexes).
        ``where``: a predicate on the metadata columns (:mod:`hyperret.search.predicates`),
        e.g. ``"width > 500 and not unsafe_label"``; only matching rows are returned.
        ``k`` above the live rows is capped to them.
        The result's ``.unsafe`` labels every hit (when bounds are known) and
        ``.plans`` says what happened to each query.
        """
        q = validate.vectors(queries, self.dim, what="query vectors")
        if self.geometry == "lorentz":
            validate.norms(q, self.curv, what="query vectors")
        if self.geometry == "cosine":
            q = unit_rows(q, "query vectors")
            if any(p != "off" for p in ([policy] if isinstance(policy, str) else policy)):
                raise InvalidInputError("safety policies need a hyperbolic (HySAC) index; this one is cosine")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        override = as_bounds(bounds)
        dedup_radius = self._search_dedup_radius(dedup)
        snap = self._snap
        k = int(min(k, max(snap.live, 1)))  # more than the live rows cannot be returned
        settings = self._settings(snap, recall, ef, nprobe, where)
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
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer))):
            raise InvalidInputError(f"candidates must be an integer, got {candidates!r}")
        if candidates is not None and candidates < k:
            raise InvalidInputError(f"candidates ({candidates}) must be at least k ({k})")
        kernels = None
        exact = snap.stage.is_exhaustive if snap.stage is not None else True
        if self._on_device is not None:  # the GPU scans every row (exact) unless a knob asks for the structure
            kernels = self._on_device.exact(snap)
            if ef is None and nprobe is None:
                settings, exact = replace(settings, scan=True), True
        if dedup_radius is None:
            rows, dist = ranked(snap, plan, labels, k, candidates, self.curv, settings, kernels)
        else:
            rows, dist = deduplicated(snap, plan, labels, k, candidates, self.curv, dedup_radius, settings, kernels)
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

    # --------------------------------------------------------------- device
    def place(self, device: str, *, storage: str = "float32", scan: str = "auto") -> None:
        """Hold the rows on GPU ``device`` (``cuda`` / ``cuda:N``) and search there; ``"cpu"`` lets them go.

        See :meth:`open` (``device``, ``device_storage``, ``gpu_scan``). The rows are
        uploaded now; commits and :meth:`refresh` upload their new shards only.
        """
        if device == "cpu":
            self._on_device = None
            return
        from .placement import OnDevice

        on = OnDevice(device, self.dim, self.curv, storage=storage, scan=scan)
        on.exact(self._snap)  # the upload happens here, not in the first query
        self._on_device = on

    @property
    def device(self) -> str:
        """Where this index searches: ``cpu`` or ``cuda:N``."""
        return "cpu" if self._on_device is None else f"cuda:{self._on_device.device.ordinal}"

    def device_memory(self) -> dict[str, Any] | None:
        """The GPU memory this index holds (rows, norms, capacity) and the device's free/total; None on the CPU."""
        return None if self._on_device is None else self._on_device.memory()

    def _settings(self, snap: Snapshot, recall: float | None, ef: int | None, nprobe: int | None,
                  where: str | None) -> Settings:
        """The knob (or the scan) a search runs with, and the rows ``where`` allows."""
        for name, v in (("ef", ef), ("nprobe", nprobe)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 1 << 16):
                raise InvalidInputError(f"{name} must be an integer in [1, 65536], got {v!r}")
        if recall is not None and (isinstance(recall, bool) or not isinstance(recall, (int, float))
                                   or not 0.0 < recall <= 1.0):
            raise InvalidInputError(f"recall must be a number in (0, 1], got {recall!r}")
        allowed = None
        if where is not None:
            if not isinstance(where, str):
                raise InvalidInputError(f"where must be a string, got {type(where).__name__}")
            if where.strip():
                allowed = where_mask(snap, where)
        stage = snap.stage
        if stage is None:
            return Settings(allowed=allowed)
        cal = self._calibration(snap)
        scan_row_s = cal.scan_seconds / cal.rows if cal is not None and cal.rows else 0.0

        def walk_s(setting: int | None) -> float:
            if cal is None or setting is None or not cal.settings or cal.knob != stage.knob:
                return 0.0
            return float(np.interp(setting, cal.settings, cal.seconds))

        if ef is not None or nprobe is not None:
            setting = ef if stage.knob == "ef" else nprobe if stage.knob == "nprobe" else None
            return Settings(ef=ef, nprobe=nprobe, allowed=allowed, walk_seconds=walk_s(setting),
                            scan_row_seconds=scan_row_s)
        if stage.is_exhaustive or snap.live < MIN_CALIBRATED_ROWS:
            return Settings(scan=True, allowed=allowed)  # the scan is exact and, this small, the fastest
        target = recall if recall is not None else (stage.preset.default_recall or None)
        if cal is None or cal.knob != stage.knob or target is None:
            # not measured (or measured on another structure): the preset's knobs; an explicit
            # recall is then kept by the scan
            return Settings(scan=recall is not None, allowed=allowed)
        setting = cal.setting_for(target)
        if setting is None:
            return Settings(scan=True, allowed=allowed)
        return Settings(ef=setting if cal.knob == "ef" else None, nprobe=setting if cal.knob == "nprobe" else None,
                        scan=cal.prefer_scan(setting), allowed=allowed, walk_seconds=walk_s(setting),
                        scan_row_seconds=scan_row_s)

    def _calibration(self, snap: Snapshot) -> Calibration | None:
        """The snapshot's recall curve, checked once per snapshot (a search reads it on every call)."""
        cached = getattr(self, "_calibration_cache", None)
        if cached is not None and cached[0] is snap.manifest:
            return cached[1]
        cal = Calibration.from_dict(snap.manifest.calibration)
        self._calibration_cache = (snap.manifest, cal)  # one reference swap: safe across searching threads
        return cal

    def _search_dedup_radius(self, dedup: bool | float) -> float | None:
        if dedup is False or dedup is None:
            return None
        if dedup is True:
            from ..dedup import DEFAULT_SEARCH_RADIUS

            rec = self.manifest.dedup
            return float(rec["radius"]) if rec and "radius" in rec else DEFAULT_SEARCH_RADIUS
        return validate.radius(dedup, "dedup radius")

    def classify(self, vectors: Any, modality: str | Sequence[str] = "image",
                 bounds: Bounds | dict[str, Any] | str | Path | None = None) -> Classification:
        """Classify space components ``(n, dim)`` as safe/unsafe under the index's (or given) bounds."""
        x = validate.vectors(vectors, self.dim)
        b = as_bounds(bounds) or self.bounds
        if b is None:
            raise InvalidInputError("no safety bounds: build the index with bounds (--bounds) or pass bounds=")
        return classify(x, b, self.curv, modality)

