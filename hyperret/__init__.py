"""hyperret: safety-aware hyperbolic vector retrieval for HySAC embeddings.

>>> import numpy as np, hyperret, tempfile
>>> from hyperret import lorentz
>>> x = lorentz.exp_map0(np.array([[0.3, 0.4]]), curv=1.0)
>>> round(float(lorentz.radius(x, 1.0)[0]), 6)
0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from . import errors
from .dedup import DedupResult
from .errors import HyperretError
from .geometry import lorentz
from .index import Index
from .safety import Bounds, Classification, calibrate
from .safety.planner import QueryPlan
from .search.presets import Preset, list_presets, load_preset
from .search.result import SearchResult

if TYPE_CHECKING:
    from .distributed import ShardedIndex
    from .embed.encoder import CLIPEncoder, HySACEncoder, load_encoder

_LAZY = {"HySACEncoder", "CLIPEncoder", "load_encoder"}  # the model stack (torch) loads on first use


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from .embed import encoder

        return getattr(encoder, name)
    if name == "ShardedIndex":  # Ray loads on first use too (the ray extra)
        from .distributed import ShardedIndex

        return ShardedIndex
    raise AttributeError(f"module 'hyperret' has no attribute {name!r}")

__all__ = [
    "Index",
    "ShardedIndex",
    "HySACEncoder",
    "CLIPEncoder",
    "load_encoder",
    "DedupResult",
    "SearchResult",
    "QueryPlan",
    "Bounds",
    "Classification",
    "calibrate",
    "Preset",
    "HyperretError",
    "errors",
    "list_presets",
    "load_preset",
    "lorentz",
    "__version__",
]
