"""The public Index: create, open, add, commit, search.

Data flow: ``add`` validates and buffers rows (spilling full shards to disk);
``commit`` writes the remaining shard, extends or rebuilds the FAISS candidate
structure, and swaps the manifest in atomically; ``search`` asks the candidate
stage for rows and lets the exact Lorentz rerank decide.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from . import lorentz, validate
from .candidates import CandidateStage
from .errors import (
    DuplicateIdError,
    IndexExistsError,
    InvalidInputError,
    ReadOnlyIndexError,
)
from .geometry import COSINE_CURV, cosine_distance, unit_rows
from .geometry import check as check_geometry
from .planner import Plan, make_plan
from .presets import Preset, load_preset
from .rerank import ShardSet, rerank
from .result import SearchResult
from .safety.bounds import MODALITIES, Bounds, as_bounds
from .safety.classify import Classification, classify, classify_radius
from .safety.traversal import HYSAC_ALPHA
from .snapshot import Snapshot
from .storage.deletions import DELETIONS_DIR, write_deletions
from .storage.fsutil import WriterLock, fsync_dir, fsync_file, sha256_file
from .storage.manifest import MANIFEST_NAME, CandidateEntry, FileEntry, Manifest, new_manifest, write_manifest
from .storage.shards import CORE_COLUMNS, SHARD_DIR, Shard, build_table, write_shard

if TYPE_CHECKING:
    from .dedup import DedupResult

CANDIDATE_DIR = "faiss"
INDEX_MODALITIES = ("image", "text", "mixed")
#: Pending rows are written to a (not yet committed) shard once they reach this size.
SPILL_BYTES = 256 << 20

StepHook = Callable[[str], None]
Progress = Callable[[int], None]


class Index:
    """A hyperbolic (Lorentz-model) vector index in a directory.

    Open read-only with :meth:`open` (a snapshot that never changes under you) or
    for writing with ``open(path, writable=True)`` / :meth:`create` (one writer
    at a time, enforced by a lock file). ``search`` is safe from many threads.
    """

    def __init__(self, path: Path, snapshot: Snapshot, lock: WriterLock | None):
        self.path = path
        self._snap = snapshot
        self._lock = lock
        self._rw = _RWLock()  # searches vs. the snapshot swap (and in-place structure growth)
        self._mutex = threading.RLock()  # the pending (uncommitted) rows
        self._pending: list[tuple[np.ndarray, np.ndarray, pa.Table | None]] = []
        self._pending_bytes = 0
        self._pending_files: list[FileEntry] = []
        self._pending_ids: list[np.ndarray] = []
        self._pending_deletes = np.zeros(0, dtype=np.int64)  # global rows of the snapshot, sorted
        self._manifest_changes: dict[str, Any] = {}  # e.g. the dedup record, for the next commit
        self._next_id = snapshot.manifest.next_id
        #: Called with a step name during commit ("shards_written", "candidates_written",
        #: "deletions_written", "committed"): a seam for fault-injection tests and instrumentation.
        self.on_commit_step: StepHook | None = None
        self._bounds: tuple[dict[str, Any], Bounds] | None = None

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        path: str | Path,
        dim: int,
        curv: float = 1.0,
        preset: str | Preset | None = None,
        *,
        producer: dict[str, Any] | None = None,
        modality: str = "image",
        bounds: Bounds | dict[str, Any] | str | Path | None = None,
        geometry: str = "lorentz",
    ) -> Index:
        """Create an empty index at ``path`` and return it open for writing.

        ``geometry``: ``lorentz`` (HySAC space components, the default) or
        ``cosine`` (a Euclidean CLIP's features, stored as unit vectors and ranked
        by cosine similarity; ``curv`` is then 1 and there are no safety bounds).

        ``modality``: what the rows are, ``image``, ``text``, or ``mixed`` (then every
        add carries a ``modality`` metadata column). ``bounds``: safety bounds (a
        :class:`~hyperret.safety.Bounds`, its dict or a file); with them every row
        stores its ``unsafe_score`` and ``unsafe_label``, and the safety policies
        of :meth:`search` use them.
        """
        path = Path(path)
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidInputError(f"dim must be a positive integer, got {dim!r}")
        curv = validate.curvature(curv)
        if modality not in INDEX_MODALITIES:
            raise InvalidInputError(f"unknown modality {modality!r} (one of: {', '.join(INDEX_MODALITIES)})")
        b = as_bounds(bounds)
        if check_geometry(geometry) == "cosine":
            if curv != COSINE_CURV:
                raise InvalidInputError(f"a cosine index has curv {COSINE_CURV:g}, not {curv:g}")
            if b is not None:
                raise InvalidInputError("safety bounds need a hyperbolic (lorentz) index, not a cosine one")
        if b is not None:
            b.check_curv(curv)
            for m in (modality,) if modality != "mixed" else MODALITIES:
                b.threshold(m, why=f"an index with bounds labels every row: labelling {m} rows")
        p = preset if isinstance(preset, Preset) else load_preset(preset)
        if (path / MANIFEST_NAME).exists():
            raise IndexExistsError(f"an index already exists at {path}")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise IndexExistsError(f"{path} exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(path)
        lock.acquire()
        try:
            from . import __version__

            prod = {"tool": f"hyperret {__version__}", **(producer or {})}
            manifest = new_manifest(int(dim), curv, p.to_dict(), prod, modality=modality,
                                    bounds=b.to_dict() if b is not None else None, geometry=geometry)
            write_manifest(path, manifest)
            fsync_dir(path.parent)
        except BaseException:
            lock.release()
            raise
        snap = Snapshot(path=path, manifest=manifest, shards=[], shardset=ShardSet([], int(dim)), stage=None)
        return cls(path, snap, lock)

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> Index:
        """Open the committed snapshot at ``path`` (read-only unless ``writable``)."""
        path = Path(path)
        lock = None
        if writable:
            Snapshot.open(path)  # a clear "no index" error before any lock file is made
            lock = WriterLock(path)
            lock.acquire()
        try:
            ix = cls(path, Snapshot.open(path, writable=writable), lock)
            if writable:
                ix._collect_garbage()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return ix

    def close(self) -> None:
        """Drop uncommitted rows and release the write lock (if held)."""
        if self.writable:
            self.rollback()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ properties
    @property
    def writable(self) -> bool:
        return self._lock is not None and self._lock.held

    @property
    def manifest(self) -> Manifest:
        return self._snap.manifest

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def curv(self) -> float:
        return self.manifest.curv

    @property
    def preset(self) -> Preset:
        return Preset.from_dict(self.manifest.preset)

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def geometry(self) -> str:
        """``lorentz`` (distances are geodesic) or ``cosine`` (distances are ``1 - cos``)."""
        return self.manifest.geometry

    @property
    def modality(self) -> str:
        """What the rows are: ``image``, ``text`` or ``mixed``."""
        return self.manifest.modality

    @property
    def bounds(self) -> Bounds | None:
        """The safety bounds the index was built with (``None``: none)."""
        raw = self.manifest.bounds
        if raw is None:
            return None
        if self._bounds is None or self._bounds[0] is not raw:
            self._bounds = (raw, Bounds.from_dict(raw, source=f"{self.path} manifest"))
        return self._bounds[1]

    def __len__(self) -> int:
        return self._snap.live

    def __repr__(self) -> str:
        mode = "writable" if self.writable else "read-only"
        return (f"Index({str(self.path)!r}, rows={len(self)}, dim={self.dim}, curv={self.curv:g}, "
                f"preset={self.manifest.preset['name']!r}, version={self.version}, {mode})")

    # ------------------------------------------------------------------ add
    def add(self, vectors: Any, ids: Any = None, metadata: Any = None) -> np.ndarray:
        """Buffer rows for the next :meth:`commit`; returns their ids ``(n,)`` int64.

        ``vectors``: ``(n, dim)`` space components. ``ids``: optional unique
        integers (assigned from the index's counter otherwise). ``metadata``: an
        Arrow table or a dict of columns with ``n`` rows.
        """
        self._require_writable()
        x = validate.vectors(vectors, self.dim)
        if self.geometry == "cosine":
            x = unit_rows(x)
        n = x.shape[0]
        meta = validate.metadata(metadata, n)
        self._check_modality_column(meta, n)
        with self._mutex:
            if meta is not None:
                self._check_metadata_types(meta)
            if ids is None:
                new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            else:
                new_ids = validate.ids(ids, n)
                self._check_new_ids(new_ids)
            if n:
                self._next_id = max(self._next_id, int(new_ids.max()) + 1)
                self._pending.append((new_ids, x, meta))
                self._pending_ids.append(new_ids)
                self._pending_bytes += x.nbytes
                if self._pending_bytes >= SPILL_BYTES:
                    self._spill()
        return new_ids

    def rollback(self) -> None:
        """Forget every row added since the last commit."""
        with self._mutex:
            self._pending.clear()
            self._pending_ids.clear()
            self._pending_bytes = 0
            self._pending_files.clear()  # their files are collected as garbage
            self._pending_deletes = np.zeros(0, dtype=np.int64)
            self._manifest_changes = {}
            self._next_id = self.manifest.next_id
        if self.writable:
            self._collect_garbage()

    @property
    def pending(self) -> int:
        """Rows added but not yet committed."""
        return sum(len(i) for i in self._pending_ids)

    @property
    def pending_deletes(self) -> int:
        """Committed rows marked for deletion by the next :meth:`commit`."""
        return len(self._pending_deletes)

    # --------------------------------------------------------------- delete
    def delete(self, ids: Any, *, missing_ok: bool = False) -> int:
        """Mark committed rows for deletion by the next :meth:`commit`; returns how many were marked.

        ``ids``: ``(n,)`` integers. An id not in the committed snapshot is an error
        unless ``missing_ok`` (then it is ignored); rows added since the last commit
        cannot be deleted before they are committed (:meth:`rollback` drops them).
        Until the commit, readers and this handle's searches still see the rows; the
        commit writes a new deletion file and swaps the manifest in atomically.
        A deleted id may be added again (in the same commit or later).
        """
        self._require_writable()
        arr = np.atleast_1d(np.asarray(ids))
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InvalidInputError(f"ids to delete must be a 1-D array of integers, got {arr.dtype} {arr.shape}")
        arr = arr.astype(np.int64)
        with self._mutex:
            rows = self._snap.rows_of(arr)
            missing = arr[rows < 0]
            if len(missing) and not missing_ok:
                pend = np.concatenate(self._pending_ids) if self._pending_ids else np.zeros(0, np.int64)
                why = "was added but is not committed yet" if np.isin(missing[0], pend) else "is not in the index"
                raise InvalidInputError(f"cannot delete id {int(missing[0])}: it {why}")
            rows = np.unique(rows[rows >= 0])
            before = len(self._pending_deletes)
            self._pending_deletes = np.union1d(self._pending_deletes, rows)
            return len(self._pending_deletes) - before

    def _check_new_ids(self, new_ids: np.ndarray) -> None:
        rows = self._snap.rows_of(new_ids)
        if len(self._pending_deletes):  # an id being deleted in this commit may come back
            rows = np.where(np.isin(rows, self._pending_deletes), -1, rows)
        clash = new_ids[rows >= 0]
        if len(clash):
            raise DuplicateIdError(f"id {int(clash[0])} is already in the index")
        for prev in self._pending_ids:
            both = np.intersect1d(prev, new_ids)
            if len(both):
                raise DuplicateIdError(f"id {int(both[0])} was already added (uncommitted)")

    def _check_modality_column(self, meta: pa.Table | None, n: int) -> None:
        """A mixed index needs a text/image ``modality`` column; others may carry a matching one."""
        if meta is None or "modality" not in meta.column_names:
            if self.modality == "mixed" and n:
                raise InvalidInputError("this index holds mixed modalities: every row needs a 'modality' "
                                        "metadata column (text or image)")
            return
        col = meta.column("modality")
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            raise InvalidInputError(f"metadata column 'modality' must be strings, got {col.type}")
        vals = set(col.to_pylist())
        allowed = set(MODALITIES) if self.modality == "mixed" else {self.modality}
        bad = sorted(vals - allowed, key=str)
        if bad:
            raise InvalidInputError(f"modality {bad[0]!r} in a {self.modality} index "
                                    f"(allowed: {', '.join(sorted(allowed))})")

    def _check_metadata_types(self, meta: pa.Table) -> None:
        known = dict(self.manifest.metadata_columns)
        for _, _, m in self._pending:
            if m is not None:
                known.update({f.name: str(f.type) for f in m.schema})
        for f in meta.schema:
            if f.name in known and known[f.name] != str(f.type) and not pa.types.is_null(f.type):
                raise InvalidInputError(
                    f"metadata column {f.name!r} has type {f.type}, the index has {known[f.name]}"
                )

    def _spill(self) -> None:
        """Write the buffered rows as one not-yet-committed shard."""
        if not self._pending:
            return
        ids = np.concatenate([p[0] for p in self._pending])
        x = np.concatenate([p[1] for p in self._pending])
        meta = _concat_metadata([p[2] for p in self._pending], [len(p[0]) for p in self._pending])
        t64 = lorentz.time_component(x, self.curv)
        r64 = lorentz.radius(x, self.curv)
        meta = self._with_safety_columns(meta, r64)
        table = build_table(ids, x, t64, r64, meta, {"hyperret.dim": str(self.dim), "hyperret.curv": repr(self.curv)})
        entry = write_shard(self.path, table, tag=f"v{self.version + 1:06d}")
        self._pending_files.append(entry)
        self._pending.clear()
        self._pending_bytes = 0

    def _with_safety_columns(self, meta: pa.Table | None, r64: np.ndarray) -> pa.Table | None:
        """Prepend ``unsafe_score`` and ``unsafe_label`` (from the radii ``(n,)``) when the index has bounds."""
        b = self.bounds
        if b is None:
            return meta
        if meta is not None and "modality" in meta.column_names:
            mod = np.asarray(meta.column("modality").to_pylist(), dtype=str)
        else:
            mod = np.full(len(r64), self.modality)
        unsafe, score = classify_radius(r64, mod, b)
        cols = {"unsafe_score": pa.array(score, pa.float32()), "unsafe_label": pa.array(unsafe, pa.bool_())}
        if meta is not None:
            cols.update({name: meta.column(name) for name in meta.column_names})
        return pa.table(cols)

    # --------------------------------------------------------------- commit
    def commit(self, progress: Progress | None = None) -> int:
        """Make every added row durable and searchable; returns the new snapshot version.

        Atomic: the new shards and candidate structure are written and fsync'd
        before the manifest is swapped in; a crash at any instant leaves the last
        committed snapshot readable and whole.
        """
        self._require_writable()
        with self._mutex:
            if not (self._pending or self._pending_files or len(self._pending_deletes) or self._manifest_changes):
                return self.version
            self._spill()  # durable but unreferenced: searches go on meanwhile
            with self._rw.write():
                old = self._snap
                try:
                    self._snap = self._commit_locked(old, progress)
                except BaseException:
                    # Resync with the disk: drop in-memory growth, and if the manifest swap
                    # did happen, the pending rows are committed and must not be added again.
                    self._snap = Snapshot.open(self.path, writable=True)
                    if self._snap.manifest.version != old.manifest.version:
                        self._pending_files.clear()
                        self._pending_ids.clear()
                        self._pending_deletes = np.zeros(0, dtype=np.int64)
                    raise
            self._pending_files.clear()
            self._pending_ids.clear()
            self._pending_deletes = np.zeros(0, dtype=np.int64)
            self._manifest_changes = {}
        self._collect_garbage()
        return self.version

    def _commit_locked(self, old: Snapshot, progress: Progress | None) -> Snapshot:
        new_shards = [Shard.open(self.path, e, self.dim) for e in self._pending_files]
        if new_shards:
            fsync_dir(self.path / SHARD_DIR)
        self._step("shards_written")
        shards = old.shards + new_shards
        spaces_new = [s.space for s in new_shards]
        stage = old.stage
        cand = old.manifest.candidates
        if new_shards:
            if stage is None or not stage.try_extend(spaces_new, progress):
                if progress is not None and stage is not None:
                    progress(-stage.rows)  # rebuilding: rows counted again
                stage = CandidateStage.build(
                    Preset.from_dict(old.manifest.preset), [s.space for s in shards], self.dim, self.curv, progress
                )
            cand = self._write_candidates(stage)
        self._step("candidates_written")
        deletions, deleted = old.manifest.deletions, old.deleted
        if len(self._pending_deletes):
            rows = self._pending_deletes if old.deleted is None else np.union1d(np.flatnonzero(old.deleted),
                                                                                  self._pending_deletes)
            deletions = write_deletions(self.path, rows, tag=f"v{self.version + 1:06d}")
            deleted = np.zeros(old.rows, dtype=np.bool_)
            deleted[rows] = True
            self._step("deletions_written")
        if deleted is not None and len(deleted) < old.rows + sum(len(s) for s in new_shards):
            deleted = np.concatenate([deleted, np.zeros(sum(len(s) for s in new_shards), np.bool_)])
        meta_cols = dict(old.manifest.metadata_columns)
        for s in new_shards:
            for f in s.table.schema:
                if f.name not in meta_cols and f.name not in CORE_COLUMNS:
                    meta_cols[f.name] = str(f.type)
        manifest = old.manifest.committed(
            shards=tuple(s.entry for s in shards), candidates=cand, next_id=self._next_id,
            metadata_columns=meta_cols, deletions=deletions, **self._manifest_changes,
        )
        write_manifest(self.path, manifest)
        self._step("committed")
        return Snapshot(self.path, manifest, shards, ShardSet([s.space for s in shards], self.dim), stage,
                        deleted=deleted)

    def _write_candidates(self, stage: CandidateStage) -> CandidateEntry:
        rel = f"{CANDIDATE_DIR}/v{self.version + 1:06d}-{uuid.uuid4().hex[:12]}{stage.file_suffix}"
        path = self.path / rel
        path.parent.mkdir(exist_ok=True)
        stage.save(path)
        fsync_file(path)
        fsync_dir(path.parent)
        return CandidateEntry(
            file=rel, bytes=path.stat().st_size, sha256=sha256_file(path), rows=stage.rows,
            factory=stage.factory, proxy=stage.proxy.name, proxy_state=dict(stage.state),
            trained_rows=stage.trained_rows,
        )

    def _step(self, name: str) -> None:
        if self.on_commit_step is not None:
            self.on_commit_step(name)

    def _collect_garbage(self) -> None:
        """Remove files no committed snapshot or pending write references (writer only)."""
        keep = set(self.manifest.files()) | {e.file for e in self._pending_files}
        for sub in (SHARD_DIR, CANDIDATE_DIR, DELETIONS_DIR):
            d = self.path / sub
            if d.is_dir():
                for f in d.iterdir():
                    if f"{sub}/{f.name}" not in keep:
                        f.unlink(missing_ok=True)
        for f in self.path.glob(f".{MANIFEST_NAME}.*.tmp"):
            f.unlink(missing_ok=True)

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
        for all queries or a list with one per query (see :mod:`hyperret.planner`).
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

    def _row_modalities(self) -> tuple[str, ...]:
        return MODALITIES if self.modality == "mixed" else (self.modality,)

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
        from .dedup import collapse

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
            from .dedup import DEFAULT_SEARCH_RADIUS

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
        :class:`~hyperret.dedup.DedupResult`.
        """
        from .dedup import DEFAULT_CANDIDATES, dedup

        if apply:
            self._check_can_apply()  # before the long run, not after it
        with self._rw.read():
            snap = self._snap
            labels = snap.unsafe_rows() if unsafe_only and self.bounds is not None else None
            result = dedup(snap, radius=radius, auto=auto, unsafe_only=unsafe_only, labels=labels,
                           grouping=grouping, keep=keep, method=method,
                           candidates=DEFAULT_CANDIDATES if candidates is None else candidates, progress=progress)
        result.summary["version"] = snap.manifest.version
        result.summary["applied"] = False
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

    def refresh(self) -> bool:
        """Move a read-only handle to the newest committed snapshot; True if it changed."""
        if self.writable:
            return False
        with self._rw.write():
            new = Snapshot.open(self.path)
            changed = new.manifest.version != self._snap.manifest.version
            self._snap = new
        return changed

    def verify(self) -> None:
        """Check every committed file against its manifest checksum (reads every byte)."""
        self._snap.verify()

    def info(self) -> dict[str, Any]:
        """A summary of the snapshot (what ``hyperret info --json`` prints)."""
        m = self.manifest
        shard_bytes = sum(s.bytes for s in m.shards)
        cand_bytes = m.candidates.bytes if m.candidates else 0
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
            "candidate_structure": m.candidates.factory if m.candidates else None,
            "candidate_space": m.candidates.proxy if m.candidates else None,
            "shards": len(m.shards),
            "shard_bytes": shard_bytes,
            "candidate_bytes": cand_bytes,
            "total_bytes": shard_bytes + cand_bytes,
            "metadata_columns": dict(m.metadata_columns),
            "modality": m.modality,
            "bounds": _bounds_summary(self.bounds),
            "producer": dict(m.producer),
            "created_at": m.created_at,
            "committed_at": m.committed_at,
        }

    def _require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyIndexError(f"index {self.path} is open read-only; use Index.open(path, writable=True)")


def _bounds_summary(b: Bounds | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {"source": b.source, "thresholds": {m: {"radius": t.radius, "criterion": t.criterion}
                                               for m, t in b.thresholds.items()}}


def _concat_metadata(metas: list[pa.Table | None], counts: list[int]) -> pa.Table | None:
    """Concatenate per-add metadata tables, null-filling columns an add did not give."""
    names: dict[str, pa.DataType] = {}
    for m in metas:
        for f in m.schema if m is not None else ():
            if f.name not in names or pa.types.is_null(names[f.name]):
                names[f.name] = f.type
    if not names:
        return None
    parts = []
    for m, n in zip(metas, counts):
        cols = {name: (m.column(name).cast(t) if m is not None and name in m.column_names else pa.nulls(n, t))
                for name, t in names.items()}
        parts.append(pa.table(cols))
    return pa.concat_tables(parts).combine_chunks()


class _RWLock:
    """Many concurrent readers or one writer (searches vs. commits on one handle).

    Writer-preferring: once a commit waits, new searches queue behind it, so a
    stream of searches cannot starve it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
