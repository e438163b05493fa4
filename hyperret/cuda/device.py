"""Which device: ``cpu`` / ``cuda`` / ``cuda:N`` parsed, checked and selected; its memory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

_PATTERN = re.compile(r"^cuda(?::(\d{1,3}))?$")


def parse_device(device: str | None) -> int | None:
    """``None``/``"cpu"`` -> ``None``; ``"cuda"`` -> 0; ``"cuda:N"`` -> ``N`` (a one-line error otherwise)."""
    if device is None or device == "cpu":
        return None
    if not isinstance(device, str):
        raise InvalidInputError(f"device must be a string (cpu, cuda or cuda:N), got {type(device).__name__}")
    m = _PATTERN.match(device.strip())
    if m is None:
        raise InvalidInputError(f"unknown device {device!r} (cpu, cuda or cuda:N)")
    return int(m.group(1) or 0)


def simulated() -> bool:
    """True when Numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@dataclass(frozen=True)
class Device:
    """One CUDA device, selected for the calling thread before each use."""

    ordinal: int

    @classmethod
    def open(cls, device: str) -> Device:
        """The device ``cuda`` / ``cuda:N``, checked to exist (a one-line error if no GPU or no such one)."""
        ordinal = parse_device(device)
        if ordinal is None:
            raise InvalidInputError("a GPU-resident index needs device cuda or cuda:N, not cpu")
        from numba import cuda

        if not cuda.is_available():
            raise InvalidInputError(f"device {device!r}: no CUDA GPU is available (numba.cuda found no driver)")
        count = len(cuda.gpus)
        if ordinal >= count:
            raise InvalidInputError(f"device {device!r}: only {count} CUDA device(s) exist")
        dev = cls(ordinal)
        dev.select()
        return dev

    def select(self) -> None:
        """Make this the calling thread's current device (numba.cuda contexts are per thread)."""
        from numba import cuda

        if not simulated():
            cuda.select_device(self.ordinal)

    def memory(self) -> dict[str, Any]:
        """``{"device", "name", "free_bytes", "total_bytes"}`` of this device, as the driver reports them."""
        from numba import cuda

        self.select()
        if simulated():  # the simulator has no memory to report (it says inf)
            return {"device": f"cuda:{self.ordinal}", "name": "numba CUDA simulator", "free_bytes": None,
                    "total_bytes": None}
        free, total = cuda.current_context().get_memory_info()
        name = cuda.get_current_device().name
        return {"device": f"cuda:{self.ordinal}", "name": name.decode() if isinstance(name, bytes) else str(name),
                "free_bytes": int(free), "total_bytes": int(total)}
