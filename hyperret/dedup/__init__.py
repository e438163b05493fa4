"""Batch deduplication over an index: exact and near-duplicate groups (see ``run``)."""

from .collapse import DEFAULT_SEARCH_RADIUS, collapse
from .run import DEFAULT_CANDIDATES, DedupResult, dedup

__all__ = ["DedupResult", "dedup", "collapse", "DEFAULT_CANDIDATES", "DEFAULT_SEARCH_RADIUS"]
