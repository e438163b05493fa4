"""8-bit navigation codes: the rows a graph walk reads, at a quarter of their bytes.

A graph walk is bound by memory: each step loads whole rows (3 KB at dim 768)
from random places. With ``codes = "sq8"`` a Lorentz-walked graph keeps, beside
its links, each row's *direction* ``u = x / |x|`` as one byte per dimension
(per-dimension scalar quantisation over the directions' range:
``u_j ~ lo_j + step_j * code_j``) and each row's exact ``|x|^2``. The walk's gap
``(|q|^2 + |x|^2 - 2 q.x - ((|q|^2 - |x|^2)/(q_t + x_t))^2) / 2`` then needs only
``q.x = |x| (q.lo + (q * step).code)``: the norms, and so the radial term that
dominates far from the origin, stay exact, and coding directions (not coordinates)
keeps the error relative to each row's norm, so heavy-tailed radii cost no precision
near the origin. The walk only orders rows; the rerank reads the float32 rows and
decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Rows encoded per block (bounds the float32 temporaries).
_BLOCK = 65_536


@dataclass(frozen=True)
class Codes:
    """Per-row uint8 codes of the directions ``(n, D)``, their decoding ``lo``/``step`` ``(D,)``, ``|x|^2`` ``(n,)``."""

    codes: np.ndarray
    lo: np.ndarray
    step: np.ndarray
    sqnorm: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @classmethod
    def encode(cls, spaces: Sequence[np.ndarray], dim: int) -> Codes:
        """Codes of every row of ``spaces`` (each ``(n_i, dim)``), over their own per-dimension range."""
        lo = np.full(dim, np.inf, dtype=np.float32)
        hi = np.full(dim, -np.inf, dtype=np.float32)
        for s in spaces:
            for b in range(0, len(s), _BLOCK):
                block = _directions(np.asarray(s[b : b + _BLOCK], dtype=np.float32))
                lo = np.minimum(lo, block.min(axis=0))
                hi = np.maximum(hi, block.max(axis=0))
        if not np.isfinite(lo).all():  # no rows
            lo, hi = np.zeros(dim, np.float32), np.ones(dim, np.float32)
        step = np.maximum((hi - lo) / 255.0, np.float32(1e-30)).astype(np.float32)
        empty = cls(np.zeros((0, dim), np.uint8), lo.astype(np.float32), step, np.zeros(0, np.float32))
        return empty.extended(spaces)

    def extended(self, spaces: Sequence[np.ndarray]) -> Codes:
        """These codes followed by those of ``spaces`` (same range: values outside it are clipped); a copy."""
        parts, norms = [self.codes], [self.sqnorm]
        for s in spaces:
            for b in range(0, len(s), _BLOCK):
                block = np.asarray(s[b : b + _BLOCK], dtype=np.float32)
                u = _directions(block)
                parts.append(np.clip(np.rint((u - self.lo) / self.step), 0, 255).astype(np.uint8))
                norms.append(np.einsum("ij,ij->i", block, block, dtype=np.float64).astype(np.float32))
        return Codes(np.ascontiguousarray(np.concatenate(parts)), self.lo, self.step, np.concatenate(norms))

    def arrays(self) -> dict[str, np.ndarray]:
        """The named arrays saved beside the graph's."""
        return {"codes": self.codes.reshape(-1), "code_lo": self.lo, "code_step": self.step,
                "code_sqnorm": self.sqnorm}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], rows: int, dim: int) -> Codes | None:
        """Codes read with a saved graph (None when it has none); ``ValueError`` unless they fit ``rows x dim``."""
        if "codes" not in arrays:
            return None
        want = {"codes": (np.uint8, rows * dim), "code_lo": (np.float32, dim), "code_step": (np.float32, dim),
                "code_sqnorm": (np.float32, rows)}
        for name, (dt, size) in want.items():
            a = arrays.get(name)
            if a is None or a.dtype != dt or a.ndim != 1 or a.shape[0] != size:
                raise ValueError(f"navigation array {name!r} missing or not {size} {np.dtype(dt).name} values")
        lo, step, sq = arrays["code_lo"], arrays["code_step"], arrays["code_sqnorm"]
        if not (np.isfinite(lo).all() and np.isfinite(step).all() and (step > 0).all()):
            raise ValueError("navigation code ranges are not finite and positive")
        if not (np.isfinite(sq).all() and (sq >= 0).all()):
            raise ValueError("navigation norms are not finite and non-negative")
        return cls(arrays["codes"].reshape(rows, dim), lo, step, sq)


def _directions(x: np.ndarray) -> np.ndarray:
    """``x / |x|`` per row ``(b, D)`` float32 (a zero row stays zero)."""
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return (x / np.where(norm > 0, norm, 1.0)[:, None]).astype(np.float32)
