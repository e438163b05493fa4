"""Writing: buffered adds, deletes, and the atomic commit (shards, candidate structure, manifest swap)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from .. import validate
from ..errors import DuplicateIdError, InvalidInputError, StorageError
from ..geometry import lorentz
from ..geometry.cosine import unit_rows
from ..safety.bounds import MODALITIES
from ..safety.classify import classify_radius
from ..search import recall
from ..search.candidates import CandidateStage
from ..search.presets import Preset
from ..search.recall import Calibration
from ..search.segments import Segments, tail_min_rows
from ..storage.deletions import DELETIONS_DIR, write_deletions
from ..storage.fsutil import fsync_dir, fsync_file, sha256_file
from ..storage.manifest import MANIFEST_NAME, CandidateEntry, FileEntry
from ..storage.paths import index_file, own_dir
from ..storage.shards import CORE_COLUMNS, SHARD_DIR, Shard, build_table, write_shard
from ..storage.shardset import ShardSet
from ..storage.snapshot import Snapshot
from ..storage.versions import commit_manifest, referenced_files, remove_uncommitted, remove_versions
from .base import CANDIDATE_DIR, SPILL_BYTES, IndexBase, Progress


class Writes(IndexBase):
    """``add``, ``delete``, ``rollback`` and ``commit``."""

    # ------------------------------------------------------------------ add
    def add(self, vectors: Any, ids: Any = None, metadata: Any = None) -> np.ndarray:
        """Buffer rows for the next :meth:`commit`; returns their ids ``(n,)`` int64.

        ``vectors``: ``(n, dim)`` space components. ``ids``: optional unique
        integers (assigned from the index's counter otherwise). ``metadata``: an
        Arrow table or a dict of columns with ``n`` rows.
        """
        self._require_writable()
        x, meta = self._checked_rows(vectors, metadata)
        n = x.shape[0]
        with self._mutex:
            if meta is not None:
                self._check_metadata_types(meta)
            if ids is None:
                if self._next_id + n - 1 > validate.ID_MAX:
                    raise InvalidInputError(f"the id counter is exhausted (next id {self._next_id}, the largest "
                                            f"int64 is {validate.ID_MAX}): pass ids explicitly")
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

    def shard_rows(self, vectors: Any, ids: np.ndarray, metadata: Any = None) -> pa.Table:
        """Rows checked as :meth:`add` checks them, as a shard's table (for :meth:`adopt_shards`; no state).

        Works on a read-only handle: a Ray worker prepares its part with it and writes
        the shard into the index's ``shards/``; the writer adopts and commits it.
        """
        x, meta = self._checked_rows(vectors, metadata)
        ids = validate.ids(ids, x.shape[0])
        if meta is not None:
            self._check_metadata_types(meta)
        return self._shard_table(ids, x, meta)

    def _checked_rows(self, vectors: Any, metadata: Any) -> tuple[np.ndarray, pa.Table | None]:
        """Vectors ``(n, dim)`` checked (unit rows for a cosine index) and their metadata, as ``add`` takes them."""
        x = validate.vectors(vectors, self.dim)
        if self.geometry == "cosine":
            x = unit_rows(x)
        else:
            validate.norms(x, self.curv)
        meta = validate.metadata(metadata, x.shape[0])
        self._check_modality_column(meta, x.shape[0])
        return x, meta

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
        table = self._shard_table(ids, x, meta)
        entry = write_shard(self.path, table, tag=f"v{self.version + 1:06d}")
        self._pending_files.append(entry)
        self._pending.clear()
        self._pending_bytes = 0

    def adopt_shards(self, entries: Sequence[FileEntry]) -> int:
        """Add shards written elsewhere into this index's ``shards/`` (Ray workers) to the next commit.

        Each is checked as a committed shard would be: its size, rows, dimension and
        curvature, ids unique (among themselves, the pending rows and the index), metadata
        types as the index's. Returns the rows adopted. Nothing is committed here: a
        failure before :meth:`commit` leaves them unreferenced (collected as garbage).
        """
        self._require_writable()
        rows = 0
        with self._mutex:
            for e in entries:
                size = index_file(self.path, e.file, "shard").stat().st_size
                if size != e.bytes:
                    raise InvalidInputError(f"shard {e.file} has {size} bytes, its entry says {e.bytes}")
                sh = Shard.open(self.path, e, self.dim)
                meta = sh.table.schema.metadata or {}
                if meta.get(b"hyperret.curv") != repr(self.curv).encode():
                    raise InvalidInputError(f"shard {e.file} was written for curvature "
                                            f"{meta.get(b'hyperret.curv')!r}, the index has {self.curv!r}")
                ids = np.array(sh.ids, dtype=np.int64)
                if len(np.unique(ids)) != len(ids):
                    raise DuplicateIdError(f"shard {e.file} repeats an id")
                self._check_new_ids(ids)
                extra = [n for n in sh.table.column_names if n not in CORE_COLUMNS]
                if extra:
                    self._check_metadata_types(sh.table.select(extra))
                self._pending_files.append(e)
                self._pending_ids.append(ids)
                if len(ids):
                    self._next_id = max(self._next_id, int(ids.max()) + 1)
                rows += len(ids)
        return rows

    def _shard_table(self, ids: np.ndarray, x: np.ndarray, meta: pa.Table | None) -> pa.Table:
        """A shard's table of checked rows ``x: (n, dim)`` with ``ids: (n,)``, their metadata and safety columns."""
        r64 = lorentz.radius(x, self.curv)  # once: the stored radius and the safety labels both read it
        return build_table(ids, x, lorentz.time_component(x, self.curv), r64, self._with_safety_columns(meta, r64),
                           {"hyperret.dim": str(self.dim), "hyperret.curv": repr(self.curv)})

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

        Atomic: the new shards and candidate segment are written and fsync'd before
        the manifest is swapped in; a crash at any instant leaves the last committed
        snapshot readable and whole. Searches never wait: they read the previous
        snapshot, which nothing changes, until the new one is swapped in.
        """
        self._require_writable()
        with self._mutex:
            if not self._uncommitted():
                return self.version
            self._spill()  # durable but unreferenced: searches go on meanwhile
            old = self._snap
            try:
                new = self._committed_snapshot(old, progress)
            except BaseException:
                # Resync with the disk; if the manifest swap did happen, the pending rows are
                # committed and must not be added again.
                self._snap = Snapshot.open(self.path)
                if self._snap.manifest.version != old.manifest.version:
                    self._clear_pending()
                raise
            self._snap = new  # one reference swap: a search holds the snapshot it started with
            self._clear_pending()
        self._collect_garbage()
        return self.version

    def _uncommitted(self) -> bool:
        """True when a commit would change something: rows added, rows deleted, or a manifest change."""
        return bool(self._pending or self._pending_files or len(self._pending_deletes) or self._manifest_changes)

    def _clear_pending(self) -> None:
        self._pending_files.clear()
        self._pending_ids.clear()
        self._pending_deletes = np.zeros(0, dtype=np.int64)
        self._manifest_changes = {}

    def _committed_snapshot(self, old: Snapshot, progress: Progress | None) -> Snapshot:
        """Write what the pending changes add (shards, a segment, a deletion file), then the manifest."""
        new_shards = [Shard.open(self.path, e, self.dim) for e in self._pending_files]
        if new_shards:
            fsync_dir(self.path / SHARD_DIR)
        self._step("shards_written")
        shards = old.shards + new_shards
        stages = [p.stage for p in old.stage.parts] if old.stage is not None else []
        cand = old.manifest.candidates
        if new_shards:
            st, replaced = self._grown_segments(old, [s.space for s in new_shards], progress)
            entry = self._write_candidates(st)
            st = self._settled(st, entry)
            stages = stages[: len(stages) - replaced] + [st]
            cand = cand[: len(cand) - replaced] + (entry,)
        self._step("candidates_written")
        deletions, deleted = old.manifest.deletions, old.deleted
        if len(self._pending_deletes):
            rows = self._pending_deletes if old.deleted is None else np.union1d(np.flatnonzero(old.deleted),
                                                                                  self._pending_deletes)
            deletions = write_deletions(self.path, rows, tag=f"v{self.version + 1:06d}")
            deleted = np.zeros(old.rows, dtype=np.bool_)
            deleted[rows] = True
            self._step("deletions_written")
        added = sum(len(s) for s in new_shards)
        if deleted is not None and len(deleted) < old.rows + added:
            deleted = np.concatenate([deleted, np.zeros(added, np.bool_)])
        meta_cols = dict(old.manifest.metadata_columns)
        for s in new_shards:
            for f in s.table.schema:
                if f.name not in meta_cols and f.name not in CORE_COLUMNS:
                    meta_cols[f.name] = str(f.type)
        manifest = old.manifest.committed(
            shards=tuple(s.entry for s in shards), candidates=cand, next_id=self._next_id,
            metadata_columns=meta_cols, deletions=deletions, **self._manifest_changes,
        )
        shardset = ShardSet([s.space for s in shards], self.dim)
        snap = Snapshot(self.path, manifest, shards, shardset, Segments(stages, shardset, self.curv),
                        deleted=deleted)
        snap = self._calibrated(snap, force=False)
        commit_manifest(self.path, snap.manifest)
        self._step("committed")
        return snap

    def _calibrated(self, snap: Snapshot, force: bool) -> Snapshot:
        """``snap`` with its recall curve measured again when it grew past :data:`recall.GROWTH` (or ``force``)."""
        previous = Calibration.from_dict(snap.manifest.calibration)
        if snap.stage is None or not (recall.due(previous, snap.live) or (force and snap.live >= recall.MIN_ROWS)):
            return snap
        cal = recall.measure(snap.stage, snap.shardset, self.curv, snap.deleted)
        snap.manifest = replace(snap.manifest, calibration=cal.to_dict())
        return snap

    def _grown_segments(self, old: Snapshot, new: list[np.ndarray],
                        progress: Progress | None) -> tuple[CandidateStage, int]:
        """The segment that indexes the ``new`` rows, and how many of the last segments it replaces (0 or 1).

        The last segment grows (on a copy) while it stays within :attr:`segment_rows`;
        otherwise the new rows get a segment of their own. Either way a commit
        indexes and writes at most ``segment_rows`` rows plus its own.
        """
        n_new = sum(len(s) for s in new)
        last = old.stage.parts[-1] if old.stage is not None else None
        if last is not None and last.rows + n_new <= self.segment_rows:
            window = old.shardset.window(last.start, last.rows)
            return last.stage.grown(window.arrays, new, progress), 1
        preset = Preset.from_dict(old.manifest.preset)
        floor = tail_min_rows(preset) if last is not None else None
        return CandidateStage.build(preset, new, self.dim, self.curv, progress, floor), 0

    def _settled(self, st: CandidateStage, entry: CandidateEntry) -> CandidateStage:
        """``st`` as searches keep it once no commit will grow it (``segment_rows`` or more rows).

        A Lorentz-walked graph is then its saved arrays, mapped from disk, instead of the
        FAISS graph that built it with its proxy vectors (as many bytes as the rows).
        """
        if st.rows < self.segment_rows or not st.navigates_lorentz:
            return st
        return CandidateStage.load(index_file(self.path, entry.file, "candidate structure"), st.preset,
                                   entry.factory, entry.proxy, entry.proxy_state, self.dim, self.curv,
                                   entry.trained_rows, min_rows=st.min_rows)

    def _write_candidates(self, stage: CandidateStage) -> CandidateEntry:
        name = f"v{self.version + 1:06d}-{uuid.uuid4().hex[:12]}{stage.file_suffix}"
        rel = f"{CANDIDATE_DIR}/{name}"
        path = own_dir(self.path, CANDIDATE_DIR, create=True) / name
        try:
            stage.save(path)
        except RuntimeError as e:  # FAISS reports a failed write (a full disk) as a RuntimeError
            path.unlink(missing_ok=True)
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else "write failed"
            raise StorageError(f"cannot write the candidate structure {rel}: {msg}") from None
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

    def _collect_garbage(self, keep_all_versions: bool = False) -> tuple[int, int]:
        """Remove files no kept version or pending write references (writer only); returns (files, bytes).

        Versions beyond :attr:`keep_versions` go first, unless ``keep_all_versions``.
        """
        remove_uncommitted(self.path, self.version)
        if self.keep_versions is not None and not keep_all_versions:
            remove_versions(self.path, self.version, keep=self.keep_versions, older_than_s=None)
        keep = referenced_files(self.path, [self.manifest]) | {e.file for e in self._pending_files}
        files = freed = 0
        for sub in (SHARD_DIR, CANDIDATE_DIR, DELETIONS_DIR):
            d = own_dir(self.path, sub)  # never a symlink: garbage is collected inside the index only
            if d.is_dir():
                for f in d.iterdir():
                    if f"{sub}/{f.name}" not in keep and not f"{sub}/{f.name}".startswith(self._spared):
                        size = f.lstat().st_size
                        f.unlink(missing_ok=True)  # a symlink entry: the link goes, not its target
                        files, freed = files + 1, freed + size
        for f in self.path.glob(f".{MANIFEST_NAME}.*.tmp"):
            f.unlink(missing_ok=True)
        return files, freed


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
