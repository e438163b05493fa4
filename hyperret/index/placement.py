"""Where an index searches: on the CPU over the memory-mapped shards, or with its rows held on a GPU."""

from __future__ import annotations

import threading
from typing import Any

from ..errors import InvalidInputError
from ..search.exact import Exact
from ..storage.snapshot import Snapshot


class OnDevice:
    """An index's rows resident on one CUDA device, kept in step with its snapshots.

    ``storage``: ``float32`` (exact on the device) or ``float16`` (half the device
    memory; the scan proposes wider and the rerank reads the float32 shards on the
    host). ``scan``: ``auto``, ``fused`` or ``gemm`` (:mod:`hyperret.cuda.exact`).
    Where FAISS has GPU support, the flat and IVF structures are copied there too
    (:mod:`hyperret.cuda.faiss_gpu`): searches that set ``nprobe``/``ef`` use them.
    """

    def __init__(self, device: str, dim: int, curv: float, storage: str = "float32", scan: str = "auto"):
        from ..cuda import Device, DeviceRows, faiss_gpu
        from ..cuda.exact import METHODS

        if scan not in METHODS:  # before the device is opened and the rows uploaded
            raise InvalidInputError(f"unknown GPU scan method {scan!r} (one of: {', '.join(METHODS)})")
        self.device = Device.open(device)
        self.rows = DeviceRows(self.device, dim, curv, storage)
        self.curv, self.scan = curv, scan
        #: faiss-gpu copies of the flat / IVF structures (None: this FAISS has no GPU support)
        self.structures = faiss_gpu.GpuStructures(self.device.ordinal) if faiss_gpu.available() else None
        self.structures_on_gpu = 0
        self._cached: tuple[Snapshot, Any] | None = None
        self._lock = threading.Lock()

    def exact(self, snap: Snapshot) -> Exact:
        """The CUDA kernels over ``snap``'s rows (new shards uploaded first; one object per snapshot)."""
        cached = self._cached
        if cached is not None and cached[0] is snap:
            return cached[1]
        from ..cuda import CudaExact

        with self._lock:
            view = self.rows.sync([e.file for e in snap.manifest.shards], snap.shardset)
            if self.structures is not None and snap.stage is not None:
                self.structures_on_gpu = self.structures.attach([c.file for c in snap.manifest.candidates],
                                                                [p.stage for p in snap.stage.parts])
            ex = CudaExact(self.device, view, snap.shardset, self.curv, method=self.scan)
            self._cached = (snap, ex)
            return ex

    def memory(self) -> dict[str, Any]:
        """What the index holds on the device and what the device has (:meth:`DeviceRows.memory`)."""
        return {**self.rows.memory(), "faiss_gpu": self.structures is not None,
                "structures_on_gpu": self.structures_on_gpu}

