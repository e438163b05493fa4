"""A snapshot's rows held on a GPU: uploaded once, grown by new shards only, with their norms.

The rows of all shards live in one device buffer (float32, or float16 to halve the
memory), in global row order, with ``|x|^2`` and the time component computed on the
device. A commit appends shards, so :meth:`DeviceRows.sync` uploads only the shards
the device does not hold yet (the buffer grows by half when full: a device-to-device
copy, never a re-upload); a compaction rewrites them, and then everything is
uploaded again. Each :class:`Resident` is an immutable view for one snapshot: a
search keeps the view it started with while a later sync grows the buffer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..storage.shardset import ShardSet
from .device import Device
from .kernels import MAX_ROWS, row_norms

STORAGE = ("float32", "float16")
#: spare capacity a buffer grows by (a fraction of the rows it must hold)
_GROWTH = 0.5
#: rows copied to the device per transfer (bounds the host staging copy)
_UPLOAD_ROWS = 1 << 17


@dataclass(frozen=True)
class Resident:
    """The device rows of one snapshot: ``rows (>= n, D)``, ``xn``/``xt (>= n,)`` float64, ``n`` rows valid."""

    rows: Any
    xn: Any
    xt: Any
    n: int
    storage: str


class DeviceRows:
    """The rows of one index on one device, kept in step with its snapshots."""

    def __init__(self, device: Device, dim: int, curv: float, storage: str = "float32"):
        if storage not in STORAGE:
            raise InvalidInputError(f"unknown device storage {storage!r} (one of: {', '.join(STORAGE)})")
        self.device = device
        self.dim = dim
        self.curv = curv
        self.storage = storage
        self._dtype = np.dtype(storage)
        self._lock = threading.Lock()
        #: the shard files the buffer holds (in order) and their view: one reference, swapped whole
        self._held: tuple[list[str], Resident | None] = ([], None)
        self._capacity = 0
        #: bytes copied from the host since this object was made (rows only)
        self.uploaded_bytes = 0
        #: full uploads (the first, and after a compaction rewrote the shards)
        self.full_uploads = 0

    def sync(self, files: Sequence[str], shards: ShardSet) -> Resident:
        """The device view of a snapshot's ``shards``, named by their ``files``, uploading what is new."""
        files = list(files)
        held, view = self._held
        if view is not None and held == files:
            return view
        with self._lock:
            self.device.select()
            held, view = self._held
            if view is not None and held == files:
                return view
            arrays = shards.arrays
            if view is not None and files[: len(held)] == held:
                start, rows, xn, xt = view.n, view.rows, view.xn, view.xt
                new = arrays[len(held):]
            else:  # first upload, or the shards were rewritten (compaction)
                start, rows, xn, xt, new = 0, None, None, None, arrays
                self._capacity = 0
                self.full_uploads += 1
            total = start + sum(a.shape[0] for a in new)
            if total > MAX_ROWS:
                raise InvalidInputError(f"{total} rows: a GPU-resident index holds at most {MAX_ROWS}")
            if rows is None or total > self._capacity:
                rows, xn, xt = self._grow(rows, xn, xt, start, total)
            at = start
            for a in new:
                self._upload(rows, xn, xt, a, at)
                at += a.shape[0]
            view = Resident(rows=rows, xn=xn, xt=xt, n=total, storage=self.storage)
            self._held = (files, view)
            return view

    def _grow(self, rows: Any, xn: Any, xt: Any, keep: int, need: int) -> tuple[Any, Any, Any]:
        """Buffers of ``need`` rows plus a spare half, holding the first ``keep`` rows of the old ones."""
        from numba import cuda

        cap = max(int(need * (1 + _GROWTH)), 1) if keep else max(need, 1)
        new_rows = cuda.device_array((cap, self.dim), dtype=self._dtype)
        new_xn = cuda.device_array(cap, dtype=np.float64)
        new_xt = cuda.device_array(cap, dtype=np.float64)
        if rows is not None and keep:
            new_rows[:keep].copy_to_device(rows[:keep])  # device to device
            new_xn[:keep].copy_to_device(xn[:keep])
            new_xt[:keep].copy_to_device(xt[:keep])
        self._capacity = cap
        return new_rows, new_xn, new_xt

    def _upload(self, rows: Any, xn: Any, xt: Any, space: np.ndarray, at: int) -> None:
        """Copy shard ``space: (r, D)`` float32 to rows ``at ..`` and compute its norms on the device."""
        for s in range(0, space.shape[0], _UPLOAD_ROWS):
            part = np.ascontiguousarray(space[s : s + _UPLOAD_ROWS], dtype=self._dtype)
            rows[at + s : at + s + len(part)].copy_to_device(part)
            self.uploaded_bytes += part.nbytes
        count = space.shape[0]
        if count:
            threads = 128
            row_norms[(count + threads - 1) // threads, threads](rows, at, count, 1.0 / self.curv, xn, xt)

    def memory(self) -> dict[str, Any]:
        """Device bytes this index holds (rows and norms, capacity included) and the rows resident."""
        view = self._held[1]
        row_bytes = self._capacity * self.dim * self._dtype.itemsize
        return {"storage": self.storage, "rows": view.n if view is not None else 0, "capacity_rows": self._capacity,
                "rows_bytes": row_bytes, "norms_bytes": 16 * self._capacity, "uploaded_bytes": self.uploaded_bytes,
                "full_uploads": self.full_uploads, **self.device.memory()}
