"""Unsafe-content classification by the distance to the origin (HySAC's radius rule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..geometry import lorentz
from .bounds import MODALITIES, MODALITY_CLASSES, Bounds


@dataclass(frozen=True)
class Classification:
    """Per item: ``unsafe`` (bool), ``score`` (calibrated probability of unsafe), ``radius``."""

    unsafe: np.ndarray  # shape: (n,) bool
    score: np.ndarray  # shape: (n,) float32
    radius: np.ndarray  # shape: (n,) float64, geodesic distance to the origin
    modality: np.ndarray  # shape: (n,) str

    @property
    def cls(self) -> np.ndarray:
        """Predicted ViSU class letter per item (S/U for text, V/G for images) -> ``(n,)`` str."""
        safe = np.where(self.modality == "text", "S", "V")
        unsafe = np.where(self.modality == "text", "U", "G")
        return np.where(self.unsafe, unsafe, safe)

    def __len__(self) -> int:
        return int(self.unsafe.shape[0])

    def to_dict(self) -> dict[str, list[Any]]:
        return {"unsafe": self.unsafe.tolist(), "score": self.score.tolist(),
                "radius": self.radius.tolist(), "modality": self.modality.tolist(), "class": self.cls.tolist()}


def modality_array(modality: Any, n: int) -> np.ndarray:
    """One modality for all ``n`` items, or one per item -> ``(n,)`` str (validated)."""
    if isinstance(modality, str):
        mod = np.full(n, modality, dtype=object).astype(str)
    else:
        mod = np.asarray(list(modality), dtype=str)
        if mod.shape != (n,):
            raise InvalidInputError(f"modality: got {mod.shape[0]} entries for {n} items")
    bad = sorted(set(np.unique(mod)) - set(MODALITIES)) if n else []
    if bad:
        raise InvalidInputError(f"unknown modality {bad[0]!r} (expected text or image)")
    return mod


def classify_radius(radius: np.ndarray, modality: Any, bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    """``(unsafe (n,) bool, score (n,) float32)`` for radii ``(n,)`` under ``bounds``."""
    r = np.asarray(radius, dtype=np.float64)
    mod = modality_array(modality, len(r))
    unsafe = np.zeros(len(r), dtype=bool)
    score = np.zeros(len(r), dtype=np.float32)
    for m in MODALITY_CLASSES:
        sel = mod == m
        if sel.any():
            t = bounds.threshold(m)
            unsafe[sel] = t.is_unsafe(r[sel])
            score[sel] = t.probability(r[sel])
    return unsafe, score


def classify(vectors: np.ndarray, bounds: Bounds, curv: float, modality: Any = "image") -> Classification:
    """Classify space components ``(n, D)`` by their radius under ``bounds``."""
    bounds.check_curv(curv)
    x = np.atleast_2d(np.asarray(vectors))
    r = lorentz.radius(x, curv)
    mod = modality_array(modality, len(r))
    unsafe, score = classify_radius(r, mod, bounds)
    return Classification(unsafe=unsafe, score=score, radius=r, modality=mod)
