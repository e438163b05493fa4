"""Search results: ids and exact geodesic distances, with metadata on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..safety.planner import QueryPlan
    from ..storage.snapshot import Snapshot


@dataclass(frozen=True)
class SearchResult:
    """The ``k`` nearest rows of each query.

    ``ids`` and ``distances`` are ``(m, k)``; ``-1`` / ``inf`` pad queries with
    fewer than ``k`` hits. Distances are exact geodesic distances (float32) of the
    hits returned; ``exact`` says whether the candidate stage was exhaustive.
    ``unsafe`` labels each hit by the safety bounds in force; ``plans`` holds one
    :class:`~hyperret.safety.planner.QueryPlan` per query.
    """

    ids: np.ndarray  # shape: (m, k) int64
    distances: np.ndarray  # shape: (m, k) float32
    rows: np.ndarray  # shape: (m, k) int64, rows of the snapshot searched
    exact: bool
    snapshot: Snapshot = field(repr=False)
    unsafe: np.ndarray | None = None  # shape: (m, k) bool per hit (False for padding); None without bounds
    plans: list[QueryPlan] = field(default_factory=list, repr=False)  # what happened to each query

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def metadata(self, columns: list[str] | None = None) -> list[list[dict[str, Any]]]:
        """Metadata of every hit, per query: ``[[{column: value}, ...], ...]``."""
        flat = self.snapshot.metadata_rows(self.rows.reshape(-1), columns)
        k = self.rows.shape[1]
        return [flat[i * k : (i + 1) * k] for i in range(len(self))]

    def to_list(self, columns: list[str] | None = None) -> list[list[dict[str, Any]]]:
        """Hits per query as ``{"id", "distance", **metadata}``, without the padding."""
        meta = self.metadata(columns)
        out = []
        for i in range(len(self)):
            hits = []
            for j in range(self.ids.shape[1]):
                if self.ids[i, j] == -1:
                    break
                hit = {"id": int(self.ids[i, j]), "distance": float(self.distances[i, j])}
                if self.unsafe is not None:
                    hit["unsafe"] = bool(self.unsafe[i, j])
                hit.update((key, v) for key, v in meta[i][j].items() if key not in hit)  # result keys win
                hits.append(hit)
            out.append(hits)
        return out
