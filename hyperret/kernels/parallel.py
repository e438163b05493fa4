"""Running a batch kernel: serially for a few queries, in parallel otherwise.

Numba's TBB and OpenMP layers run parallel kernels from many threads at once; its
fallback workqueue layer cannot, so there the parallel calls are serialised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numba

#: Below this many queries a batch runs on the calling thread (no thread-pool start-up).
PARALLEL_MIN_QUERIES = 4

_workqueue_lock = threading.Lock()


def run(serial: Callable[..., Any], parallel: Callable[..., Any], n_queries: int, *args: Any) -> None:
    """Call ``serial(*args)`` for small batches, else ``parallel(*args)`` (locked where it must be)."""
    if n_queries < PARALLEL_MIN_QUERIES:
        serial(*args)
    elif _needs_lock():
        with _workqueue_lock:
            parallel(*args)
    else:
        parallel(*args)


def _needs_lock() -> bool:
    try:
        return numba.threading_layer() == "workqueue"
    except ValueError:  # no parallel kernel has run yet: be safe for the first call
        return True
