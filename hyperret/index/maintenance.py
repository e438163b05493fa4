"""Reads by id, dedup, refresh, verification and the summary of an index."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .. import validate
from ..errors import InvalidInputError
from ..safety.bounds import Bounds
from ..search.recall import Calibration
from ..search.segments import Segments
from ..storage.shards import SHARD_DIR
from ..storage.shardset import ShardSet
from ..storage.snapshot import Snapshot
from ..storage.versions import commit_manifest, list_versions, read_latest, remove_versions
from .base import Progress
from .compaction import CompactionPlan, compaction_shard_rows, merged_structure, plan_compaction, write_compacted

if TYPE_CHECKING:
    from ..dedup import DedupResult

from .searching import Searches


class Maintains(Searches):
    """``get``, ``vectors``, ``ids``, ``dedup``, ``apply_dedup``, ``refresh``, ``verify``, ``info``."""

    # ---------------------------------------------------------------- dedup
    def dedup(
        self,
        radius: float | None = None,
        *,
        unsafe_only: bool = False,
        auto: bool = False,
        grouping: str = "components",
        keep: str = "centre",
        apply: bool = False,
        method: str = "cells",
        candidates: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        ray: bool = False,
        ray_address: str | None = None,
    ) -> DedupResult:
        """Groups of exact and near-duplicate rows; with ``apply``, delete all but one of each group.

        ``radius``: geodesic distance within which two rows are near copies (or
        ``auto=True``: picked from a gap in the nearest-neighbour distances; the
        result's ``summary["auto"]`` says what and why). Exact copies share a content
        hash (the ``sha256`` column when the index has one, else the vector's bytes).
        ``unsafe_only``: only rows the index's bounds label unsafe. ``grouping``:
        ``components`` (connected components: may chain) or ``star`` (every member
        within ``radius`` of its representative). ``keep``: the representative rule,
        ``centre`` (nearest the group's Lorentzian centroid), ``lowest-id``,
        ``min:COLUMN`` or ``max:COLUMN``; ties by lowest id. ``apply`` (writer only)
        deletes every non-representative and commits; the previous snapshot stays
        whole until that commit. ``method``: ``cells`` (default; an exact join that
        finds every pair within the radius) or ``stage`` (each row's neighbours from
        the index's candidate stage, ``candidates`` of them, doubled where the radius
        holds them all; as complete as the stage's recall). Returns a
        :class:`~hyperret.dedup.DedupResult`. ``ray`` (cells method): join the cells on Ray
        tasks (local Ray, or the cluster at ``ray_address``; the ``ray`` extra); the same groups.
        """
        from ..dedup import DEFAULT_CANDIDATES, dedup

        join = None
        if ray or ray_address is not None:
            if method != "cells":
                raise InvalidInputError("dedup on Ray runs the cells method")
            from ..distributed.dedup import RayCellJoin

            join = RayCellJoin(ray_address)

        if apply:
            self._check_can_apply()  # before the long run, not after it
        snap = self._snap
        labels = snap.unsafe_rows() if unsafe_only and self.bounds is not None else None
        result = dedup(snap, radius=radius, auto=auto, unsafe_only=unsafe_only, labels=labels,
                       grouping=grouping, keep=keep, method=method,
                       candidates=DEFAULT_CANDIDATES if candidates is None else candidates, progress=progress,
                       join=join)
        result.summary["version"] = snap.manifest.version
        result.summary["applied"] = False
        if join is not None:  # what the Ray tasks sent the driver: forest edges, not every confirmed pair
            result.summary["ray"] = {"tasks": join.tasks, "pairs_confirmed": join.pairs_confirmed,
                                     "edges_to_driver": join.pairs_received}
        if apply:
            self.apply_dedup(result)
        return result

    def apply_dedup(self, result: DedupResult) -> int:
        """Delete every non-representative of ``result`` (from :meth:`dedup` on this snapshot) and commit.

        Records the run (radius, rule, counts) in the manifest, where ``search(dedup=True)``
        takes its radius from. Returns the new version.
        """
        s = result.summary
        with self._mutex:
            self._check_can_apply()
            if s.get("version") != self.version:
                raise InvalidInputError(f"the dedup result is of version {s.get('version')}, the index is at "
                                        f"{self.version}: run dedup again")
            self._snap.verify()  # never commit a deletion on top of a shard that fails its checksum
            ids = result.to_delete
            if len(ids):
                self.delete(ids)
            record = {k: s[k] for k in ("radius", "radius_source", "method", "grouping", "keep", "unsafe_only",
                                        "groups", "to_delete")}
            record["version"] = s["version"]
            self._manifest_changes["dedup"] = record
            version = self.commit()
        s["applied"], s["applied_version"] = True, version
        return version

    def _check_can_apply(self) -> None:
        self._require_writable()
        if self.pending or self.pending_deletes:
            raise InvalidInputError("the index has uncommitted changes: commit or roll back before applying a dedup")

    # ---------------------------------------------------------------- reads
    def get(self, ids: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """Stored rows by id (every column unless ``columns``); unknown ids are an error."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        snap = self._snap
        rows = snap.rows_of(ids)
        if (rows < 0).any():
            raise InvalidInputError(f"id {int(ids[rows < 0][0])} is not in the index")
        return snap.take(rows, list(columns) if columns else None)

    def vectors(self, ids: Any) -> np.ndarray:
        """Stored space components of ``ids`` -> ``(n, dim)`` float32."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        rows = self._snap.rows_of(ids)
        if (rows < 0).any():
            raise InvalidInputError(f"id {int(ids[rows < 0][0])} is not in the index")
        return self._snap.shardset.gather(rows)

    def ids(self) -> np.ndarray:
        """Every id in the snapshot, in row order -> ``(n,)`` int64."""
        return self._snap.all_ids()

    def export(self, out: str | Path, *, force: bool = False, columns: Sequence[str] | None = None,
               progress: Progress | None = None) -> dict[str, Any]:
        """Write the live rows (``id``, ``embedding``, metadata) to the Parquet file ``out``.

        Re-indexable as it is (:mod:`hyperret.index.export`); ``force`` replaces an
        existing file; ``columns`` picks metadata columns (default: all).
        """
        from .export import export_parquet

        return export_parquet(self._snap, out, force=force, columns=None if columns is None else list(columns),
                              progress=progress)

    def refresh(self) -> bool:
        """Move a read-only handle to the newest committed snapshot; True if it changed."""
        if self.writable:
            return False
        if read_latest(self.path).version == self._snap.manifest.version:
            return False  # one small file read: nothing committed since
        self._snap = Snapshot.open(self.path)  # searches go on with the old snapshot meanwhile
        if self._on_device is not None:
            self._on_device.exact(self._snap)  # upload the new shards now, not in the next query
        return True

    def verify(self) -> None:
        """Check every committed file against its manifest checksum (reads every byte)."""
        self._snap.verify()

    # ------------------------------------------------------------- versions
    def versions(self) -> list[dict[str, Any]]:
        """Every recorded version, oldest first: number, commit time, rows, shards, whether it can be opened."""
        return [v.to_dict() for v in list_versions(self.path)]

    def cleanup(self, older_than: timedelta | float | None = None, keep: int = 1) -> dict[str, Any]:
        """Remove old versions and every file only they named (writer only); the open version always stays.

        A version goes when it is not among the newest ``keep`` and, if ``older_than``
        (a ``timedelta`` or seconds) is given, was committed longer ago than that.
        Returns what was removed: ``versions``, ``files`` and ``bytes``.
        """
        self._require_writable()
        keep = validate.integer(keep, "keep", minimum=1)
        age = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        if age is not None:
            age = validate.radius(age, "older_than (seconds)")
        with self._mutex:
            gone = remove_versions(self.path, self.version, keep=keep, older_than_s=age)
            files, freed = self._collect_garbage(keep_all_versions=True)
        return {"versions": gone, "files": files, "bytes": freed}

    # -------------------------------------------------- shards written elsewhere
    @contextmanager
    def spare_shards(self, tag: str) -> Iterator[None]:
        """While the block runs, garbage collection spares ``shards/{tag}*``: workers writing them for
        :meth:`adopt_shards` while this writer commits. What is never adopted goes after the block."""
        prefix = f"{SHARD_DIR}/{tag}"
        self._spared = (*self._spared, prefix)
        try:
            yield
        finally:
            self._spared = tuple(p for p in self._spared if p != prefix)

    # ----------------------------------------------------------- compaction
    def compact(self, progress: Progress | None = None) -> dict[str, Any]:
        """Rewrite the shards without deleted rows, merge small shards and the segments into one; commit.

        Crash-safe like a commit (new files, then the manifest swap), and searches
        go on over the previous snapshot throughout. Where no row was deleted the
        first segment grows by the rows after it; otherwise the structure is
        rebuilt. The previous version's files go with old versions (cleanup).
        ``progress(rows)``: rows indexed. Returns what changed: ``version``,
        ``compacted``, ``rows_removed``, ``shards_before/after``,
        ``segments_before/after``, ``bytes_before/after`` (the snapshot's files).
        """
        self._require_writable()
        with self._mutex:
            if self._uncommitted():
                raise InvalidInputError("the index has uncommitted changes: commit or roll back before compacting")
            old = self._snap
            m = old.manifest
            plan = plan_compaction(old.shards, old.deleted, compaction_shard_rows(self.dim))
            out: dict[str, Any] = {"rows_removed": plan.dropped, "shards_before": len(m.shards),
                                   "segments_before": len(m.candidates),
                                   "bytes_before": sum(e.bytes for e in m.files_entries())}
            if plan.rewrites or len(m.candidates) > 1 or m.deletions is not None:
                try:
                    self._snap = self._compacted_snapshot(old, plan, progress)
                except BaseException:
                    self._snap = Snapshot.open(self.path)  # resync: the swap may or may not have happened
                    raise
            m = self._snap.manifest
            out.update(version=m.version, compacted=m.version != old.manifest.version, shards_after=len(m.shards),
                       segments_after=len(m.candidates), bytes_after=sum(e.bytes for e in m.files_entries()))
        self._collect_garbage()
        return out

    def _compacted_snapshot(self, old: Snapshot, plan: CompactionPlan, progress: Progress | None) -> Snapshot:
        shards = write_compacted(self.path, old.shards, plan, tag=f"v{self.version + 1:06d}")
        self._step("shards_written")
        shardset = ShardSet([s.space for s in shards], self.dim)
        parts = old.stage.parts if old.stage is not None else []
        stages, cand = [p.stage for p in parts], old.manifest.candidates
        if not shards:
            stages, cand = [], ()
        elif len(parts) > 1 or plan.dropped:
            st = merged_structure(self.preset, parts[0].stage if parts else None, shardset, self.curv,
                                  rows_changed=plan.dropped > 0, progress=progress)
            entry = self._write_candidates(st)
            stages, cand = [self._settled(st, entry)], (entry,)
        self._step("candidates_written")
        manifest = old.manifest.committed(shards=tuple(s.entry for s in shards), candidates=cand, deletions=None)
        stage = Segments(stages, shardset, self.curv) if stages else None
        snap = Snapshot(self.path, manifest, shards, shardset, stage)
        snap = self._calibrated(snap, force=True)  # the structure changed: its recall curve too
        commit_manifest(self.path, snap.manifest)
        self._step("committed")
        return snap

    def info(self) -> dict[str, Any]:
        """A summary of the snapshot (what ``hyperret info --json`` prints)."""
        m = self.manifest
        shard_bytes = sum(s.bytes for s in m.shards)
        cand_bytes = sum(c.bytes for c in m.candidates)
        largest = max(m.candidates, key=lambda c: c.rows) if m.candidates else None
        return {
            "path": str(self.path),
            "version": m.version,
            "format_version": m.format_version,
            "rows": m.rows,
            "deleted_rows": m.deleted_rows,
            "dim": m.dim,
            "curv": m.curv,
            "geometry": m.geometry,
            "preset": m.preset["name"],
            "candidate_structure": largest.factory if largest else None,  # of the largest segment
            "candidate_space": largest.proxy if largest else None,
            "segments": len(m.candidates),
            "shards": len(m.shards),
            "shard_bytes": shard_bytes,
            "candidate_bytes": cand_bytes,
            "total_bytes": shard_bytes + cand_bytes,
            "metadata_columns": dict(m.metadata_columns),
            "modality": m.modality,
            "bounds": _bounds_summary(self.bounds),
            "recall": cal.summary() if (cal := Calibration.from_dict(m.calibration)) is not None else None,
            "producer": dict(m.producer),
            "created_at": m.created_at,
            "committed_at": m.committed_at,
            "device": self.device,
            "device_memory": self.device_memory(),
        }


def _bounds_summary(b: Bounds | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {"source": b.source, "thresholds": {m: {"radius": t.radius, "criterion": t.criterion}
                                               for m, t in b.thresholds.items()}}
