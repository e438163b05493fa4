"""An index's versions on object storage (S3, GCS, Azure, HDFS, or a path) through pyarrow's filesystems.

``push`` uploads a committed version: every file its manifest names that the store
lacks (names are unique per write, so a file present with the right size is the
same file), then its numbered manifest, then ``manifest.json`` last. A reader that
pulls while a push runs sees the previous version whole.

``pull`` makes or updates a local copy (a read replica: search and serve it). The
store is untrusted: the manifest is parsed and checked as a local one is, every
path must stay inside the index, every file is read to at most its recorded size
and must match its recorded SHA-256 before it is renamed into place, and only then
is the manifest committed locally. A failed pull leaves the copy's previous version
whole; files already present locally with the right size and checksum are kept.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import IndexCorruptError, IndexNotFoundError, InvalidInputError
from .fsutil import WriterLock, fsync_dir, fsync_file, sha256_file
from .manifest import MANIFEST_NAME, FileEntry, Manifest
from .paths import check_relative, index_file, own_dir, regular_file
from .versions import commit_manifest, read_latest, version_file

CHUNK = 8 << 20  # bytes per read or write
MAX_MANIFEST = 64 << 20  # bytes


def store(uri: str, filesystem: Any = None) -> tuple[Any, str]:
    """``(pyarrow filesystem, root path)`` of ``uri`` (``s3://bucket/prefix``, ``gs://...``, a path), or of
    ``uri`` inside ``filesystem`` when one is given."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if filesystem is not None:
        return filesystem, uri.rstrip("/")
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError, OSError) as e:
        raise InvalidInputError(f"{uri}: not a storage location pyarrow can open ({str(e).splitlines()[0]})") \
            from None
    return fs, root.rstrip("/")


def push(index: str | Path, uri: str, *, filesystem: Any = None, force: bool = False,
         progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Upload the committed version of the index at ``index`` to ``uri``; returns what was sent.

    Refused, unless ``force``, where ``uri`` holds another index or a newer version of this one.
    """
    local = Path(index)
    m = read_latest(local)
    fs, root = store(uri, filesystem)
    have = _sizes(fs, root)
    if MANIFEST_NAME in have and not force:
        there = Manifest.from_json(_read_manifest(fs, f"{root}/{MANIFEST_NAME}", uri), Path(uri) / MANIFEST_NAME)
        if there.created_at != m.created_at:
            raise InvalidInputError(f"{uri} holds another index (created {there.created_at}, this one "
                                    f"{m.created_at}): not pushed (--force replaces it)")
        if there.version > m.version:
            raise InvalidInputError(f"{uri} holds version {there.version}, newer than {local}'s {m.version}: "
                                    f"not pushed (--force goes back to it)")
    sent = skipped = sent_bytes = 0
    made: set[str] = set()
    for e in m.files_entries():
        if have.get(e.file) == e.bytes:
            skipped += 1
            continue
        try:
            _upload(fs, index_file(local, e.file, "index file"), f"{root}/{e.file}", made)
        except FileNotFoundError:  # a writer's cleanup removed it after the manifest was read
            raise InvalidInputError(f"{local} moved on during the push ({e.file} of version {m.version} is gone): "
                                    f"push again; the store still holds its previous version") from None
        sent, sent_bytes = sent + 1, sent_bytes + e.bytes
        if progress is not None:
            progress(e.bytes)
    _put(fs, f"{root}/{version_file(m.version)}", m.to_json(), made)
    _put(fs, f"{root}/{MANIFEST_NAME}", m.to_json(), made)  # last: the version exists for readers from here
    return {"uri": uri, "version": m.version, "rows": m.rows, "files_sent": sent, "bytes_sent": sent_bytes,
            "files_present": skipped}


def pull(uri: str, index: str | Path, *, filesystem: Any = None,
         progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Make the index at ``index`` (created if absent) a copy of the latest version pushed to ``uri``."""
    fs, root = store(uri, filesystem)
    m = Manifest.from_json(_read_manifest(fs, f"{root}/{MANIFEST_NAME}", uri), Path(uri) / MANIFEST_NAME)
    local = Path(index)
    if local.exists() and not (local / MANIFEST_NAME).exists() and (not local.is_dir() or any(local.iterdir())):
        raise InvalidInputError(f"{local} exists and is neither an index nor an empty folder")
    local.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(local)
    lock.acquire()
    try:
        current = read_latest(local).version if (local / MANIFEST_NAME).exists() else None
        if current is not None and current > m.version:
            raise InvalidInputError(f"{local} is at version {current}, newer than {uri}'s {m.version}: it is "
                                    f"not a copy of it (or was written to)")
        got = kept = got_bytes = 0
        if current != m.version:
            for e in m.files_entries():
                folder, name = check_relative(e.file, "index file")
                dest = own_dir(local, folder, create=True) / name  # a real directory, never a symlink
                if os.path.lexists(dest) and regular_file(dest, "index file").stat().st_size == e.bytes \
                        and sha256_file(dest) == e.sha256:
                    kept += 1
                    continue
                _download(fs, f"{root}/{e.file}", dest, e, uri)
                got, got_bytes = got + 1, got_bytes + e.bytes
                if progress is not None:
                    progress(e.bytes)
            commit_manifest(local, m)
    finally:
        lock.release()
    return {"path": str(local), "version": m.version, "previous_version": current, "rows": m.rows,
            "files_fetched": got, "bytes_fetched": got_bytes, "files_present": kept}


def _sizes(fs: Any, root: str) -> dict[str, int]:
    """Relative path -> size of every file under ``root`` (empty when it does not exist)."""
    import pyarrow.fs as pafs

    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            out[info.path[len(root) + 1:] if info.path.startswith(root + "/") else info.path] = int(info.size)
    return out


def _parent(fs: Any, dest: str, made: set[str]) -> None:
    """Create ``dest``'s folder once (a no-op on object stores, needed on file systems)."""
    parent = dest.rsplit("/", 1)[0]
    if parent not in made:
        fs.create_dir(parent, recursive=True)
        made.add(parent)


def _upload(fs: Any, src: Path, dest: str, made: set[str]) -> None:
    _parent(fs, dest, made)
    with open(src, "rb") as f, fs.open_output_stream(dest) as out:
        while chunk := f.read(CHUNK):
            out.write(chunk)


def _put(fs: Any, dest: str, data: bytes, made: set[str]) -> None:
    _parent(fs, dest, made)
    with fs.open_output_stream(dest) as out:
        out.write(data)


def _read_manifest(fs: Any, path: str, uri: str) -> bytes:
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read(MAX_MANIFEST + 1)
    except (FileNotFoundError, OSError) as e:
        raise IndexNotFoundError(f"no hyperret index pushed to {uri} ({str(e).splitlines()[0]})") from None
    if len(raw) > MAX_MANIFEST:
        raise IndexCorruptError(f"{uri}: {MANIFEST_NAME} is over {MAX_MANIFEST} bytes")
    return bytes(raw)


def _download(fs: Any, src: str, dest: Path, e: FileEntry | Any, uri: str) -> None:
    """Fetch ``src`` to ``dest`` through a temporary file, reading at most ``e.bytes + 1`` and checking the sum."""
    tmp = dest.parent / f".{dest.name}.pull.tmp"
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, n = hashlib.sha256(), 0
    try:
        with fs.open_input_stream(src) as f, open(tmp, "wb") as out:
            while n <= e.bytes:
                chunk = f.read(min(CHUNK, e.bytes + 1 - n))
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        if n != e.bytes or h.hexdigest() != e.sha256:
            raise IndexCorruptError(f"{uri}/{e.file}: {'size' if n != e.bytes else 'checksum'} does not match "
                                    f"its manifest entry (damaged or tampered with); nothing was changed locally")
        fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except FileNotFoundError:
        raise IndexCorruptError(f"{uri}: {e.file} is named by the manifest but missing") from None
    finally:
        tmp.unlink(missing_ok=True)
