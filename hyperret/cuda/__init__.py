"""The GPU path: numba.cuda kernels of the exact Lorentz search, rows resident on a device, faiss-gpu.

Imported only when a device is asked for (``Index.open(path, device="cuda")``):
``numba.cuda`` and CuPy stay out of the CPU path's start-up. Every kernel runs under
Numba's CUDA simulator too (``NUMBA_ENABLE_CUDASIM=1``), which is how CI tests them.
"""

from __future__ import annotations

from .device import Device, parse_device, simulated
from .exact import CudaExact
from .resident import DeviceRows

__all__ = ["CudaExact", "Device", "DeviceRows", "parse_device", "simulated"]
