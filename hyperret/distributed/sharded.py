"""Sharded search on Ray: one index split in parts, each part served by a Ray actor, merged exactly.

The driver validates and plans the queries once (the safety policies, redirection:
:func:`hyperret.safety.planner.make_plan`), then sends every part the planned
queries: moved ones as moved, each marked ``off`` (search as given) or ``filter``
(unsafe rows left out); blocked queries go nowhere. Each actor runs
:meth:`hyperret.Index.search` on its part and returns its ``k`` best with exact
distances and metadata; the driver keeps the ``k`` best of all parts by (distance,
id). A filtered query is filled by every part from its own safe rows, so the merge
is exact whenever each part's search is (``recall=1.0``, or the ``exact`` preset).
Parts must share dimension, curvature, geometry, modality and bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from ..errors import InvalidInputError
from ..safety.bounds import Bounds
from ..safety.planner import make_plan
from ..safety.traversal import HYSAC_ALPHA
from ..search.result import SearchResult
from ..storage.versions import read_latest
from . import remote


class PartServer:
    """A Ray actor's state: one part, opened read-only, searched with already-planned queries."""

    def __init__(self, path: str, device: str = "cpu"):
        from ..index import Index

        self.ix = Index.open(path, device=device)

    def search(self, queries: np.ndarray, k: int, policies: list[str], modalities: list[str],
               options: dict[str, Any]) -> dict[str, Any]:
        """``(ids, distances, unsafe, hits metadata, per-query counters)`` of this part's ``k`` best."""
        self.ix.refresh()
        opts = dict(options)
        columns = opts.pop("columns", None)
        res = self.ix.search(queries, k, policy=policies, modality=modalities, **opts)
        counters = [{"candidates": p.candidates, "unsafe_skipped": p.unsafe_skipped, "scanned": p.scanned,
                     "refills": p.refills} for p in res.plans]
        return {"ids": res.ids, "distances": res.distances, "unsafe": res.unsafe, "exact": res.exact,
                "meta": res.metadata(columns), "counters": counters,
                "version": res.snapshot.manifest.version}


@dataclass(frozen=True)
class MergedHits:
    """Metadata of a merged result's hits, addressed by the positions ``SearchResult.rows`` holds."""

    meta: list[dict[str, Any]]

    def metadata_rows(self, rows: np.ndarray, columns: list[str] | None = None) -> list[dict[str, Any]]:
        return [({} if r < 0 else {c: v for c, v in self.meta[r].items() if columns is None or c in columns})
                for r in rows]


def merge(parts: list[dict[str, Any]], m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """The ``k`` best of every part per query, by (distance, id): ``(ids, distances, unsafe, meta)``.

    ``parts[p]``: ``ids (m, kp)``, ``distances (m, kp)``, ``unsafe (m, kp) | None``, ``meta`` per hit.
    """
    ids = np.concatenate([np.asarray(p["ids"], np.int64).reshape(m, -1) for p in parts], axis=1)
    dist = np.concatenate([np.asarray(p["distances"], np.float32).reshape(m, -1) for p in parts], axis=1)
    unsafe = np.concatenate([np.zeros(p["ids"].shape, bool) if p["unsafe"] is None
                             else np.asarray(p["unsafe"], bool).reshape(m, -1) for p in parts], axis=1)
    part = np.concatenate([np.full(p["ids"].shape[1], n) for n, p in enumerate(parts)])
    col = np.concatenate([np.arange(p["ids"].shape[1]) for p in parts])
    dist = np.where(ids >= 0, dist, np.float32(np.inf))
    width = ids.shape[1]
    if width < k:  # fewer hits than k in all parts together: pad
        pad = ((0, 0), (0, k - width))
        ids, dist, unsafe = (np.pad(ids, pad, constant_values=-1), np.pad(dist, pad, constant_values=np.inf),
                             np.pad(unsafe, pad))
        part, col = np.pad(part, (0, k - width)), np.pad(col, (0, k - width))
    order = np.lexsort((ids, dist), axis=1)[:, :k]  # by distance, ties by the lower id; padding (inf, -1) last
    ids, dist = np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)
    found = ids >= 0
    unsafe = np.take_along_axis(unsafe, order, 1) & found
    meta = [parts[int(part[o])]["meta"][i][int(col[o])] if f else {}
            for i in range(m) for o, f in zip(order[i], found[i])]
    return ids, dist, unsafe, meta


class ShardedIndex:
    """Parts of one collection searched as one index (see the module docstring)."""

    def __init__(self, paths: list[Path], actors: list[Any], manifest: Any, bounds: Bounds | None):
        self.paths, self.actors, self._manifest, self.bounds = paths, actors, manifest, bounds

    @classmethod
    def open(cls, parts: Sequence[str | Path], ray_address: str | None = None, *, device: str = "cpu",
             actor_cpus: float = 0.0) -> ShardedIndex:
        """Open every part on its own Ray actor (``ray_address``: a cluster; None: local Ray)."""
        import ray

        paths = [Path(p) for p in parts]
        if not paths:
            raise InvalidInputError("a sharded index needs at least one part")
        manifests = [read_latest(p) for p in paths]
        first = manifests[0]
        for p, m in zip(paths[1:], manifests[1:]):
            for key in ("dim", "curv", "geometry", "modality", "bounds"):
                if getattr(m, key) != getattr(first, key):
                    raise InvalidInputError(f"part {p} has {key} {getattr(m, key)!r}, {paths[0]} "
                                            f"{getattr(first, key)!r}: parts must agree")
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=actor_cpus)(PartServer)
        actors = [remote.remote(str(p.resolve()), device) for p in paths]
        bounds = Bounds.from_dict(first.bounds) if first.bounds is not None else None
        return cls(paths, actors, first, bounds)

    @property
    def dim(self) -> int:
        return int(self._manifest.dim)

    @property
    def curv(self) -> float:
        return float(self._manifest.curv)

    def search(self, queries: Any, k: int = 10, *, policy: str | Sequence[str] = "off",
               modality: str | Sequence[str] = "text", redirect_mode: str = "geodesic", allow_unsafe: bool = False,
               alpha: float = HYSAC_ALPHA, target: str | float | None = None, recall: float | None = None,
               ef: int | None = None, where: str | None = None, columns: list[str] | None = None) -> SearchResult:
        """As :meth:`hyperret.Index.search`, over every part: planned once, merged exactly by (distance, id)."""

        q = validate.vectors(queries, self.dim, what="query vectors")
        if self._manifest.geometry == "lorentz":
            validate.norms(q, self.curv, what="query vectors")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        plan = make_plan(q, curv=self.curv, policy=policy, modality=modality, index_modality=self._manifest.modality,
                         bounds=self.bounds, redirect_mode=redirect_mode, allow_unsafe=allow_unsafe, alpha=alpha,
                         target=target)
        m = len(q)
        todo = np.sort(np.r_[plan.plain, plan.filtered]).astype(np.int64)
        filtered = set(plan.filtered.tolist())
        pols = ["filter" if i in filtered else "off" for i in todo]
        mods = [plan.plans[i].modality for i in todo]
        options = {"recall": recall, "ef": ef, "where": where, "columns": columns}
        ids = np.full((m, k), -1, np.int64)
        dist = np.full((m, k), np.inf, np.float32)
        unsafe = np.zeros((m, k), bool)
        meta: list[dict[str, Any]] = [{} for _ in range(m * k)]
        exact = True
        if len(todo):
            outs = remote.get([a.search.remote(plan.queries[todo], int(k), pols, mods, options) for a in self.actors])
            exact = all(o["exact"] for o in outs)
            mi, md, mu, mm = merge(outs, len(todo), int(k))
            ids[todo], dist[todo], unsafe[todo] = mi, md, mu
            for n, i in enumerate(todo):
                meta[i * k : (i + 1) * k] = mm[n * k : (n + 1) * k]
                p = plan.plans[i]
                p.candidates = sum(o["counters"][n]["candidates"] for o in outs)
                p.unsafe_skipped = sum(o["counters"][n]["unsafe_skipped"] for o in outs)
                p.scanned = sum(o["counters"][n]["scanned"] for o in outs)
        for p, r in zip(plan.plans, ids):
            p.returned = int(np.count_nonzero(r >= 0))
        rows = np.where(ids >= 0, np.arange(m * k).reshape(m, k), -1)
        return SearchResult(ids=ids, distances=dist, rows=rows, exact=exact, snapshot=MergedHits(meta),  # type: ignore[arg-type]
                            unsafe=unsafe if self.bounds is not None else None, plans=plan.plans)

    def close(self) -> None:
        """Let the actors go."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
