"""The public ``Index``: creating and opening an index directory, closing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from ..errors import IndexCorruptError, IndexExistsError, IndexNotFoundError, InvalidInputError
from ..geometry.cosine import COSINE_CURV
from ..geometry.cosine import check as check_geometry
from ..safety.bounds import MODALITIES, Bounds, as_bounds
from ..search.presets import Preset, load_preset
from ..storage.fsutil import WriterLock, fsync_dir
from ..storage.manifest import MANIFEST_NAME, new_manifest
from ..storage.shardset import ShardSet
from ..storage.snapshot import Snapshot
from ..storage.versions import commit_manifest, read_latest, read_version
from ..storage.versions import repair as repair_manifest
from .base import DEFAULT_KEEP_VERSIONS, INDEX_MODALITIES
from .build import remove_stale_partials
from .maintenance import Maintains


class Index(Maintains):
    """A hyperbolic (Lorentz-model) vector index in a directory.

    Open read-only with :meth:`open` (a snapshot that never changes under you) or
    for writing with ``open(path, writable=True)`` / :meth:`create` (one writer
    at a time, enforced by a lock file). ``search`` is safe from many threads.
    """

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
        first_id: int = 0,
    ) -> Index:
        """Create an empty index at ``path`` and return it open for writing.

        ``first_id``: where the id counter starts (rows added without ids are numbered
        from it): indexes built apart as parts of one collection keep their ids apart.

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
        if isinstance(first_id, bool) or not isinstance(first_id, (int, np.integer)) \
                or not 0 <= first_id <= validate.ID_MAX:
            raise InvalidInputError(f"first_id must be an integer from 0 to {validate.ID_MAX}, got {first_id!r}")
        if (path / MANIFEST_NAME).exists():
            raise IndexExistsError(f"an index already exists at {path}")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise IndexExistsError(f"{path} exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(path)
        lock.acquire()
        try:
            from .. import __version__

            prod = {"tool": f"hyperret {__version__}", **(producer or {})}
            manifest = new_manifest(int(dim), curv, p.to_dict(), prod, modality=modality,
                                    bounds=b.to_dict() if b is not None else None, geometry=geometry,
                                    next_id=int(first_id))
            commit_manifest(path, manifest)
            fsync_dir(path.parent)
        except BaseException:
            lock.release()
            raise
        snap = Snapshot(path=path, manifest=manifest, shards=[], shardset=ShardSet([], int(dim)), stage=None)
        return cls(path, snap, lock)

    @classmethod
    def open(cls, path: str | Path, writable: bool = False, *, version: int | None = None,
             keep_versions: int | None = DEFAULT_KEEP_VERSIONS, device: str = "cpu",
             device_storage: str = "float32", gpu_scan: str = "auto") -> Index:
        """Open the committed snapshot at ``path`` (read-only unless ``writable``).

        ``version``: open that earlier version instead (read-only; see :meth:`versions`).
        ``keep_versions``: a writer keeps the manifests of this many newest versions
        (and their files) after each commit; ``None`` keeps every version until
        :meth:`cleanup`.
        ``device``: ``cuda`` / ``cuda:N`` holds the rows on that GPU and searches them
        with the CUDA kernels (:mod:`hyperret.cuda`): exact, the CPU path's ids and
        distances; new commits upload only their new shards. ``device_storage``:
        ``float32`` or ``float16`` (half the device memory; the rerank reads the
        float32 shards on the host). ``gpu_scan``: ``auto``, ``fused`` or ``gemm``.
        """
        path = Path(path)
        if device != "cpu":
            ix = cls.open(path, writable, version=version, keep_versions=keep_versions)
            try:
                ix.place(device, storage=device_storage, scan=gpu_scan)
            except BaseException:
                ix.close()
                raise
            return ix
        if version is not None:
            return cls._open_version(path, version, writable)
        lock = None
        if writable:
            read_latest(path)  # a clear "no index" error before any lock file is made
            lock = WriterLock(path)
            lock.acquire()
        try:
            ix = cls(path, Snapshot.open(path), lock)
            ix.keep_versions = None if keep_versions is None else validate.integer(keep_versions, "keep_versions",
                                                                                       minimum=1)
            if writable:
                ix._collect_garbage()
                remove_stale_partials(path)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return ix

    @staticmethod
    def repair(path: str | Path) -> dict[str, Any]:
        """Restore a damaged or missing ``manifest.json`` from the newest intact version.

        Takes the writer lock; checks every file of the version it restores against
        its checksum. Returns ``{"version": N, "repaired": bool}`` (False: the
        manifest was intact and nothing changed).
        """
        path = Path(path)
        if not path.is_dir():
            raise IndexNotFoundError(f"no hyperret index at {path}")
        lock = WriterLock(path)
        lock.acquire()
        try:
            version, changed = repair_manifest(path)
        finally:
            lock.release()
        return {"version": version, "repaired": changed}

    @classmethod
    def _open_version(cls, path: Path, version: int, writable: bool) -> Index:
        if writable:
            raise InvalidInputError("an earlier version opens read-only (commits add versions after the latest)")
        manifest = read_version(path, validate.integer(version, "version", minimum=0))
        try:
            snap = Snapshot.load(path, manifest)
        except FileNotFoundError as e:
            raise IndexCorruptError(f"version {version} of {path} cannot be opened: {e.filename} was removed "
                                    f"(cleanup keeps only the files of the versions it keeps)") from None
        return cls(path, snap, None)

    def close(self) -> None:
        """Drop uncommitted rows, release the write lock (if held) and the GPU rows (if placed)."""
        self._on_device = None
        if self.writable:
            self.rollback()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
