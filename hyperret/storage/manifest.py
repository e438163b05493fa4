"""The manifest: the one file that names a committed snapshot of an index.

A snapshot is the manifest plus every file it lists; those files are immutable
once written. A commit writes new files, fsyncs them, then swaps the manifest in
with an atomic rename: a crash at any instant leaves the previous snapshot whole.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import FormatVersionError, IndexCorruptError, IndexNotFoundError
from .fsutil import atomic_write_bytes

FORMAT_NAME = "hyperret.index"
FORMAT_VERSION = 3  # 2: safety bounds and collection modality; 3: deletion files, dedup record
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class FileEntry:
    """One immutable file of a snapshot, relative to the index directory."""

    file: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class CandidateEntry:
    """The FAISS candidate structure of a snapshot and what it was built from."""

    file: str
    bytes: int
    sha256: str
    rows: int  # rows of the snapshot the structure covers (all of them)
    factory: str  # the FAISS factory string actually built
    proxy: str  # name of the candidate space (see hyperret.search.candidates.proxies)
    proxy_state: dict[str, float] = field(default_factory=dict)
    trained_rows: int = 0  # rows the structure was trained on (0: needs no training)


@dataclass(frozen=True)
class Manifest:
    """A committed snapshot: geometry, preset, producer, shards and candidate structure."""

    dim: int
    curv: float
    preset: dict[str, Any]
    version: int = 0
    geometry: str = "lorentz"  # or "cosine": unit vectors of a Euclidean CLIP (hyperret.geometry.cosine)
    producer: dict[str, Any] = field(default_factory=dict)
    shards: tuple[FileEntry, ...] = ()
    candidates: CandidateEntry | None = None
    next_id: int = 0
    metadata_columns: dict[str, str] = field(default_factory=dict)  # name -> Arrow type string
    modality: str = "image"  # what the rows are: image, text, or mixed (a per-row modality column)
    bounds: dict[str, Any] | None = None  # safety bounds (hyperret.safety.Bounds.to_dict) in force
    deletions: FileEntry | None = None  # the deleted rows of this snapshot (hyperret.storage.deletions)
    dedup: dict[str, Any] | None = None  # the last applied deduplication (radius, grouping, counts)
    created_at: str = ""
    committed_at: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def stored_rows(self) -> int:
        """Rows in the shards, deleted ones included (what the candidate structure covers)."""
        return sum(s.rows for s in self.shards)

    @property
    def deleted_rows(self) -> int:
        return self.deletions.rows if self.deletions is not None else 0

    @property
    def rows(self) -> int:
        """Rows of the snapshot: stored rows less deleted ones."""
        return self.stored_rows - self.deleted_rows

    def files(self) -> list[str]:
        """Every file this snapshot references (relative paths)."""
        out = [s.file for s in self.shards]
        if self.candidates is not None:
            out.append(self.candidates.file)
        if self.deletions is not None:
            out.append(self.deletions.file)
        return out

    def to_json(self) -> bytes:
        d = asdict(self)
        d["rows"] = self.rows
        return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: Path) -> Manifest:
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT_NAME:
                raise IndexCorruptError(f"{where}: not a hyperret manifest")
            if int(d.get("format_version", 0)) > FORMAT_VERSION:
                raise FormatVersionError(
                    f"{where}: format version {d['format_version']} is newer than this "
                    f"hyperret understands ({FORMAT_VERSION}); upgrade hyperret"
                )
            d.pop("rows", None)
            d["shards"] = tuple(FileEntry(**s) for s in d.get("shards", ()))
            if d.get("candidates") is not None:
                d["candidates"] = CandidateEntry(**d["candidates"])
            if d.get("deletions") is not None:
                d["deletions"] = FileEntry(**d["deletions"])
            return cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise IndexCorruptError(f"{where}: unreadable manifest ({e})") from e

    def committed(self, **changes: Any) -> Manifest:
        """A copy for the next commit: version + 1, fresh commit time, ``changes`` applied."""
        return replace(self, version=self.version + 1, committed_at=_now(), format_version=FORMAT_VERSION, **changes)


def read_manifest(directory: Path) -> Manifest:
    """The committed manifest of the index at ``directory``."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexNotFoundError(f"no hyperret index at {directory} (no {MANIFEST_NAME})") from None
    except OSError as e:
        raise IndexNotFoundError(f"cannot read index at {directory}: {e.strerror}") from e
    return Manifest.from_json(raw, path)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically make ``manifest`` the committed snapshot (fsync'd rename)."""
    atomic_write_bytes(Path(directory) / MANIFEST_NAME, manifest.to_json())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_manifest(dim: int, curv: float, preset: dict[str, Any], producer: dict[str, Any], *,
                 modality: str = "image", bounds: dict[str, Any] | None = None,
                 geometry: str = "lorentz") -> Manifest:
    now = _now()
    return Manifest(
        dim=dim, curv=curv, preset=preset, producer=producer, created_at=now, committed_at=now,
        modality=modality, bounds=bounds, geometry=geometry,
    )
