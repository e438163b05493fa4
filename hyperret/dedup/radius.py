"""Pick the dedup radius from the data: the gap in the nearest-neighbour distances.

Near-duplicates sit orders of magnitude closer to their nearest neighbour than
distinct items do, so on a log scale the nearest-neighbour distances of a
collection with duplicates split into two clusters with an empty stretch between
them. The radius is the geometric middle of the widest such stretch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidInputError

#: The widest gap must span at least this factor (upper / lower edge) to count.
MIN_GAP_RATIO = 3.0
#: Gaps above this quantile of the distances are outliers of the bulk, not the duplicate gap.
UPPER_QUANTILE = 0.95


def pick_radius(nn: np.ndarray, *, min_ratio: float = MIN_GAP_RATIO) -> tuple[float, dict[str, Any]]:
    """Radius from nearest-neighbour distances ``nn: (s,)`` (geodesic, > 0) -> ``(R, why)``.

    The widest gap between consecutive sorted ``log10`` distances, searched among
    the lower ``UPPER_QUANTILE`` of the distances with at least two points below
    it; ``R`` is the geometric mean of its edges. Raises :class:`InvalidInputError`
    when no gap spans ``min_ratio`` (no clear duplicate cluster: give a radius).
    ``why`` holds the edges, the counts on each side and the distance quantiles.
    """
    d = np.sort(np.asarray(nn, dtype=np.float64))
    d = d[np.isfinite(d) & (d > 0)]
    quant = {f"p{int(q * 100):02d}": float(np.quantile(d, q)) for q in (0.01, 0.05, 0.5, 0.95)} if len(d) else {}
    why: dict[str, Any] = {"rule": f"widest gap in log10 nearest-neighbour distance (>= {min_ratio:g}x), "
                                   f"below the {UPPER_QUANTILE:.0%} quantile, radius = geometric middle",
                           "distances": int(len(d)), "quantiles": quant}
    if len(d) < 4:
        raise InvalidInputError(f"too few nearest-neighbour distances ({len(d)}) to pick a radius: give --radius")
    logd = np.log10(d)
    top = max(2, int(math.ceil(UPPER_QUANTILE * len(d))))
    gaps = np.diff(logd[:top])  # gap i lies between d[i] and d[i + 1]
    gaps[:1] = -np.inf  # at least two points below the gap
    i = int(np.argmax(gaps)) if len(gaps) else 0
    ratio = float(10 ** gaps[i]) if len(gaps) and np.isfinite(gaps[i]) else 1.0
    if ratio < min_ratio:
        raise InvalidInputError(
            f"no clear gap in the nearest-neighbour distances (widest {ratio:.2f}x < {min_ratio:g}x; "
            f"median {quant.get('p50', float('nan')):.3g}): give --radius")
    lo, hi = float(d[i]), float(d[i + 1])
    r = math.sqrt(lo * hi)
    why.update({"lower_edge": lo, "upper_edge": hi, "ratio": ratio, "below": i + 1, "above": int(len(d) - i - 1),
                "radius": r})
    return r, why
