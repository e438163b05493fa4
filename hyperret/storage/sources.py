"""Reading embedding tables (Parquet or Arrow IPC) for ``hyperret index``.

A source has an ``embedding`` column (list or fixed-size list of floats: space
components), an optional integer ``id`` column, and any other columns, which
become metadata. The curvature may travel in the schema metadata key
``hyperret.curv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import validate
from ..errors import DimensionMismatchError, InvalidInputError, MissingColumnError, SourceError, first_line

EMBEDDING = "embedding"
ID = "id"
CURV_KEY = b"hyperret.curv"
GEOMETRY_KEY = b"hyperret.geometry"  # written by ``hyperret export``


@dataclass(frozen=True)
class Batch:
    vectors: np.ndarray  # shape: (n, dim) float32
    ids: np.ndarray | None  # shape: (n,) int64
    metadata: pa.Table | None


class Source:
    """An embedding table on disk, read in record batches."""

    def __init__(self, path: str | Path, batch_rows: int = 65_536):
        self.path = Path(path)
        self.batch_rows = batch_rows
        try:
            with open(self.path, "rb") as f:
                head = f.read(6)
        except FileNotFoundError:
            raise SourceError(f"source file {self.path} does not exist") from None
        except IsADirectoryError:
            raise SourceError(f"source {self.path} is a directory, not a Parquet or Arrow file") from None
        except OSError as e:
            raise SourceError(f"cannot read {self.path}: {e.strerror}") from None
        try:
            if head[:4] == b"PAR1":
                self._pq = pq.ParquetFile(self.path)
                self.kind, self.schema, self.rows = "parquet", self._pq.schema_arrow, self._pq.metadata.num_rows
            elif head == b"ARROW1":
                self._reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
                self.kind, self.schema = "arrow-file", self._reader.schema
                self.rows = sum(self._reader.get_batch(i).num_rows for i in range(self._reader.num_record_batches))
            else:
                self._stream = pa.ipc.open_stream(pa.memory_map(str(self.path), "r"))
                self.kind, self.schema, self.rows = "arrow-stream", self._stream.schema, None
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"{self.path} is not a readable Parquet or Arrow IPC file ({first_line(e)})") from None
        if EMBEDDING not in self.schema.names:
            raise MissingColumnError(f"{self.path} has no {EMBEDDING!r} column "
                                     f"(columns: {', '.join(self.schema.names)})")
        etype = self.schema.field(EMBEDDING).type
        if not (pa.types.is_list(etype) or pa.types.is_large_list(etype) or pa.types.is_fixed_size_list(etype)) \
                or not pa.types.is_floating(etype.value_type):
            raise InvalidInputError(f"column {EMBEDDING!r} must be a list of floats, got {etype}")
        if ID in self.schema.names and not pa.types.is_integer(self.schema.field(ID).type):
            raise InvalidInputError(f"column {ID!r} must be integers, got {self.schema.field(ID).type}")

    @property
    def curv(self) -> float | None:
        """The curvature recorded in the schema metadata, if any."""
        raw = (self.schema.metadata or {}).get(CURV_KEY)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise InvalidInputError(f"schema metadata hyperret.curv is not a number: {raw!r}") from None

    @property
    def geometry(self) -> str | None:
        """The geometry recorded in the schema metadata (``lorentz`` / ``cosine``), if any."""
        raw = (self.schema.metadata or {}).get(GEOMETRY_KEY)
        return raw.decode(errors="replace") if raw is not None else None

    @property
    def metadata_columns(self) -> list[str]:
        return [n for n in self.schema.names if n not in (EMBEDDING, ID)]

    def distinct(self, name: str) -> set | None:
        """Distinct values of column ``name`` (``None`` for a stream, which can be read only once)."""
        if name not in self.schema.names:
            return set()
        try:
            if self.kind == "parquet":
                col = pq.read_table(self.path, columns=[name]).column(name)
            elif self.kind == "arrow-file":
                col = pa.chunked_array([self._reader.get_batch(i).column(name)
                                        for i in range(self._reader.num_record_batches)],
                                       type=self.schema.field(name).type)
            else:
                return None
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"{self.path}: read failed ({first_line(e)})") from None
        return set(col.unique().to_pylist())

    def batches(self, row_groups: list[int] | None = None) -> Iterator[Batch]:
        """Validated batches, each ``(vectors, ids, metadata)``; row numbers in errors count from 0.

        ``row_groups``: a Parquet file's row groups to read (default: all; a worker's part).
        """
        start = 0
        for rb in self._record_batches(row_groups):
            yield self._convert(rb, start)
            start += rb.num_rows

    @property
    def row_groups(self) -> list[int]:
        """Rows per Parquet row group (``[]`` for Arrow files and streams)."""
        if self.kind != "parquet":
            return []
        return [self._pq.metadata.row_group(i).num_rows for i in range(self._pq.metadata.num_row_groups)]

    def _record_batches(self, row_groups: list[int] | None = None) -> Iterator[pa.RecordBatch]:
        try:
            if self.kind == "parquet":
                yield from self._pq.iter_batches(batch_size=self.batch_rows, row_groups=row_groups)
            elif self.kind == "arrow-file":
                for i in range(self._reader.num_record_batches):
                    yield self._reader.get_batch(i)
            else:
                yield from self._stream
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"{self.path}: read failed ({first_line(e)})") from None

    def _convert(self, rb: pa.RecordBatch, start: int) -> Batch:
        col = rb.column(EMBEDDING)
        n = rb.num_rows
        if col.null_count:
            row = start + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InvalidInputError(f"{self.path}: null embedding at row {row}")
        if pa.types.is_fixed_size_list(col.type):
            dim = col.type.list_size
            flat = col.flatten()
        else:
            offsets = col.offsets.to_numpy()
            lengths = np.diff(offsets)
            if n and (lengths != lengths[0]).any():
                bad = int(np.flatnonzero(lengths != lengths[0])[0])
                raise DimensionMismatchError(
                    f"{self.path}: ragged embeddings: row {start + bad} has {lengths[bad]} values, "
                    f"row {start} has {lengths[0]}"
                )
            dim = int(lengths[0]) if n else 0
            flat = col.flatten()
        vals = flat.to_numpy(zero_copy_only=False)  # nulls inside become NaN
        vectors = np.asarray(vals, dtype=np.float32).reshape(n, dim) if n else np.zeros((0, dim), np.float32)
        ids = None
        if ID in rb.schema.names:
            idc = rb.column(ID)
            if idc.null_count:
                raise InvalidInputError(f"{self.path}: null id in batch starting at row {start}")
            if not pa.types.is_integer(idc.type):
                raise InvalidInputError(f"{self.path}: the id column must be integers, got {idc.type}")
            raw = idc.to_numpy()
            if raw.dtype == np.uint64 and len(raw) and int(raw.max()) > np.iinfo(np.int64).max:
                raise InvalidInputError(f"{self.path}: id {int(raw.max())} (batch starting at row {start}) is "
                                        f"outside the int64 range ids are stored in")
            ids = raw.astype(np.int64)
        meta_cols = self.metadata_columns
        meta = pa.Table.from_batches([rb.select(meta_cols)]) if meta_cols else None
        return Batch(vectors=vectors, ids=ids, metadata=meta)


@overload
def resolve_curv(given: float | None, recorded: float | None, where: str, *,
                 required: Literal[True] = True) -> float: ...
@overload
def resolve_curv(given: float | None, recorded: float | None, where: str, *, required: bool) -> float | None: ...
def resolve_curv(given: float | None, recorded: float | None, where: str, *, required: bool = True) -> float | None:
    """The curvature from ``--curv`` or the file's ``hyperret.curv``: a contradiction is an error,
    and so is neither when ``required``."""
    if given is not None and recorded is not None and abs(given - recorded) > 1e-9 * max(given, recorded):
        raise InvalidInputError(f"--curv {given:g} contradicts {where}'s hyperret.curv {recorded:g}")
    c = given if given is not None else recorded
    if c is None:
        if required:
            raise InvalidInputError(f"curvature unknown for {where}: pass --curv or set the schema key hyperret.curv")
        return None
    return validate.curvature(c)
