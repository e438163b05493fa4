"""A committed snapshot, opened: memory-mapped shards, the candidate stage, row lookups."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import IndexCorruptError
from ..search.candidates import CandidateStage
from ..search.presets import Preset
from ..search.segments import Segments, tail_min_rows
from .deletions import read_deletions
from .manifest import Manifest
from .paths import index_file
from .shards import CORE_COLUMNS, Shard
from .shardset import ShardSet
from .versions import files_present, read_latest

_OPEN_RETRIES = 5


@dataclass
class Snapshot:
    """Everything one committed manifest names, opened read-only."""

    path: Path
    manifest: Manifest
    shards: list[Shard]
    shardset: ShardSet
    stage: Segments | None  # the candidate stage (None: no rows)
    #: Per stored row, True where the row was deleted; ``None`` when nothing was.
    deleted: np.ndarray | None = None
    _id_lookup: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _labels: dict[int, tuple[Any, np.ndarray]] = field(default_factory=dict, repr=False)
    _skip: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path) -> Snapshot:
        """Open the committed snapshot; retries if a concurrent commit removed a file."""
        for _ in range(_OPEN_RETRIES):
            manifest = read_latest(path)
            try:
                return cls.load(path, manifest)
            except FileNotFoundError as e:
                if read_latest(path).version == manifest.version:
                    raise IndexCorruptError(f"index {path}: committed file missing: {e.filename}") from e
        raise IndexCorruptError(f"index {path} changed {_OPEN_RETRIES} times while opening")

    @classmethod
    def load(cls, path: Path, manifest: Manifest) -> Snapshot:
        for e in manifest.files_entries():  # the cheap check: each file is ours and of its recorded size
            size = index_file(path, e.file).stat().st_size
            if size != e.bytes:
                raise IndexCorruptError(f"index {path}: {e.file} has {size} bytes, the manifest says {e.bytes}")
        shards = [Shard.open(path, e, manifest.dim) for e in manifest.shards]
        shardset = ShardSet([s.space for s in shards], manifest.dim)
        preset = Preset.from_dict(manifest.preset)
        stages: list[CandidateStage] = []
        for c in manifest.candidates:  # a segment after the first takes the preset's structure early
            st = CandidateStage.load(index_file(path, c.file, "candidate structure"), preset, c.factory, c.proxy,
                                     c.proxy_state, manifest.dim, manifest.curv, c.trained_rows,
                                     min_rows=tail_min_rows(preset) if stages else None)
            if st.rows != c.rows:
                raise IndexCorruptError(f"candidate structure {c.file} covers {st.rows} rows, "
                                        f"the manifest says {c.rows}")
            stages.append(st)
        stage = Segments(stages, shardset, manifest.curv) if stages else None
        deleted = None
        if manifest.deletions is not None:
            deleted = read_deletions(path, manifest.deletions, shardset.rows)
        return cls(path=path, manifest=manifest, shards=shards, shardset=shardset, stage=stage, deleted=deleted)

    @property
    def rows(self) -> int:
        """Stored rows, deleted ones included: the range of global row numbers."""
        return self.shardset.rows

    @property
    def live(self) -> int:
        """Rows not deleted: the snapshot's size (the manifest's count, which opening checked against the file)."""
        return self.rows - self.manifest.deleted_rows

    def live_rows(self) -> np.ndarray:
        """Global numbers of the rows not deleted, ascending -> ``(live,)`` int64."""
        if self.deleted is None:
            return np.arange(self.rows, dtype=np.int64)
        return np.flatnonzero(~self.deleted).astype(np.int64)

    # ------------------------------------------------------------ row lookups
    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shard number and local row of global ``rows: (n,)`` (all valid)."""
        s = np.searchsorted(self.shardset.offsets, rows, side="right") - 1
        return s, rows - self.shardset.offsets[s]

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Ids of global ``rows`` (any shape); ``-1`` stays ``-1``."""
        if len(self.shards) == 1:
            ids = self.shards[0].ids
            return np.where(rows >= 0, ids[np.maximum(rows, 0)], -1) if len(ids) else np.full(rows.shape, -1)
        flat = rows.reshape(-1)
        out = np.full(flat.shape, -1, dtype=np.int64)
        ok = flat >= 0
        if ok.any():
            s, local = self.locate(flat[ok])
            vals = np.empty(len(s), dtype=np.int64)
            for i in np.unique(s):
                sel = s == i
                vals[sel] = self.shards[i].ids[local[sel]]
            out[ok] = vals
        return out.reshape(rows.shape)

    def row_modality(self) -> np.ndarray:
        """Modality of every row (``text``/``image``), in row order -> ``(n,)`` str."""
        if self.manifest.modality != "mixed":
            return np.full(self.rows, self.manifest.modality)
        parts = [s.table.column("modality").to_numpy(zero_copy_only=False).astype(str) for s in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=str)

    def unsafe_rows(self, bounds: Any = None) -> np.ndarray | None:
        """Unsafe label of every row -> ``(n,)`` bool; ``None`` without bounds.

        Under the index's own bounds, the labels stored at add time; under other
        ``bounds``, recomputed from the stored radii (the last such set is cached).
        """
        if bounds is None and self.manifest.bounds is None:
            return None
        key = 0 if bounds is None else 1  # the index's own labels, and the last override
        hit = self._labels.get(key)
        if hit is not None and hit[0] == bounds:  # by value: bounds given as a dict are rebuilt on every call
            return hit[1]
        if key == 0:
            parts = [s.table.column("unsafe_label").to_numpy(zero_copy_only=False).astype(bool) for s in self.shards]
        else:
            from ..safety.classify import classify_radius

            radius = np.concatenate([s.radius for s in self.shards]) if self.shards else np.zeros(0, np.float32)
            parts = [classify_radius(radius, self.row_modality(), bounds)[0]]
        labels = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
        self._labels[key] = (bounds, labels)
        return labels

    def stored_ids(self) -> np.ndarray:
        """Id of every stored row, deleted ones included, in row order -> ``(rows,)`` int64."""
        if not self.shards:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([s.ids for s in self.shards])

    def skip_codes(self, labels: np.ndarray) -> np.ndarray:
        """The rerank's skip mask for a filtered search -> ``(rows,)``: unsafe ``1``, deleted ``2``, else ``0``.

        Without deletions this is ``labels`` itself (bool); the last mask is cached.
        """
        if self.deleted is None:
            return labels
        if self._skip is not None and self._skip[0] is labels:
            return self._skip[1]
        codes = labels.astype(np.uint8)
        codes[self.deleted] = 2
        self._skip = (labels, codes)
        return codes

    def all_ids(self) -> np.ndarray:
        """Every id of the snapshot (deleted rows left out), in row order -> ``(live,)`` int64."""
        ids = self.stored_ids()
        return ids if self.deleted is None else ids[~self.deleted]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Global rows of ``ids: (n,)``; ``-1`` for ids not in the snapshot (or deleted)."""
        if self._id_lookup is None:
            live = self.live_rows()
            all_ids = self.stored_ids()[live]
            order = np.argsort(all_ids, kind="stable")
            self._id_lookup = (all_ids[order], live[order])
        sorted_ids, order = self._id_lookup
        ids = np.asarray(ids, dtype=np.int64)
        if len(sorted_ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Rows (valid global row numbers) as one Arrow table, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        names = columns or self.column_names()
        s, local = self.locate(rows)
        parts, order = [], []
        for i in np.unique(s):
            sel = np.flatnonzero(s == i)
            t = self.shards[i].table
            cols = {n: (t.column(n).take(pa.array(local[sel])) if n in t.column_names
                        else pa.nulls(len(sel), self.column_type(n))) for n in names}
            parts.append(pa.table(cols))
            order.append(sel)
        if not parts:
            return pa.table({n: pa.array([], self.column_type(n)) for n in names})
        table = pa.concat_tables(parts, promote_options="permissive")
        inverse = np.argsort(np.concatenate(order), kind="stable")
        return table.take(pa.array(inverse))

    def metadata_rows(self, rows: np.ndarray, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """Metadata dicts of global ``rows: (n,)``; ``{}`` for ``-1``."""
        names = columns if columns is not None else list(self.manifest.metadata_columns)
        out: list[dict[str, Any]] = [{} for _ in range(len(rows))]
        ok = np.flatnonzero(rows >= 0)
        if not names or not len(ok):
            return out
        for j, rec in zip(ok, self.take(rows[ok], names).to_pylist()):
            out[j] = rec
        return out

    def column_names(self) -> list[str]:
        return list(CORE_COLUMNS) + list(self.manifest.metadata_columns)

    def column_type(self, name: str) -> pa.DataType:
        """The Arrow type of metadata column ``name`` (the first shard's that has it; null if none does)."""
        for s in self.shards:
            if name in s.table.column_names:
                return s.table.schema.field(name).type
        return pa.null()

    # ---------------------------------------------------------------- verify
    def verify(self) -> None:
        """Recompute every named file's checksum (shards, structure, deletions); raise on a mismatch."""
        problem = files_present(self.path, self.manifest, checksums=True)
        if problem is not None:
            raise IndexCorruptError(problem)
