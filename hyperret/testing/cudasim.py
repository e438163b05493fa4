"""Numba's CUDA simulator made fast and safe enough for the tests of the GPU path.

The simulator runs each GPU thread as a Python thread and polls them at every
``syncthreads``; with Python's default 5 ms switch interval a barrier costs
milliseconds, so :func:`fast_simulator` shortens the interval (about 7x faster
here). A short interval also exposes a race of the simulator's own: two threads
of a block can both create a ``cuda.shared.array`` (an unlocked check-then-insert),
each then writing its own "shared" copy. :func:`fast_simulator` serialises that
creation. Neither change touches a real GPU: off the simulator it does nothing.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_LOCK = threading.Lock()


def _shared_array(self: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``FakeCUDAShared.array`` with its allocation under a lock (same call-site keying)."""
    from numba.core import types
    from numba.np import numpy_support

    if isinstance(dtype, types.Type):
        dtype = numpy_support.as_dtype(dtype)
    if shape == 0:
        count = self._dynshared_size // dtype.itemsize
        return np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
    caller = traceback.extract_stack(sys._getframe())[-2][0:2]
    with _LOCK:
        res = self._allocations.get(caller)
        if res is None:
            res = self._allocations[caller] = np.empty(shape, dtype)
    return res


@contextmanager
def fast_simulator(interval: float = 1e-6) -> Iterator[None]:
    """Within: a short thread switch interval and race-free shared arrays (only when the simulator is on)."""
    from ..cuda.device import simulated

    if not simulated():
        yield
        return
    from numba.cuda.simulator import kernelapi

    old_interval, old_array = sys.getswitchinterval(), kernelapi.FakeCUDAShared.array
    sys.setswitchinterval(interval)
    kernelapi.FakeCUDAShared.array = _shared_array  # type: ignore[method-assign]
    try:
        yield
    finally:
        kernelapi.FakeCUDAShared.array = old_array  # type: ignore[method-assign]
        sys.setswitchinterval(old_interval)
