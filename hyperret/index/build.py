"""Building an index from an embedding table, all or nothing (``hyperret index SOURCE``)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HyperretError, IndexExistsError, InvalidInputError
from ..geometry.cosine import COSINE_CURV
from ..geometry.cosine import check as check_geometry
from ..safety.bounds import Bounds
from ..storage.folders import open_source
from ..storage.fsutil import WriterLock
from ..storage.sources import resolve_curv

#: ``stage(name, total)`` -> a callback that is given the rows done as they finish.
Stage = Callable[[str, int | None], Callable[[int], None]]


def _silent(name: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


#: A partial folder without a lock file is taken as abandoned after this many seconds.
PARTIAL_GRACE_S = 60.0


def partial_name(out: Path) -> str:
    """The glob of the hidden folders ``build_index`` builds ``out`` in."""
    return f".{out.name}.partial-*"


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the partial folders of builds of ``out`` whose builder is gone; returns what was removed.

    A live build holds its folder's writer lock; a killed one left it unlocked.
    Symlinks are unlinked, never followed.
    """
    removed = []
    for p in Path(out).parent.glob(partial_name(Path(out))):
        try:
            if p.is_symlink() or not p.is_dir():
                p.unlink()
                removed.append(p)
                continue
            lock_file = p / ".writer.lock"
            if not lock_file.exists() and not lock_file.is_symlink():
                if time.time() - p.stat().st_mtime < PARTIAL_GRACE_S:
                    continue  # a build that has not taken its lock yet
            else:
                lock = WriterLock(p)
                try:
                    lock.acquire()
                except HyperretError:
                    continue  # a live build
                lock.release()
            shutil.rmtree(p)
            removed.append(p)
        except OSError:
            continue  # vanished, or not ours to remove: leave it
    return removed


def build_index(source: Path, out: Path, *, preset: str | None, curv: float | None, append: bool,
                batch_rows: int = 65_536, bounds: Path | None = None, modality: str | None = None,
                progress: Stage | None = None, geometry: str | None = None,
                warn: Callable[[str], None] | None = None, ray: bool = False,
                ray_address: str | None = None, first_id: int | None = None) -> dict[str, Any]:
    """Read ``source`` and build (or append to) the index at ``out``; all or nothing.

    ``source``: a Parquet/Arrow file, a folder of them, or clip-retrieval's output
    folder (:mod:`hyperret.storage.folders`). ``geometry``: ``lorentz`` or ``cosine``
    (default: what the source records; clip-retrieval's folders are cosine, the rest
    lorentz). ``warn`` receives a line when unit vectors are indexed as hyperbolic points.
    A new index is built in a hidden folder beside ``out`` and renamed into place
    once committed; an append commits once at the end (a failure keeps the last
    snapshot). ``progress(stage, total)`` returns a callback advanced by rows done.
    ``first_id``: a new index numbers rows without ids from it.
    """
    from . import Index

    src = open_source(source, batch_rows=batch_rows)
    remove_stale_partials(out)
    if append and (bounds is not None or modality is not None or geometry is not None or first_id is not None):
        raise InvalidInputError("--bounds, --modality, --geometry and --first-id are fixed when an index is "
                                "created; not with --append")
    geometry = check_geometry(geometry or getattr(src, "geometry", None) or "lorentz") if not append else None
    b = Bounds.load(bounds) if bounds is not None else None
    if modality is None and not append:
        modality = _source_modality(src)
    if geometry == "cosine":
        if curv is not None and curv != COSINE_CURV:
            raise InvalidInputError(f"a cosine index has curvature {COSINE_CURV:g}, not --curv {curv:g}")
        curv = COSINE_CURV
        recorded = None
    else:
        recorded = src.curv
    c = resolve_curv(curv, recorded, str(source), required=not append)
    if append:
        ix = Index.open(out, writable=True)
        if c is not None and abs(c - ix.curv) > 1e-9 * ix.curv:
            ix.close()
            raise InvalidInputError(f"source curvature {c:g} differs from the index's {ix.curv:g}")
        target = out
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise IndexExistsError(f"{out} already exists (use --append to add to an index)")
        target = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        ix = None
    stage = progress or _silent
    on_ray = ray or ray_address is not None
    try:
        advance = stage("reading", src.rows)
        start = 0
        for batch in src.batches():
            if ix is None:
                if c is None:  # pragma: no cover - resolve_curv requires it unless appending
                    raise InvalidInputError(f"curvature unknown for {source}")
                ix = Index.create(target, dim=batch.vectors.shape[1], curv=c, preset=preset,
                                  producer={"source": str(source), "vectors": "precomputed"},
                                  modality=modality or "image", bounds=b, geometry=geometry or "lorentz",
                                  first_id=first_id or 0)
                if ix.geometry == "lorentz" and warn is not None and looks_unit(batch.vectors):
                    warn(f"{source}: the rows are unit vectors, as Euclidean CLIP features are; indexed as "
                         f"hyperbolic points they rank by a distance they were not trained for "
                         f"(--geometry cosine indexes them by cosine similarity)")
            if on_ray:  # the first batch gave the dimension: Ray workers read every part
                from ..distributed.indexing import index_on_ray

                start = index_on_ray(ix, src, ray_address=ray_address, batch_rows=batch_rows, progress=advance)
                break
            try:
                ix.add(batch.vectors, ids=batch.ids, metadata=batch.metadata)
            except InvalidInputError as e:
                raise type(e)(f"{source} rows {start}..{start + len(batch.vectors) - 1}: {e}") from None
            start += len(batch.vectors)
            advance(len(batch.vectors))
        if ix is None or (start == 0 and not append):
            raise InvalidInputError(f"{source} has no rows")
        ix.commit(progress=stage("candidate structure", ix.pending))
        info = ix.info()
        ix.close()
        ix = None
        if not append:
            if out.exists():
                out.rmdir()  # an empty directory the user made: checked above
            os.rename(target, out)
            info["path"] = str(out)
        return info
    except BaseException:
        if ix is not None:
            ix.close()  # drops uncommitted rows: an appended index keeps its last snapshot
        if not append:
            shutil.rmtree(target, ignore_errors=True)
        raise


def looks_unit(x: np.ndarray) -> bool:
    """True when every row of ``x: (n, D)`` has an L2 norm within 1e-2 of 1 (Euclidean CLIP features)."""
    if not len(x):
        return False
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
    return bool(np.all(np.abs(norms - 1.0) < 1e-2))


def _source_modality(src: Any) -> str:
    """``image``/``text`` when the source's ``modality`` column has one value, ``mixed`` for both."""
    vals = src.distinct("modality")
    if vals is None:
        return "mixed"
    vals = {v for v in vals if v is not None}
    return "image" if not vals else (vals.pop() if len(vals) == 1 else "mixed")
