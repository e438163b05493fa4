"""Scale-out on Ray (the ``ray`` extra): sharded search over parts served by Ray actors."""

from __future__ import annotations

from .sharded import MergedHits, ShardedIndex, merge

__all__ = ["MergedHits", "ShardedIndex", "merge"]
