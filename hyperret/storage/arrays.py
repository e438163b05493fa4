"""A minimal container of named NumPy arrays, read memory-mapped without a copy.

Layout: 8 magic bytes, a little-endian u64 header length, a JSON header
(``{"arrays": {name: {"dtype", "shape", "offset"}}, "meta": {...}}``), then each
array's bytes at a 64-byte aligned offset. Integrity is the manifest's checksum.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexCorruptError

MAGIC = b"HYPRARR1"
_ALIGN = 64


def write_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` (C-contiguous copies are made where needed) and ``meta`` to ``path``."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    entries, offset = {}, 0
    for name, a in arrays.items():
        entries[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    header = json.dumps({"arrays": entries, "meta": meta}).encode()
    start = -(-(len(MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for name, a in arrays.items():
            f.seek(start + entries[name]["offset"])
            f.write(a.tobytes())
        f.truncate(start + offset)


def read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Memory-mapped, read-only views of the arrays in ``path``, and its meta dict.

    The header is untrusted: only plain numeric dtypes, shapes of non-negative
    integers and ranges inside the file are accepted (:class:`IndexCorruptError`).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
            raise IndexCorruptError(f"{path.name}: not a hyperret array file")
        (n,) = struct.unpack("<Q", head[len(MAGIC):])
        if n > size:
            raise IndexCorruptError(f"{path.name}: header runs past the end of the file")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise IndexCorruptError(f"{path.name}: unreadable header ({e})") from None
    if (not isinstance(header, dict) or not isinstance(header.get("arrays"), dict)
            or not isinstance(header.get("meta", {}), dict)):
        raise IndexCorruptError(f"{path.name}: malformed header")
    start = -(-(len(MAGIC) + 8 + n) // _ALIGN) * _ALIGN
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    out = {}
    for name, entry in header["arrays"].items():
        dt, shape, offset = _entry(path, name, entry)
        count = 1
        for s in shape:
            count *= s
        lo = start + offset
        if lo + count * dt.itemsize > size:
            raise IndexCorruptError(f"{path.name}: array {name!r} runs past the end of the file")
        out[name] = mm[lo : lo + count * dt.itemsize].view(dt).reshape(shape)
    return out, header.get("meta", {})


def _entry(path: Path, name: str, entry: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """A header entry's dtype (plain numeric only), shape and offset, checked."""
    try:
        dt = np.dtype(entry["dtype"])
        shape = tuple(entry["shape"])
        offset = entry["offset"]
    except (TypeError, KeyError, ValueError):
        raise IndexCorruptError(f"{path.name}: array {name!r} has a malformed header entry") from None
    if dt.kind not in "biuf" or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise IndexCorruptError(f"{path.name}: array {name!r} has dtype {dt}, not a plain number type")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in shape):
        raise IndexCorruptError(f"{path.name}: array {name!r} has an invalid shape {list(shape)}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise IndexCorruptError(f"{path.name}: array {name!r} has an invalid offset {offset!r}")
    return dt, shape, offset
