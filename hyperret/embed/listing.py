"""Which files an image indexing run looks at: a folder (recursive) or a text file of paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError
from .images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Listing:
    files: list[Path]  # candidate image files, absolute, in a stable order
    ignored: list[tuple[Path, str]]  # (file, reason) for files not even tried


def list_images(source: str | Path) -> Listing:
    """Every file under a folder (sorted, hidden ones skipped), or the paths listed in a text file.

    Files in a folder whose extension is not an image type are reported, not read.
    Relative paths in a list file are relative to the list file's folder; blank
    lines and lines starting with ``#`` are skipped.
    """
    src = Path(source).expanduser()
    if src.is_dir():
        return _walk(src.resolve())
    if src.is_file():
        return _from_list(src.resolve())
    raise SourceError(f"{source} does not exist (give a folder of images or a text file of image paths)")


def _walk(root: Path) -> Listing:
    files, ignored = [], []
    for d, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            p = Path(d) / name
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
            else:
                ignored.append((p, f"not an image file type ({p.suffix or 'no extension'})"))
    return Listing(files, ignored)


def _from_list(path: Path) -> Listing:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror}") from None
    if b"\0" in raw[:4096]:
        raise SourceError(f"{path} is neither a folder nor a text file of image paths (it is binary)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: a list of image paths must be UTF-8 text") from None
    files, seen = [], set()
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        p = Path(s).expanduser()
        p = (p if p.is_absolute() else path.parent / p).resolve()
        if p not in seen:
            seen.add(p)
            files.append(p)
    return Listing(files, [])
