"""faiss-gpu: the flat and IVF candidate structures copied to a GPU, within FAISS's GPU limits.

Used only where the installed FAISS was built with GPU support (the ``gpu`` extra
installs ``faiss-gpu-cu12``; ``faiss-cpu`` has none, and then nothing moves). FAISS's
GPU indexes answer at most :data:`GPU_MAX_K` neighbours per search and take no
``IDSelector``; such searches (a wide widening round, a filter or deletion mask) go
to the CPU copy, which stays loaded. HNSW graphs have no GPU version in FAISS, and
hyperret's own Lorentz graph is walked on the CPU: those stay where they are.
"""

from __future__ import annotations

from typing import Any

import faiss

#: the most neighbours one FAISS GPU search returns (its k-selection's limit)
GPU_MAX_K = 2048


def available() -> bool:
    """True when the installed FAISS has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and int(getattr(faiss, "get_num_gpus", lambda: 0)()) > 0


class GpuStructure:
    """A FAISS structure's GPU copy beside the CPU original; :meth:`takes` says which one a search uses."""

    def __init__(self, index: Any, gpu_index: Any, max_k: int = GPU_MAX_K):
        self.cpu, self.index, self.max_k = index, gpu_index, max_k

    @classmethod
    def copy(cls, index: Any, ordinal: int, resources: Any) -> GpuStructure:
        """``index`` (flat or IVF) copied to device ``ordinal`` with ``index_cpu_to_gpu``."""
        return cls(index, faiss.index_cpu_to_gpu(resources, ordinal, index))

    def takes(self, kc: int, params: Any) -> bool:
        """Whether the GPU copy can answer a search of ``kc`` neighbours with ``params`` (no selector)."""
        return kc <= self.max_k and (params is None or getattr(params, "sel", None) is None)


class GpuStructures:
    """The GPU copies of one index's candidate structures, by structure file (each copied once)."""

    def __init__(self, ordinal: int):
        self.ordinal = ordinal
        self._resources: Any = None
        self._copies: dict[str, GpuStructure] = {}

    def attach(self, files: list[str], stages: list[Any]) -> int:
        """Give every flat or IVF stage (one per file) its GPU copy; returns how many stages have one."""
        if self._resources is None:
            self._resources = faiss.StandardGpuResources()
        copies: dict[str, GpuStructure] = {}
        for f, st in zip(files, stages):
            if not st.movable_to_gpu:
                continue
            c = self._copies.get(f)
            if c is None:
                c = GpuStructure.copy(st.index, self.ordinal, self._resources)
            st.on_gpu = copies[f] = c
        self._copies = copies  # structures a compaction replaced are let go
        return len(copies)
