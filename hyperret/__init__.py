"""hyperret: safety-aware hyperbolic vector retrieval for HySAC embeddings.

>>> import numpy as np, hyperret, tempfile
>>> from hyperret import lorentz
>>> x = lorentz.exp_map0(np.array([[0.3, 0.4]]), curv=1.0)
>>> round(float(lorentz.radius(x, 1.0)[0]), 6)
0.5
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import errors, lorentz
from .errors import HyperretError
from .index import Index
from .planner import QueryPlan
from .presets import Preset, list_presets, load_preset
from .result import SearchResult
from .safety import Bounds, Classification, calibrate

__all__ = [
    "Index",
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
