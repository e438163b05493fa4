"""Paths an index directory names, confined to it: the format cannot be turned against its user.

A manifest is untrusted input: a file name in it could climb out with ``..``, be
absolute, or be (or sit under) a symlink to somewhere else, or a FIFO that hangs
an ``open``. Every path read from a manifest goes through :func:`index_file`, and
every directory hyperret writes into or collects garbage from goes through
:func:`own_dir`, so neither reads nor writes nor deletions leave the index.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..errors import IndexCorruptError

#: The directories an index keeps its files in (one level, no nesting).
FILE_DIRS = ("shards", "faiss", "deletions", "versions")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_relative(rel: object, what: str = "file") -> tuple[str, str]:
    """``rel`` as ``(directory, name)`` if it is ``DIR/NAME`` with ``DIR`` one of :data:`FILE_DIRS`."""
    if not isinstance(rel, str):
        raise IndexCorruptError(f"manifest {what} path {rel!r} is not a string")
    parts = rel.split("/")
    if len(parts) != 2 or parts[0] not in FILE_DIRS or not _NAME.match(parts[1]):
        raise IndexCorruptError(f"manifest {what} path {rel!r} is not a file inside the index "
                                f"(expected one of {', '.join(d + '/NAME' for d in FILE_DIRS)})")
    return parts[0], parts[1]


def own_dir(root: Path, name: str, *, create: bool = False) -> Path:
    """``root/name`` as a real directory of the index (not a symlink); made if ``create``."""
    path = Path(root) / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return path
        path.mkdir(exist_ok=True)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise IndexCorruptError(f"{path} is {kind}: an index keeps its files in its own directories")
    return path


def index_file(root: Path, rel: object, what: str = "file") -> Path:
    """The path of a manifest-named file, checked: inside ``root``, no symlinks, a regular file.

    Raises ``FileNotFoundError`` when the file is absent (a concurrent commit may
    have collected it; the caller decides), :class:`IndexCorruptError` otherwise.
    """
    directory, name = check_relative(rel, what)
    return regular_file(own_dir(root, directory) / name, what)


def regular_file(path: Path, what: str) -> Path:
    """``path`` itself if it is a regular file and not a symlink (``FileNotFoundError`` if absent)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise IndexCorruptError(f"{what} {path} is {kind}: refusing to read it")
    return path
