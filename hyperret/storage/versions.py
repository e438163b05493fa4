"""Numbered versions of an index: every commit's manifest, kept beside the latest one.

A commit writes its manifest twice: first as ``versions/vNNNNNNNN.json`` (fsync'd),
then as ``manifest.json`` with an atomic rename, which stays the commit point. So
every committed version has its own manifest, a reader can open any version whose
files are still there, and a damaged or deleted ``manifest.json`` is restored from
the newest intact version (:func:`repair`). ``cleanup`` drops old version manifests;
the writer's garbage collection then removes the files no remaining version names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import FormatVersionError, IndexCorruptError, IndexNotFoundError
from .fsutil import atomic_write_bytes, sha256_file
from .manifest import Manifest, read_manifest, write_manifest
from .paths import index_file, own_dir

VERSIONS_DIR = "versions"
_NAME = re.compile(r"^v(\d{8})\.json$")


def version_file(version: int) -> str:
    """The relative path of a version's manifest."""
    return f"{VERSIONS_DIR}/v{version:08d}.json"


def commit_manifest(directory: Path, manifest: Manifest) -> None:
    """Make ``manifest`` a committed version: its numbered file, then the atomic ``manifest.json`` swap."""
    own_dir(directory, VERSIONS_DIR, create=True)
    atomic_write_bytes(Path(directory) / version_file(manifest.version), manifest.to_json())
    write_manifest(directory, manifest)


def version_numbers(directory: Path) -> list[int]:
    """The versions that have a manifest file, ascending (unreadable ones included)."""
    d = own_dir(directory, VERSIONS_DIR)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _NAME.match(p.name)))


def read_version(directory: Path, version: int) -> Manifest:
    """The manifest of ``version`` (``IndexNotFoundError`` if it has none, ``IndexCorruptError`` if damaged)."""
    try:
        path = index_file(Path(directory), version_file(version), "version manifest")
    except FileNotFoundError:
        have = version_numbers(directory)
        raise IndexNotFoundError(f"index {directory} has no version {version} "
                                 f"(versions: {_ranges(have) or 'none recorded'})") from None
    m = Manifest.from_json(path.read_bytes(), path)
    if m.version != version:
        raise IndexCorruptError(f"{path}: holds version {m.version}, not {version}")
    return m


def files_present(directory: Path, manifest: Manifest, *, checksums: bool = False) -> str | None:
    """Why ``manifest``'s files cannot serve it (missing, wrong size or checksum), or None if they can."""
    for e in manifest.files_entries():
        try:
            p = index_file(Path(directory), e.file)
        except FileNotFoundError:
            return f"{e.file}: missing"
        except IndexCorruptError as err:
            return str(err)
        if p.stat().st_size != e.bytes:
            return f"{e.file}: checksum mismatch (size {p.stat().st_size}, the manifest says {e.bytes})"
        if checksums and sha256_file(p) != e.sha256:
            return f"{e.file}: checksum mismatch"
    return None


def newest_intact(directory: Path, *, checksums: bool = False) -> Manifest | None:
    """The newest version whose manifest parses and whose files are all present (and match, if ``checksums``)."""
    for v in reversed(version_numbers(directory)):
        try:
            m = read_version(directory, v)
        except (IndexCorruptError, IndexNotFoundError, FormatVersionError):
            continue
        if files_present(directory, m, checksums=checksums) is None:
            return m
    return None


def read_latest(directory: Path) -> Manifest:
    """The committed manifest; if it is damaged or gone, an error naming the newest intact version."""
    directory = Path(directory)
    try:
        return read_manifest(directory)
    except FormatVersionError:
        raise
    except (IndexCorruptError, IndexNotFoundError) as e:
        if not version_numbers_safe(directory):
            raise
        good = newest_intact(directory)
        if good is None:
            raise IndexCorruptError(f"{e}; no intact version is left to restore") from None
        raise IndexCorruptError(
            f"{e}; the newest intact version is {good.version}: open it with Index.open(path, version="
            f"{good.version}), or restore it with 'hyperret repair {directory}'"
        ) from None


def version_numbers_safe(directory: Path) -> list[int]:
    """:func:`version_numbers`, or ``[]`` where there is no readable versions directory."""
    try:
        return version_numbers(directory)
    except (IndexCorruptError, OSError):
        return []


def repair(directory: Path) -> tuple[int, bool]:
    """Restore ``manifest.json`` from the newest version whose files all pass their checksums.

    Returns ``(version, changed)``; ``changed`` is False when the manifest was intact.
    The caller holds the writer lock.
    """
    directory = Path(directory)
    try:
        current = read_manifest(directory)
        if files_present(directory, current) is None:
            return current.version, False
    except (IndexCorruptError, IndexNotFoundError):
        pass
    good = newest_intact(directory, checksums=True)
    if good is None:
        raise IndexCorruptError(f"index {directory}: no intact version to restore (versions: "
                                f"{_ranges(version_numbers_safe(directory)) or 'none recorded'})")
    write_manifest(directory, good)
    return good.version, True


@dataclass(frozen=True)
class VersionInfo:
    """One version of an index, as ``versions()`` lists it."""

    version: int
    committed_at: str
    rows: int
    shards: int
    intact: bool  # its manifest parses and every file it names is present
    latest: bool
    problem: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "committed_at": self.committed_at, "rows": self.rows,
                "shards": self.shards, "intact": self.intact, "latest": self.latest, "problem": self.problem}


def list_versions(directory: Path) -> list[VersionInfo]:
    """Every recorded version, oldest first; for an index of an older format, its one manifest."""
    directory = Path(directory)
    try:
        current: Manifest | None = read_manifest(directory)
    except (IndexCorruptError, IndexNotFoundError):
        current = None
    latest = current.version if current is not None else None
    numbers = version_numbers_safe(directory)
    if not numbers and current is not None:  # written before versions were kept
        return [VersionInfo(current.version, current.committed_at, current.rows, len(current.shards), True, True)]
    out = []
    for v in numbers:
        try:
            m = read_version(directory, v)
        except (IndexCorruptError, IndexNotFoundError, FormatVersionError) as e:
            out.append(VersionInfo(v, "", 0, 0, False, v == latest, str(e)))
            continue
        problem = files_present(directory, m)
        out.append(VersionInfo(v, m.committed_at, m.rows, len(m.shards), problem is None, v == latest,
                               problem or ""))
    return out


def remove_versions(directory: Path, current: int, *, keep: int, older_than_s: float | None) -> list[int]:
    """Delete version manifests other than ``current`` that are not among the newest ``keep`` and,
    if ``older_than_s`` is given, were committed more than that many seconds ago. Returns them."""
    numbers = version_numbers(directory)
    protected = set(numbers[-keep:]) if keep > 0 else set()
    now = datetime.now(timezone.utc)
    gone = []
    for v in numbers:
        if v == current or v in protected:
            continue
        if older_than_s is not None:
            try:
                when = datetime.fromisoformat(read_version(directory, v).committed_at)
            except (IndexCorruptError, IndexNotFoundError, FormatVersionError, ValueError):
                when = None  # a damaged version manifest is removed whatever its age
            if when is not None and (now - when).total_seconds() < older_than_s:
                continue
        (Path(directory) / version_file(v)).unlink(missing_ok=True)
        gone.append(v)
    return gone


def remove_uncommitted(directory: Path, current: int) -> None:
    """Drop version files newer than the committed ``current`` (a commit killed before its swap)."""
    for v in version_numbers_safe(directory):
        if v > current:
            (Path(directory) / version_file(v)).unlink(missing_ok=True)
    for f in Path(directory).glob(f"{VERSIONS_DIR}/.*.tmp"):
        f.unlink(missing_ok=True)


def referenced_files(directory: Path, manifests: Iterable[Manifest]) -> set[str]:
    """Every file named by ``manifests`` and by the readable version manifests of ``directory``."""
    keep: set[str] = set()
    for m in manifests:
        keep.update(m.files())
    for v in version_numbers_safe(directory):
        try:
            keep.update(read_version(directory, v).files())
        except (IndexCorruptError, IndexNotFoundError, FormatVersionError):
            continue
    return keep


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out: list[str] = []
    for v in numbers:
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


__all__ = ["VERSIONS_DIR", "commit_manifest", "list_versions", "read_latest", "read_version",
           "repair", "remove_versions", "remove_uncommitted", "referenced_files", "newest_intact"]
