"""Checks on user input: vectors, ids and metadata. Each failure is a named error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import DimensionMismatchError, DuplicateIdError, InvalidInputError, NonFiniteError
from .storage.manifest import CURV_MAX, CURV_MIN
from .storage.shards import RESERVED_COLUMNS

#: The id that marks "no result" in search output; users cannot store it.
NO_ID = -1
#: Ids are stored as int64.
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


def curvature(c: Any) -> float:
    """``c`` of the curvature ``-c`` as a positive finite float."""
    try:
        c = float(c)
    except (TypeError, ValueError):
        raise InvalidInputError(f"curvature must be a number, got {c!r}") from None
    if not np.isfinite(c) or c <= 0:
        raise InvalidInputError(f"curvature must be positive and finite, got {c}")
    if not CURV_MIN <= c <= CURV_MAX:
        raise InvalidInputError(f"curvature {c:g} is outside [{CURV_MIN:g}, {CURV_MAX:g}], the range where "
                                f"hyperret's float64 distances keep the ranking exact")
    return c


#: Largest ``sqrt(curv) * |x|`` accepted: measured exact through 1e15 (ranking against a float64
#: brute force); beyond about 1.8e19 a float32 ``|x|^2`` overflows.
MAX_SCALED_NORM = 1e15


def norms(x: np.ndarray, curv: float, what: str = "vectors") -> np.ndarray:
    """``x: (n, D)`` unchanged if every ``sqrt(curv) * |x|`` is at most :data:`MAX_SCALED_NORM`."""
    if len(x):
        big = np.sqrt(curv) * np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        bad = np.flatnonzero(big > MAX_SCALED_NORM)
        if len(bad):
            raise InvalidInputError(
                f"{what}: row {bad[0]} has norm {float(big[bad[0]] / np.sqrt(curv)):.3g}; hyperret ranks exactly "
                f"for sqrt(curv) * |x| in [0, {MAX_SCALED_NORM:g}] ({len(bad)} row(s) outside)")
    return x


def integer(v: Any, what: str, *, minimum: int) -> int:
    """``v`` as a Python int ``>= minimum`` (NumPy integers accepted, bools refused)."""
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < minimum:
        raise InvalidInputError(f"{what} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def radius(r: Any, what: str = "radius") -> float:
    """A geodesic distance as a finite float ``>= 0``."""
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a number, got {r!r}") from None
    if not np.isfinite(r) or r < 0:
        raise InvalidInputError(f"{what} must be a finite number >= 0, got {r!r}")
    return r


def vectors(x: Any, dim: int | None, what: str = "vectors") -> np.ndarray:
    """``x`` as a C-contiguous ``(n, dim)`` float32 array of finite values."""
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            a = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise DimensionMismatchError(f"{what} are ragged or not numeric: {e}") from None
    if a.ndim == 1 and dim is not None and a.shape[0] == dim:
        a = a[None, :]
    if a.ndim != 2:
        raise DimensionMismatchError(f"{what} must be a 2-D array (n, dim), got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise DimensionMismatchError(f"{what} have dimension {a.shape[1]}, the index has {dim}")
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        raise NonFiniteError(
            f"{what} contain NaN or infinite values (or values beyond float32) "
            f"in {len(bad)} row(s), first at row {bad[0]}"
        )
    return np.ascontiguousarray(a)


def ids(x: Any, n: int) -> np.ndarray:
    """User ids as ``(n,)`` int64, unique within the batch and never :data:`NO_ID`."""
    try:
        a = np.asarray(x)
    except OverflowError:
        a = np.asarray(x, dtype=object)
    if a.ndim != 1 or a.shape[0] != n:
        raise InvalidInputError(f"ids must be a 1-D sequence of {n} integers, got shape {a.shape}")
    if n and a.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in a):
        big = [int(v) for v in a if not ID_MIN <= int(v) <= ID_MAX]
        if big:
            raise InvalidInputError(f"id {big[0]} is outside the int64 range ids are stored in "
                                    f"[{ID_MIN}, {ID_MAX}]")
        a = a.astype(np.int64)
    if n and not np.issubdtype(a.dtype, np.integer):
        raise InvalidInputError(f"ids must be integers, got {a.dtype}")
    if n and a.dtype == np.uint64 and int(a.max()) > ID_MAX:
        raise InvalidInputError(f"id {int(a.max())} is outside the int64 range ids are stored in "
                                f"[{ID_MIN}, {ID_MAX}]")
    a = a.astype(np.int64)
    if (a == NO_ID).any():
        raise InvalidInputError(f"id {NO_ID} is reserved (it marks missing results)")
    uniq, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        raise DuplicateIdError(f"duplicate id {int(uniq[counts > 1][0])} within the batch")
    return a


def metadata(x: Any, n: int) -> pa.Table | None:
    """Metadata as an Arrow table of ``n`` rows (from a table, record batch or dict of columns)."""
    if x is None:
        return None
    if isinstance(x, pa.RecordBatch):
        x = pa.Table.from_batches([x])
    if isinstance(x, Mapping):
        try:
            x = pa.table({k: _column(v) for k, v in x.items()})
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise InvalidInputError(f"metadata columns are not Arrow-convertible: {e}") from None
    if not isinstance(x, pa.Table):
        raise InvalidInputError("metadata must be an Arrow table, a record batch or a dict of columns")
    if x.num_rows != n:
        raise InvalidInputError(f"metadata has {x.num_rows} rows, the vectors {n}")
    clash = sorted(set(x.column_names) & set(RESERVED_COLUMNS))
    if clash:
        raise InvalidInputError(f"metadata columns may not be named {clash} (reserved)")
    if len(set(x.column_names)) != len(x.column_names):
        raise InvalidInputError("metadata has repeated column names")
    return x.combine_chunks()


def _column(v: Any) -> pa.Array:
    if isinstance(v, (pa.Array, pa.ChunkedArray)):
        return v
    return pa.array(np.asarray(v) if isinstance(v, np.ndarray) else list(v))
