"""An index's state and what it says about itself: the layer the others build on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ReadOnlyIndexError
from ..safety.bounds import MODALITIES, Bounds
from ..search.presets import Preset
from ..storage.fsutil import WriterLock
from ..storage.manifest import FileEntry, Manifest
from ..storage.snapshot import Snapshot

CANDIDATE_DIR = "faiss"
INDEX_MODALITIES = ("image", "text", "mixed")
#: Pending rows are written to a (not yet committed) shard once they reach this size.
SPILL_BYTES = 256 << 20
#: A commit grows the last candidate segment (on a copy) while it holds at most this many rows,
#: else starts a new one: a commit indexes and writes at most this many rows plus its own.
DEFAULT_SEGMENT_ROWS = 65_536
#: Version manifests (and their files) a writer keeps after each commit; older ones are cleaned up.
DEFAULT_KEEP_VERSIONS = 5

StepHook = Callable[[str], None]
Progress = Callable[[int], None]


class IndexBase:
    """The state of an open index (snapshot, lock, pending rows) and its read-only properties."""

    def __init__(self, path: Path, snapshot: Snapshot, lock: WriterLock | None):
        self.path = path
        self._snap = snapshot
        self._lock = lock
        # The pending (uncommitted) rows and the writer's commits. Searches take no lock: each
        # reads the snapshot current when it starts, and nothing changes a snapshot once made.
        self._mutex = threading.RLock()
        self._pending: list[tuple[np.ndarray, np.ndarray, pa.Table | None]] = []
        self._pending_bytes = 0
        self._pending_files: list[FileEntry] = []
        self._spared: tuple[str, ...] = ()  # shard name prefixes workers are writing (see spare_shards)
        self._pending_ids: list[np.ndarray] = []
        self._pending_deletes = np.zeros(0, dtype=np.int64)  # global rows of the snapshot, sorted
        self._manifest_changes: dict[str, Any] = {}  # e.g. the dedup record, for the next commit
        self._next_id = snapshot.manifest.next_id
        #: Called with a step name during commit ("shards_written", "candidates_written",
        #: "deletions_written", "committed"): a seam for fault-injection tests and instrumentation.
        self.on_commit_step: StepHook | None = None
        self._bounds: tuple[dict[str, Any], Bounds] | None = None
        #: Newest versions a writer keeps after each commit (None: all, until cleanup()).
        self.keep_versions: int | None = DEFAULT_KEEP_VERSIONS
        #: The largest segment a commit grows (see :data:`DEFAULT_SEGMENT_ROWS`); :meth:`compact` merges them.
        self.segment_rows: int = DEFAULT_SEGMENT_ROWS
        #: the GPU this index searches on (None: the CPU kernels); see :meth:`place`
        self._on_device: Any = None
        if snapshot.manifest.bounds is not None:
            self.bounds  # noqa: B018 - a manifest's bounds are checked on open, not at the first search

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

    def _require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyIndexError(f"index {self.path} is open read-only; use Index.open(path, writable=True)")

    def _row_modalities(self) -> tuple[str, ...]:
        return MODALITIES if self.modality == "mixed" else (self.modality,)

