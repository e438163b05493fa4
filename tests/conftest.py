from __future__ import annotations

import os

# Without an NVIDIA GPU the CUDA kernels run on Numba's simulator (set before numba.cuda is imported).
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hyperret.geometry import lorentz  # noqa: E402
from hyperret.testing.synthetic import make_points  # noqa: E402


@pytest.fixture
def points():
    """2,000 HySAC-like labelled points in 16 dimensions, curvature 1.3."""
    return make_points(2000, 16, curv=1.3, n_concepts=12, seed=5)


@pytest.fixture
def exact_knn():
    """The float64 reference k-NN (see _exact_knn)."""
    return _exact_knn


def _exact_knn(queries: np.ndarray, data: np.ndarray, curv: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference k-NN: stable distances, ties broken by the lower row."""
    d = lorentz.pairwise_distance(queries, data, curv)
    rows = np.arange(data.shape[0])
    order = np.stack([np.lexsort((rows, di))[:k] for di in d])
    return order, np.take_along_axis(d, order, 1)
