"""The embed stage: checkpoints in, Lorentz (or unit-sphere) embeddings out.

Everything under this package imports torch lazily or directly; the vector paths
(storage, candidate stage, rerank, planner) never import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encoder import CLIPEncoder, Encoder, HySACEncoder

__all__ = ["Encoder", "HySACEncoder", "CLIPEncoder", "load_encoder"]


def __getattr__(name: str) -> Any:
    if name in ("Encoder", "HySACEncoder", "CLIPEncoder", "load_encoder"):
        from . import encoder

        return getattr(encoder, name)
    raise AttributeError(name)
