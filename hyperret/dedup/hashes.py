"""Exact duplicates: rows with the same content hash.

The content is the image file's ``sha256`` metadata column when the index has
one (the indexer stores it), else the stored vector's bytes (FNV-1a over its
float32 words, in Numba). Equal hashes are confirmed by comparing the full
values, so a hash collision never merges two rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from ..storage.snapshot import Snapshot

HASH_COLUMN = "sha256"


@njit(cache=True, parallel=True, nogil=True)
def _fnv1a(words, out):
    for i in prange(words.shape[0]):
        h = np.uint64(14695981039346656037)
        for j in range(words.shape[1]):
            h = (h ^ np.uint64(words[i, j])) * np.uint64(1099511628211)
        out[i] = h


def vector_hashes(space: np.ndarray) -> np.ndarray:
    """64-bit FNV-1a of each row's bytes, ``space: (n, dim)`` float32 -> ``(n,)`` uint64."""
    out = np.empty(space.shape[0], dtype=np.uint64)
    if len(space):
        _fnv1a(np.ascontiguousarray(space).view(np.uint32), out)
    return out


def _column_hashes(snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """The ``sha256`` column as (first 64 bits, valid) per stored row."""
    keys, valid = [], []
    for s in snap.shards:
        if HASH_COLUMN in s.table.column_names:
            vals = s.table.column(HASH_COLUMN).to_pylist()
        else:
            vals = [None] * len(s)
        k = [_prefix(v) for v in vals]
        keys.append(np.array([x if x is not None else 0 for x in k], dtype=np.uint64))
        valid.append(np.array([x is not None for x in k], dtype=bool))
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    return np.concatenate(keys), np.concatenate(valid)


def _prefix(v: object) -> int | None:
    """The first 64 bits of a hex digest; ``None`` for a null or non-hex value."""
    if not isinstance(v, str) or len(v) < 16:
        return None
    try:
        return int(v[:16], 16)
    except ValueError:
        return None


def content_source(snap: Snapshot) -> str:
    """What "same content" means for this index: ``sha256`` (the column) or ``vector`` (the bytes)."""
    return "sha256" if HASH_COLUMN in snap.manifest.metadata_columns else "vector"


def exact_classes(snap: Snapshot, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact-duplicate classes among the ``eligible: (n,)`` rows -> ``(member, canonical)`` row pairs.

    Each pair ties a duplicate to its class's smallest row (the canonical row,
    which alone takes part in the range search); rows without a copy are absent.
    """
    source = content_source(snap)
    if source == "sha256":
        keys, valid = _column_hashes(snap)
    else:
        keys = np.concatenate([vector_hashes(s.space) for s in snap.shards]) if snap.shards else np.zeros(0, np.uint64)
        valid = np.ones(len(keys), dtype=bool)
    rows = np.flatnonzero(eligible & valid)
    k = keys[rows]
    order = np.argsort(k, kind="stable")  # stable: each run is in row order
    rows, k = rows[order], k[order]
    same = np.flatnonzero(k[1:] == k[:-1])
    if not len(same):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Runs of equal keys: confirm every member against the run's rows with the full value.
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    ends = np.r_[starts[1:], len(k)]
    members, canon = [], []
    for a, b in zip(starts[(ends - starts) > 1], ends[(ends - starts) > 1]):
        run = rows[a:b]
        vals = _full_values(snap, run, source)
        while len(run) > 1:
            eq = np.array([_equal(vals[0], v) for v in vals], dtype=bool)
            if eq.sum() > 1:
                members.append(run[eq][1:])
                canon.append(np.full(int(eq.sum()) - 1, run[0], dtype=np.int64))
            run, vals = run[~eq], [v for v, e in zip(vals, eq) if not e]
    if not members:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(members).astype(np.int64), np.concatenate(canon)


def _full_values(snap: Snapshot, rows: np.ndarray, source: str) -> list:
    if source == "sha256":
        return snap.take(rows, [HASH_COLUMN]).column(HASH_COLUMN).to_pylist()
    return list(snap.shardset.gather(rows))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return a.tobytes() == b.tobytes()
    return a == b
