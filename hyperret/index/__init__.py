"""The public Index: create, open, add, commit, search.

Data flow: ``add`` validates and buffers rows (spilling full shards to disk);
``commit`` writes the remaining shard, extends or rebuilds the FAISS candidate
structure, and swaps the manifest in atomically; ``search`` asks the candidate
stage for rows and lets the exact Lorentz rerank decide.

The class is built in layers, one job each: :mod:`.base` (state, properties),
:mod:`.writer` (add, delete, commit), :mod:`.searching` (search, classify),
:mod:`.maintenance` (reads, dedup, refresh, verify, info) and :mod:`.core`
(create, open, close); :mod:`.build` builds an index from a table, all or nothing.
"""

from .base import INDEX_MODALITIES
from .core import Index

__all__ = ["Index", "INDEX_MODALITIES"]
