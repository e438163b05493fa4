"""HySAC's reference safety traversal, transcribed from its public code (torch, float32 as it runs there).

From ``hysac/lorentz.py`` (``pairwise_dist``), ``HySAC.traverse_to_safe_image`` /
``traverse_to_safe_text`` (inward) and the ``lower_bound`` branch of
``recalls.recall_div_traversal`` (outward), and the helpers that measure against it. Used by
the tests and by ``tools/bench_hysac_parity.py`` to hold hyperret's ``hysac`` mode to it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hyperret.geometry import lorentz


def ref_pairwise_dist(x: Any, y: Any, curv: Any, eps: float = 1e-8) -> Any:
    """``pairwise_dist`` for two 1-D points (what ``traverse_to_safe_*`` passes it)."""
    import torch

    x_time = torch.sqrt(1 / curv + torch.sum(x**2, dim=-1, keepdim=True))
    y_time = torch.sqrt(1 / curv + torch.sum(y**2, dim=-1, keepdim=True))
    xyl = x @ y - x_time @ y_time
    return torch.acosh(torch.clamp(-curv * xyl, min=1 + eps)) / curv**0.5


def ref_move(emb: Any, bound: float, log_curv: float, alpha: float = 0.8, outward: bool = False) -> tuple[Any, bool]:
    """One query ``emb: (D,)`` float32 tensor -> ``(searched point, moved)`` as the reference computes them."""
    import torch

    curv = torch.nn.Parameter(torch.tensor(log_curv))  # HySAC keeps log c as a float32 parameter
    with torch.inference_mode():
        root_feat = torch.zeros_like(emb)
        distance = ref_pairwise_dist(root_feat, emb, curv=curv.exp())
        bound = bound + (math.tanh((bound - alpha) / curv.exp()) + 1)
        if (distance < bound) if outward else (distance > bound):
            direction = emb - root_feat
            n_direction = direction / torch.norm(direction, dim=-1)
            return root_feat + bound * n_direction, True
        return emb, False


def points_at_radii(radii: np.ndarray, dim: int, curv: float, rng: np.random.Generator) -> np.ndarray:
    """Points at the given geodesic ``radii: (n,)`` in random directions -> ``(n, dim)`` float32."""
    return lorentz.point_at_radius(rng.standard_normal((len(radii), dim)), radii, curv).astype(np.float32)


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference between two float32 arrays in units in the last place (0 when empty)."""
    ia = np.asarray(a, np.float32).view(np.int32).astype(np.int64)
    ib = np.asarray(b, np.float32).view(np.int32).astype(np.int64)
    return int(np.abs(ia - ib).max()) if ia.size else 0
