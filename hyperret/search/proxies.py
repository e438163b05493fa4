"""Candidate spaces: Euclidean or inner-product images of Lorentz points for FAISS.

Each proxy maps database rows and queries (space components, ``(n, D)``) to
float32 vectors whose FAISS metric ranks candidates for the exact rerank.

- ``ip``: ``[x_s, x_t]`` against ``[q_s, -q_t]``; the dot product *is* the
  Lorentzian inner product, which is monotone in the geodesic distance: a flat
  search over it is exact (up to float32 rounding, which the rerank absorbs).
- ``mips_l2``: the classic MIPS-to-L2 reduction of ``ip``
  (``[x_s, x_t, sqrt(M - |x|^2)]`` against ``[q_s, -q_t, 0]``), which graph and
  IVF structures can navigate; ``M`` is the largest squared norm, kept as state.
- ``tangent``: the log map at the origin, compared by L2.
- ``poincare``: the Poincare-ball image ``x_s / (1 + sqrt(curv) x_t)``, compared by
  L2. Like ``tangent`` it is symmetric (queries and rows live in the same space),
  which graph search needs: measured, HNSW over ``mips_l2`` stalls at recall@10
  ~0.85 whatever the candidate count, while HNSW over ``poincare`` matches a flat
  scan of the same proxy (docs/benchmarks.md). Its float32 image crowds at the
  ball's edge far from the origin (radius >~ 8 / sqrt(curv)); ``tangent`` does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..geometry import lorentz

State = dict[str, float]


@dataclass(frozen=True)
class Proxy:
    name: str
    metric: str  # "ip" or "l2"
    extra_dims: int
    database: Callable[[np.ndarray, float, State], np.ndarray]
    query: Callable[[np.ndarray, float, State], np.ndarray]
    state_for: Callable[[np.ndarray, float], State]  # state needed to cover these rows

    def covers(self, state: State, new: State) -> bool:
        """Whether a structure built with ``state`` can take rows needing ``new``."""
        return all(new.get(k, 0.0) <= v for k, v in state.items())


def _time32(x: np.ndarray, curv: float) -> np.ndarray:
    return lorentz.time_component(x, curv).astype(np.float32)[:, None]


def _ip_db(x: np.ndarray, curv: float, state: State) -> np.ndarray:
    return np.hstack([x.astype(np.float32, copy=False), _time32(x, curv)])


def _ip_q(q: np.ndarray, curv: float, state: State) -> np.ndarray:
    return np.hstack([q.astype(np.float32, copy=False), -_time32(q, curv)])


def _ambient_sqnorm(x: np.ndarray, curv: float) -> np.ndarray:
    """``|x_s|^2 + x_t^2 = 2 |x_s|^2 + 1/curv`` in float64, shape ``(n,)``."""
    x64 = x.astype(np.float64)
    return 2.0 * np.einsum("ij,ij->i", x64, x64) + 1.0 / curv


def _mips_state(x: np.ndarray, curv: float) -> State:
    m = float(_ambient_sqnorm(x, curv).max()) if len(x) else 0.0
    return {"M": m * (1.0 + 1e-6)}  # headroom for float rounding in the sqrt below


def _mips_db(x: np.ndarray, curv: float, state: State) -> np.ndarray:
    extra = np.sqrt(np.maximum(state["M"] - _ambient_sqnorm(x, curv), 0.0)).astype(np.float32)[:, None]
    return np.hstack([_ip_db(x, curv, state), extra])


def _mips_q(q: np.ndarray, curv: float, state: State) -> np.ndarray:
    return np.hstack([_ip_q(q, curv, state), np.zeros((len(q), 1), np.float32)])


def _tangent(x: np.ndarray, curv: float, state: State) -> np.ndarray:
    return lorentz.log_map0(x.astype(np.float32, copy=False), curv)


def _poincare(x: np.ndarray, curv: float, state: State) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / (1.0 + np.sqrt(curv) * lorentz.time_component(x64, curv))[:, None]).astype(np.float32)


def _no_state(x: np.ndarray, curv: float) -> State:
    return {}


PROXIES: dict[str, Proxy] = {
    "ip": Proxy("ip", "ip", 1, _ip_db, _ip_q, _no_state),
    "mips_l2": Proxy("mips_l2", "l2", 2, _mips_db, _mips_q, _mips_state),
    "tangent": Proxy("tangent", "l2", 0, _tangent, _tangent, _no_state),
    "poincare": Proxy("poincare", "l2", 0, _poincare, _poincare, _no_state),
}


def padded_dim(dim: int, proxy: Proxy, pad_to: int) -> int:
    """Proxy dimension for ``dim``-dimensional points, rounded up to a multiple of ``pad_to``."""
    d = dim + proxy.extra_dims
    return -(-d // max(1, pad_to)) * max(1, pad_to)


def pad(v: np.ndarray, d: int) -> np.ndarray:
    """Zero-pad ``v: (n, d0)`` to ``(n, d)`` C-contiguous float32 (zeros change no IP or L2)."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape[1] == d:
        return v
    out = np.zeros((v.shape[0], d), dtype=np.float32)
    out[:, : v.shape[1]] = v
    return out
