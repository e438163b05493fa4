"""On-disk format of an index: a JSON manifest over immutable Arrow IPC shards."""

from .manifest import FORMAT_VERSION, FileEntry, Manifest
from .shards import Shard

__all__ = ["FORMAT_VERSION", "FileEntry", "Manifest", "Shard"]
