"""Folders of embedding files for ``hyperret index``: clip-retrieval's output as it is, and Parquet folders.

clip-retrieval (``clip-retrieval inference``) writes ``img_emb/img_emb_N.npy``
(float16 or float32, ``(rows, D)``, L2-normalised Euclidean CLIP features; or
``text_emb/text_emb_N.npy``) beside ``metadata/metadata_N.parquet`` (``url``,
``caption``, ``image_path``, ... one row per embedding row). Its vectors are
Euclidean, so such a folder is indexed with the cosine geometry by default. A folder
of Parquet (or Arrow) files is read as one table, file by file in name order. Both
give the batches, row count, curvature and ``distinct`` a :class:`~.sources.Source`
gives, so the index builder takes either.

Files are read without pickles (``np.load(allow_pickle=False)``, memory-mapped) and
every shape is checked before a row is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DimensionMismatchError, InvalidInputError, SourceError, first_line
from .sources import Batch, Source

_PARTS = {"img_emb": "image", "text_emb": "text"}


def open_source(path: str | Path, batch_rows: int = 65_536) -> Source | ClipRetrievalSource | FolderSource:
    """The embedding source at ``path``: a Parquet/Arrow file, a clip-retrieval folder or a folder of tables."""
    p = Path(path)
    if not p.is_dir():
        return Source(p, batch_rows=batch_rows)
    if any((p / d).is_dir() for d in _PARTS):
        return ClipRetrievalSource(p, batch_rows=batch_rows)
    return FolderSource(p, batch_rows=batch_rows)


def is_embedding_folder(path: Path) -> bool:
    """True for a clip-retrieval output folder or a folder holding Parquet/Arrow files (not images)."""
    return path.is_dir() and (any((path / d).is_dir() for d in _PARTS) or bool(_tables(path)))


def _tables(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".parquet", ".arrow", ".feather"))


class ClipRetrievalSource:
    """clip-retrieval's ``img_emb`` (else ``text_emb``) arrays with their ``metadata`` Parquet files."""

    kind = "clip-retrieval"
    curv: float | None = None
    geometry = "cosine"

    def __init__(self, path: Path, batch_rows: int = 65_536):
        self.path, self.batch_rows = path, batch_rows
        part = "img_emb" if (path / "img_emb").is_dir() else "text_emb"
        self.modality = _PARTS[part]
        arrays: dict[int, Path] = {}
        for f in (path / part).glob(f"{part}_*.npy"):
            n = _number(f, part)
            if n is not None:
                arrays[n] = f
        if not arrays:
            raise SourceError(f"{path / part} holds no {part}_N.npy files")
        self.parts: list[tuple[Path, Path | None]] = []
        self.rows, self.dim = 0, None
        meta_dir = path / "metadata"
        names: list[str] | None = None
        for n in sorted(arrays):
            arr = _open_npy(arrays[n])
            if self.dim is not None and arr.shape[1] != self.dim:
                raise DimensionMismatchError(f"{arrays[n]} has dimension {arr.shape[1]}, earlier parts {self.dim}")
            self.dim = int(arr.shape[1])
            meta = meta_dir / f"metadata_{n}.parquet"
            if meta_dir.is_dir():
                if not meta.is_file():
                    raise SourceError(f"{arrays[n].name} has no {meta.name} in {meta_dir}")
                try:
                    info = pq.ParquetFile(meta)
                except (pa.ArrowInvalid, OSError) as e:
                    raise SourceError(f"{meta} is not a readable Parquet file ({first_line(e)})") from None
                if info.metadata.num_rows != arr.shape[0]:
                    raise SourceError(f"{meta.name} has {info.metadata.num_rows} rows, {arrays[n].name} "
                                      f"{arr.shape[0]}")
                cols = [c for c in info.schema_arrow.names if c not in ("id", "embedding")]
                names = cols if names is None else [c for c in names if c in cols]
            self.parts.append((arrays[n], meta if meta_dir.is_dir() else None))
            self.rows += int(arr.shape[0])
        self._columns = names or []

    @property
    def metadata_columns(self) -> list[str]:
        return list(self._columns)

    def distinct(self, name: str) -> set:
        return {self.modality} if name == "modality" else set()

    def batches(self) -> Iterator[Batch]:
        """Float32 vectors (no ids: hyperret numbers them) with the metadata columns every part has."""
        for npy, meta in self.parts:
            arr = _open_npy(npy)
            table = pq.read_table(meta, columns=self._columns) if meta is not None and self._columns else None
            for s in range(0, arr.shape[0], self.batch_rows):
                e = min(arr.shape[0], s + self.batch_rows)
                vec = np.asarray(arr[s:e], dtype=np.float32)
                yield Batch(vectors=vec, ids=None, metadata=table.slice(s, e - s) if table is not None else None)


class FolderSource:
    """A folder of Parquet/Arrow embedding tables (each a :class:`~.sources.Source`), read in name order."""

    kind = "folder"

    def __init__(self, path: Path, batch_rows: int = 65_536):
        files = _tables(path)
        if not files:
            raise SourceError(f"{path} holds no Parquet or Arrow files (nor clip-retrieval's img_emb/ folder)")
        self.path = path
        self.sources = [Source(f, batch_rows=batch_rows) for f in files]
        first = self.sources[0]
        for s in self.sources[1:]:
            if s.curv != first.curv:
                raise InvalidInputError(f"{s.path.name} records curvature {s.curv}, {first.path.name} {first.curv}")
            if s.metadata_columns != first.metadata_columns:
                raise InvalidInputError(f"{s.path.name} has columns {s.metadata_columns}, {first.path.name} "
                                        f"{first.metadata_columns}")
        self.curv = first.curv
        self.geometry = first.geometry
        self.rows = None if any(s.rows is None for s in self.sources) else sum(int(s.rows or 0) for s in self.sources)

    @property
    def metadata_columns(self) -> list[str]:
        return self.sources[0].metadata_columns

    def distinct(self, name: str) -> set | None:
        out: set = set()
        for s in self.sources:
            d = s.distinct(name)
            if d is None:
                return None
            out |= d
        return out

    def batches(self) -> Iterator[Batch]:
        dim = None
        for s in self.sources:
            for b in s.batches():
                if dim is not None and b.vectors.shape[1] != dim:
                    raise DimensionMismatchError(f"{s.path.name} has dimension {b.vectors.shape[1]}, earlier "
                                                 f"files {dim}")
                dim = b.vectors.shape[1]
                yield b


def _number(f: Path, part: str) -> int | None:
    m = re.fullmatch(rf"{part}_(\d{{1,9}})\.npy", f.name)
    return int(m.group(1)) if m else None


def _open_npy(f: Path) -> np.ndarray:
    """``f`` memory-mapped (no pickles), checked to be a 2-D float array."""
    try:
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise SourceError(f"{f} is not a readable .npy array ({first_line(e)})") from None
    if arr.ndim != 2 or arr.dtype.kind != "f" or arr.shape[1] < 1:
        raise SourceError(f"{f} holds a {arr.dtype} array of shape {arr.shape}, not (rows, dim) floats")
    return arr



__all__ = ["ClipRetrievalSource", "FolderSource", "is_embedding_folder", "open_source"]
