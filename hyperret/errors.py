"""The exception hierarchy of hyperret: one module, subclassing built-ins.

Every error a user can cause derives from :class:`HyperretError`; the CLI turns
each into a one-line message and exit code 2.
"""

from __future__ import annotations


class HyperretError(Exception):
    """Base class of every error hyperret raises on purpose."""


class InvalidInputError(HyperretError, ValueError):
    """Vectors, ids or metadata that cannot be indexed or searched as given."""


class NonFiniteError(InvalidInputError):
    """NaN or infinite values in vectors."""


class DimensionMismatchError(InvalidInputError):
    """Vectors whose dimension is not the index's (or ragged rows)."""


class DuplicateIdError(InvalidInputError):
    """An id that is already in the index, or repeated in one batch."""


class MissingColumnError(HyperretError, KeyError):
    """A required column is absent from a source table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "missing column"


class SourceError(HyperretError, OSError):
    """A source file that is missing, unreadable or of an unknown format."""


class IndexNotFoundError(HyperretError, FileNotFoundError):
    """No index at the given path."""


class IndexExistsError(HyperretError, FileExistsError):
    """An index (or another file) already exists where one would be created."""


class IndexCorruptError(HyperretError):
    """A committed file is missing or does not match its manifest entry."""


class StorageError(HyperretError, OSError):
    """Writing an index failed (a full disk, a lost permission): the last commit stays whole."""


class IndexLockedError(HyperretError):
    """Another writer holds the index's write lock."""


class ReadOnlyIndexError(HyperretError, PermissionError):
    """A write on an index opened read-only."""


class PresetError(HyperretError, ValueError):
    """An unknown or malformed index preset."""


class FormatVersionError(HyperretError):
    """An index written by a newer, incompatible format version."""


class CheckpointError(HyperretError, ValueError):
    """A model checkpoint that is missing, unsafe to load, or does not fit the architecture."""


class ModelMismatchError(HyperretError, ValueError):
    """A model that is not the one an index was built with."""


class DependencyError(HyperretError, ImportError):
    """An optional dependency (the model stack: torch, open_clip_torch, pillow) is not installed."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
