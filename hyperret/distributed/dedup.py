"""Distributed dedup on Ray: the exact cell join's cells joined by Ray tasks, united on the driver.

The driver trains the tangent-space cells and assigns the rows (as the local run
does, :func:`hyperret.dedup.cells.plan_cells`); the cells go to Ray tasks in
batches of similar size. Each task opens the same committed version of the index
(read-only, from the path: a shared filesystem on a cluster), joins its cells
(:func:`~hyperret.dedup.cells.join_cell`), unites the pairs it confirmed in a
union-find of its own and returns that forest's edges (each row to its set's
smallest row: fewer than the rows it touched, where a group of ``g`` near copies
has ``g (g - 1) / 2`` pairs); the driver unites the forests. The sets are those of
the local join's pairs, so the groups are too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..dedup.cells import join_cell, plan_cells
from ..dedup.pairs import PassStats
from ..dedup.unionfind import new_forest, roots, union_pairs
from ..storage.snapshot import Snapshot
from ..storage.versions import read_version
from . import remote

#: cell batches per Ray CPU: enough to balance uneven cells, few enough to keep task overhead small
BATCHES_PER_CPU = 4


def _join_cells(path: str, version: int, cells: list[tuple[np.ndarray, np.ndarray]], radius: float) -> dict:
    """A Ray task: join ``cells`` of version ``version`` of the index at ``path``; the confirmed pairs."""
    snap = Snapshot.load(Path(path), read_version(Path(path), version))
    stats = PassStats()
    got_a: list[np.ndarray] = []
    got_b: list[np.ndarray] = []

    def keep(a: np.ndarray, b: np.ndarray) -> None:
        got_a.append(a)
        got_b.append(b)

    for own, guests in cells:
        join_cell(snap, own, guests, radius, keep, stats)
    a, b = forest_edges(_cat(got_a), _cat(got_b))
    return {"a": a, "b": b, "checked": stats.checked, "within": stats.within, "pairs": int(sum(map(len, got_a))),
            "rows": int(sum(len(o) for o, _ in cells))}


def forest_edges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(p,)`` x 2 -> the edges ``(row, its set's smallest row)`` of their union-find forest (same sets)."""
    if not len(a):
        return a, b
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)  # sorted: a set's root is its smallest row
    parent = new_forest(len(nodes))
    union_pairs(parent, inv[: len(a)].astype(np.int64), inv[len(a):].astype(np.int64))
    root = roots(parent)
    moved = np.flatnonzero(root != np.arange(len(nodes)))
    return nodes[moved], nodes[root[moved]]


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class RayCellJoin:
    """A drop-in for :func:`hyperret.dedup.cells.cell_join` that joins the cells on Ray (local or a cluster)."""

    def __init__(self, ray_address: str | None = None):
        remote.init(ray_address)
        self.tasks = 0
        self.pairs_confirmed = 0  # pairs the tasks confirmed within the radius
        self.pairs_received = 0  # forest edges the driver received for them

    def __call__(self, snap: Snapshot, rows: np.ndarray, radius: float, parent: np.ndarray, *,
                 nlist: int | None = None, progress: Any = None, stats: PassStats | None = None,
                 seed: int = 1234) -> PassStats:
        import ray

        stats = stats or PassStats()
        cells = plan_cells(snap, rows, radius, nlist=nlist, stats=stats, seed=seed)
        if not cells:
            return stats
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        batches = _balanced(cells, cpus * BATCHES_PER_CPU)
        task = ray.remote(num_cpus=1)(_join_cells)
        path = str(Path(snap.path).resolve())
        pending = [task.remote(path, snap.manifest.version, b, float(radius)) for b in batches]
        self.tasks += len(pending)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            out = remote.get(done[0])
            stats.checked += out["checked"]
            stats.within += out["within"]
            stats.merges += union_pairs(parent, out["a"], out["b"])
            self.pairs_received += len(out["a"])
            self.pairs_confirmed += out["pairs"]
            if progress is not None:
                progress(out["rows"])
        return stats


def _balanced(cells: list[tuple[np.ndarray, np.ndarray]], n: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``cells`` in at most ``n`` batches of similar work (own x (own + guests) pairs), largest first."""
    work = [len(o) * (len(o) + len(g)) for o, g in cells]
    batches: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(min(n, len(cells)))]
    load = [0] * len(batches)
    for i in np.argsort(work)[::-1]:
        j = int(np.argmin(load))
        batches[j].append(cells[i])
        load[j] += work[i]
    return [b for b in batches if b]
