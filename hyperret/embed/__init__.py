"""The embed stage: checkpoints in, Lorentz (or unit-sphere) embeddings out.

Everything under this package imports torch (and open_clip, Pillow) inside the
functions that need them, so importing it is cheap; the vector paths (storage,
candidate stage, rerank, planner) never import it.
"""

from __future__ import annotations

from .encoder import CLIPEncoder, Encoder, HySACEncoder, load_encoder

__all__ = ["Encoder", "HySACEncoder", "CLIPEncoder", "load_encoder"]
