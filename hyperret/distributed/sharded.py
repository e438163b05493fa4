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

The parts can be named in a *parts file* (``{"format": "hyperret-parts", "parts":
["part0", "/data/part1"]}``; relative paths from the file's folder), which
``hyperret serve`` serves as one index named by the file. ``dedup`` at search time
collapses near copies across the parts: the parts send their hits' vectors and the
driver runs the one-index collapse over the merged list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from ..errors import InvalidInputError
from ..safety.bounds import Bounds, as_bounds
from ..safety.classify import Classification, classify
from ..safety.planner import make_plan
from ..safety.traversal import HYSAC_ALPHA
from ..search.result import SearchResult
from ..storage.versions import read_latest
from . import remote
from .parts import PartsManifest, check_parts, read_parts_file


class PartServer:
    """A Ray actor's state: one part, opened read-only, searched with already-planned queries."""

    def __init__(self, path: str, device: str = "cpu"):
        from ..index import Index

        self.ix = Index.open(path, device=device)

    def info(self) -> dict[str, Any]:
        """The part's :meth:`hyperret.Index.info` as its actor sees it (its device, its version)."""
        self.ix.refresh()
        return self.ix.info()

    def search(self, queries: np.ndarray, k: int, policies: list[str], modalities: list[str],
               options: dict[str, Any]) -> dict[str, Any]:
        """``(ids, distances, unsafe, hits metadata, per-query counters)`` of this part's ``k`` best."""
        self.ix.refresh()
        opts = dict(options)
        columns = opts.pop("columns", None)
        with_vectors = opts.pop("vectors", False)
        res = self.ix.search(queries, k, policy=policies, modality=modalities, **opts)
        counters = [{"candidates": p.candidates, "unsafe_skipped": p.unsafe_skipped, "scanned": p.scanned,
                     "refills": p.refills} for p in res.plans]
        out = {"ids": res.ids, "distances": res.distances, "unsafe": res.unsafe, "exact": res.exact,
               "meta": res.metadata(columns), "counters": counters, "version": res.snapshot.manifest.version}
        if with_vectors:  # the hits' space components, from the snapshot searched (for the driver's dedup)
            vec = np.zeros((*res.ids.shape, self.ix.dim), np.float32)
            found = res.rows >= 0
            vec[found] = res.snapshot.shardset.gather(res.rows[found])
            out["vectors"] = vec
        return out


@dataclass(frozen=True)
class MergedHits:
    """Metadata of a merged result's hits, addressed by the positions ``SearchResult.rows`` holds."""

    meta: list[dict[str, Any]]
    manifest: PartsManifest | None = None

    def metadata_rows(self, rows: np.ndarray, columns: list[str] | None = None) -> list[dict[str, Any]]:
        return [({} if r < 0 else {c: v for c, v in self.meta[r].items() if columns is None or c in columns})
                for r in rows]


@dataclass(frozen=True)
class Merged:
    """The parts' hits merged per query: ``ids``, ``distances``, ``unsafe`` ``(m, k)``, ``meta`` per hit
    (flattened), and the hits' ``vectors (m, k, D)`` when the parts sent theirs."""

    ids: np.ndarray
    distances: np.ndarray
    unsafe: np.ndarray
    meta: list[dict[str, Any]]
    vectors: np.ndarray | None = None


def merge_hits(parts: list[dict[str, Any]], m: int, k: int) -> Merged:
    """The ``k`` best of every part per query, by (distance, id).

    ``parts[p]``: ``ids (m, kp)``, ``distances (m, kp)``, ``unsafe (m, kp) | None``, ``meta`` per hit,
    optionally ``vectors (m, kp, D)``.
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
    src = [(i, int(part[o]), int(col[o])) for i in range(m) for o in order[i]]
    meta = [parts[p]["meta"][i][c] if f else {} for (i, p, c), f in zip(src, found.ravel())]
    vectors = None
    if parts and all("vectors" in p for p in parts):
        vectors = np.zeros((m * k, parts[0]["vectors"].shape[-1]), np.float32)
        for j, ((i, p, c), f) in enumerate(zip(src, found.ravel())):
            if f:
                vectors[j] = parts[p]["vectors"][i][c]
        vectors = vectors.reshape(m, k, -1)
    return Merged(ids, dist, unsafe, meta, vectors)


def merge(parts: list[dict[str, Any]], m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """:func:`merge_hits` as ``(ids, distances, unsafe, meta)``."""
    r = merge_hits(parts, m, k)
    return r.ids, r.distances, r.unsafe, r.meta


def collapsed(hits: Merged, curv: float, radius: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged hits ``(m, k2)`` with near copies collapsed as one index collapses them (the same kernel,
    :func:`hyperret.dedup.collapse.collapse`) -> ``(positions (m, k), distances (m, k), collapsed (m,))``;
    a position indexes the flattened merged hits, -1 where fewer remain."""
    from ..dedup.collapse import collapse
    from ..storage.shardset import ShardSet

    assert hits.vectors is not None  # the parts were asked for their hits' vectors
    m, k2 = hits.ids.shape
    pos = np.where(hits.ids >= 0, np.arange(m * k2).reshape(m, k2), -1)
    rows = ShardSet([hits.vectors.reshape(m * k2, -1)], hits.vectors.shape[-1])
    return collapse(pos, hits.distances.astype(np.float64), rows, curv, radius, k)


class ShardedIndex:
    """Parts of one collection searched as one index (see the module docstring)."""

    def __init__(self, paths: list[Path], actors: list[Any], manifest: PartsManifest, bounds: Bounds | None,
                 path: Path | None = None):
        self.paths, self.actors, self._manifest, self.bounds = paths, actors, manifest, bounds
        self.path = path if path is not None else paths[0]  # the parts file, if the parts came from one

    @classmethod
    def open(cls, parts: str | Path | Sequence[str | Path], ray_address: str | None = None, *,
             device: str = "cpu", actor_cpus: float = 0.0, gpus_per_part: float = 1.0) -> ShardedIndex:
        """Open every part on its own Ray actor (``ray_address``: a cluster; None: local Ray).

        ``parts``: the part directories, or a parts file naming them. With ``device="cuda"``
        each actor asks Ray for ``gpus_per_part`` GPUs (0: none reserved) and keeps its
        part's rows on the device.
        """
        import ray

        source = None
        if isinstance(parts, (str, Path)):
            source = Path(parts)
            paths = read_parts_file(source) if source.is_file() else [source]
            source = source if source.is_file() else None
        else:
            paths = [Path(p) for p in parts]
        manifests = check_parts(paths)
        first = manifests[0]
        remote.init(ray_address)
        gpus = gpus_per_part if device.startswith("cuda") else 0
        if gpus and float(ray.cluster_resources().get("GPU", 0)) < gpus:  # an actor would wait forever
            raise InvalidInputError(f"device {device!r}: the Ray cluster has no GPU for the parts' actors "
                                    f"(gpus_per_part=0 runs them on whatever GPU their node has)")
        server = ray.remote(num_cpus=actor_cpus, num_gpus=gpus)(PartServer)
        actors = [server.remote(str(p.resolve()), "cuda" if gpus else device) for p in paths]
        bounds = Bounds.from_dict(first.bounds) if first.bounds is not None else None
        return cls(paths, actors, PartsManifest.of(paths, manifests), bounds, source)

    @property
    def dim(self) -> int:
        return int(self._manifest.dim)

    @property
    def curv(self) -> float:
        return float(self._manifest.curv)

    @property
    def manifest(self) -> PartsManifest:
        return self._manifest

    @property
    def version(self) -> int:
        return self._manifest.version

    def __len__(self) -> int:
        return self._manifest.rows

    def refresh(self) -> int:
        """Read the parts' latest manifests (their actors refresh on every search); returns :attr:`version`."""
        self._manifest = PartsManifest.of(self.paths, [read_latest(p) for p in self.paths])
        return self.version

    def info(self) -> dict[str, Any]:
        """A summary: the parts' common fields, their sums, and each part's path, version and rows."""
        m = self._manifest
        return {"path": str(self.path), "sharded": True, "parts": m.parts, "version": m.version, "rows": m.rows,
                "deleted_rows": m.deleted_rows, "dim": m.dim, "curv": m.curv, "geometry": m.geometry,
                "modality": m.modality, "metadata_columns": dict(m.metadata_columns),
                "bounds": self.bounds.to_dict() if self.bounds is not None else None,
                "producer": dict(m.producer)}

    def part_info(self) -> list[dict[str, Any]]:
        """Each part's :meth:`hyperret.Index.info`, from its actor (where it searches: ``device``)."""
        return list(remote.get([a.info.remote() for a in self.actors]))

    def classify(self, vectors: Any, modality: str | Sequence[str] = "image",
                 bounds: Bounds | dict[str, Any] | str | Path | None = None) -> Classification:
        """As :meth:`hyperret.Index.classify` (the parts share their bounds; nothing goes to the actors)."""
        x = validate.vectors(vectors, self.dim)
        b = as_bounds(bounds) or self.bounds
        if b is None:
            raise InvalidInputError("no safety bounds: the parts were built without bounds (pass bounds=)")
        return classify(x, b, self.curv, modality)

    def search(self, queries: Any, k: int = 10, *, policy: str | Sequence[str] = "off",
               modality: str | Sequence[str] = "text", redirect_mode: str = "geodesic", allow_unsafe: bool = False,
               alpha: float = HYSAC_ALPHA, target: str | float | None = None, recall: float | None = None,
               ef: int | None = None, nprobe: int | None = None, candidates: int | None = None,
               where: str | None = None, columns: list[str] | None = None, dedup: bool | float = False) -> SearchResult:
        """As :meth:`hyperret.Index.search`, over every part: planned once, merged exactly by (distance, id).

        ``dedup``: the parts send their hits' vectors and the driver collapses near copies
        across the parts as one index would, widening the parts' lists while short of ``k``.
        """
        radius = self._dedup_radius(dedup)
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
        options = {"recall": recall, "ef": ef, "nprobe": nprobe, "candidates": candidates, "where": where,
                   "columns": columns}
        ids = np.full((m, k), -1, np.int64)
        dist = np.full((m, k), np.inf, np.float32)
        unsafe = np.zeros((m, k), bool)
        meta: list[dict[str, Any]] = [{} for _ in range(m * k)]
        exact = True
        live = max(len(self), 1)
        k2 = int(k) if radius is None else min(2 * int(k), live)  # as one index: 2k, then 4x while short
        left = np.arange(len(todo))  # positions in todo still to answer
        versions: list[int] = []
        while len(left):
            sub = todo[left]
            opts = {**options, "vectors": radius is not None}
            outs = remote.get([a.search.remote(plan.queries[sub], k2, [pols[j] for j in left],
                                               [mods[j] for j in left], opts) for a in self.actors])
            versions = [o["version"] for o in outs]
            exact = exact and all(o["exact"] for o in outs)
            hits = merge_hits(outs, len(sub), k2)
            if radius is None:
                pos = np.arange(len(sub) * k).reshape(len(sub), k)
                gone = np.zeros(len(sub), np.int64)
                short = np.zeros(len(sub), bool)
            else:
                pos, _, gone = collapsed(hits, self.curv, radius, int(k))
                short = (pos[:, -1] < 0) & (hits.ids[:, -1] >= 0)  # the lists were full: more rows behind
            found = pos >= 0
            flat = np.where(found, pos, 0)
            ids[sub] = np.where(found, hits.ids.ravel()[flat], -1)
            dist[sub] = np.where(found, hits.distances.ravel()[flat], np.float32(np.inf))
            unsafe[sub] = hits.unsafe.ravel()[flat] & found
            for n, i in enumerate(sub):
                meta[i * k : (i + 1) * k] = [hits.meta[j] if f else {} for j, f in zip(flat[n], found[n])]
                p = plan.plans[i]
                p.candidates = sum(o["counters"][n]["candidates"] for o in outs)
                p.unsafe_skipped = sum(o["counters"][n]["unsafe_skipped"] for o in outs)
                p.scanned = sum(o["counters"][n]["scanned"] for o in outs)
                p.collapsed = int(gone[n])
            if k2 >= live:
                break
            left, k2 = left[short], min(4 * k2, live)
        for p, r in zip(plan.plans, ids):
            p.returned = int(np.count_nonzero(r >= 0))
        rows = np.where(ids >= 0, np.arange(m * k).reshape(m, k), -1)
        if versions:
            self._manifest = self._manifest_at(versions)
        return SearchResult(ids=ids, distances=dist, rows=rows, exact=exact,
                            snapshot=MergedHits(meta, self._manifest),  # type: ignore[arg-type]
                            unsafe=unsafe if self.bounds is not None else None, plans=plan.plans)

    def _dedup_radius(self, dedup: bool | float | None) -> float | None:
        """The collapse radius ``dedup`` asks for: True takes the parts' last applied dedup radius when
        they all record the same one, else :data:`hyperret.dedup.collapse.DEFAULT_SEARCH_RADIUS`."""
        if dedup is False or dedup is None:
            return None
        if dedup is True:
            from ..dedup.collapse import DEFAULT_SEARCH_RADIUS

            r = self._manifest.dedup_radius  # read with the manifests, not per search
            return r if r is not None else DEFAULT_SEARCH_RADIUS
        return validate.radius(dedup, "dedup radius")

    def _manifest_at(self, versions: list[int]) -> PartsManifest:
        """The manifest with the versions the parts just searched (re-read when one moved on)."""
        if versions == [p["version"] for p in self._manifest.parts]:
            return self._manifest
        return PartsManifest.of(self.paths, [read_latest(p) for p in self.paths])

    def close(self) -> None:
        """Let the actors go."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
