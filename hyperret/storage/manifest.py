"""The manifest: the one file that names a committed snapshot of an index.

A snapshot is the manifest plus every file it lists; those files are immutable
once written. A commit writes new files, fsyncs them, then swaps the manifest in
with an atomic rename: a crash at any instant leaves the previous snapshot whole.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import FormatVersionError, IndexCorruptError, IndexNotFoundError
from .fsutil import atomic_write_bytes
from .paths import check_relative, regular_file

FORMAT_NAME = "hyperret.index"
#: 2: safety bounds and collection modality; 3: deletion files, dedup record; 4: versions/, confined paths;
#: 5: the candidate structure is a list of segments (one per row range, in row order);
#: 6: the recall curve the index measured on its own rows (``calibration``).
FORMAT_VERSION = 6
MANIFEST_NAME = "manifest.json"
#: Largest vector dimension a manifest may declare (CLIP models use 512 to 1280).
MAX_DIM = 1 << 16
#: Curvatures ``c`` (of ``-c``) an index may have: where the float64 distances keep the ranking
#: (see validate.curvature).
CURV_MIN, CURV_MAX = 1e-4, 1e4


@dataclass(frozen=True)
class FileEntry:
    """One immutable file of a snapshot, relative to the index directory."""

    file: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class CandidateEntry:
    """One segment of a snapshot's candidate structure and what it was built from.

    The segments tile the stored rows in order: segment ``i`` covers the ``rows``
    rows after those of segments ``0..i-1``.
    """

    file: str
    bytes: int
    sha256: str
    rows: int  # stored rows the segment covers
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
    candidates: tuple[CandidateEntry, ...] = ()  # the segments, in row order
    next_id: int = 0
    metadata_columns: dict[str, str] = field(default_factory=dict)  # name -> Arrow type string
    modality: str = "image"  # what the rows are: image, text, or mixed (a per-row modality column)
    bounds: dict[str, Any] | None = None  # safety bounds (hyperret.safety.Bounds.to_dict) in force
    deletions: FileEntry | None = None  # the deleted rows of this snapshot (hyperret.storage.deletions)
    dedup: dict[str, Any] | None = None  # the last applied deduplication (radius, grouping, counts)
    #: the recall curve the index measured on its own rows (hyperret.search.recall.Calibration)
    calibration: dict[str, Any] | None = None
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
        return [e.file for e in self.files_entries()]

    def files_entries(self) -> list[FileEntry | CandidateEntry]:
        """The entries (file, bytes, checksum) of every file this snapshot references."""
        out: list[FileEntry | CandidateEntry] = [*self.shards, *self.candidates]
        if self.deletions is not None:
            out.append(self.deletions)
        return out

    def to_json(self) -> bytes:
        d = asdict(self)
        d["rows"] = self.rows
        return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: Path) -> Manifest:
        """Parse and check a manifest: every field of the type and range the format allows."""
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise IndexCorruptError(f"{where}: unreadable manifest ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise IndexCorruptError(f"{where}: not a hyperret manifest")
        fv = d.get("format_version", 0)
        if not _is_int(fv) or fv < 0:
            raise IndexCorruptError(f"{where}: format_version {fv!r} is not a version number")
        if fv > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where}: format version {fv} is newer than this hyperret understands ({FORMAT_VERSION}); "
                f"upgrade hyperret"
            )
        try:
            d.pop("rows", None)
            d["shards"] = tuple(_file_entry(s, "shards", where) for s in _list(d.get("shards", []), "shards"))
            c = d.get("candidates")
            if c is None:
                c = []
            elif isinstance(c, dict) and fv < 5:  # formats 1-4: one structure over every row
                c = [c]
            if not all(isinstance(e, dict) for e in _list(c, "candidates")):
                raise ValueError("a candidates entry is not an object")
            d["candidates"] = tuple(CandidateEntry(**e) for e in c)
            if d.get("deletions") is not None:
                d["deletions"] = _file_entry(d["deletions"], "deletions", where)
            m = cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise IndexCorruptError(f"{where}: unreadable manifest ({e})") from None
        m._check(where)
        return m

    def _check(self, where: Path) -> None:
        """Types and ranges of the fields a reader trusts (``IndexCorruptError`` naming the field)."""
        def bad(field: str, why: str) -> IndexCorruptError:
            return IndexCorruptError(f"{where}: manifest field {field!r} {why}")

        if not _is_int(self.dim) or not 1 <= self.dim <= MAX_DIM:
            raise bad("dim", f"must be an integer in [1, {MAX_DIM}], got {self.dim!r}")
        if not _is_number(self.curv) or not CURV_MIN <= self.curv <= CURV_MAX:
            raise bad("curv", f"must be a number in [{CURV_MIN:g}, {CURV_MAX:g}], got {self.curv!r}")
        if not _is_int(self.version) or self.version < 0:
            raise bad("version", f"must be an integer >= 0, got {self.version!r}")
        if not _is_int(self.next_id) or not 0 <= self.next_id <= 2**63:
            raise bad("next_id", f"must be an integer in [0, 2**63], got {self.next_id!r}")
        if self.geometry not in ("lorentz", "cosine"):
            raise bad("geometry", f"must be lorentz or cosine, got {self.geometry!r}")
        if self.modality not in ("image", "text", "mixed"):
            raise bad("modality", f"must be image, text or mixed, got {self.modality!r}")
        if not isinstance(self.preset, dict) or not isinstance(self.preset.get("name"), str):
            raise bad("preset", "must be an object with a name")
        if not isinstance(self.metadata_columns, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.metadata_columns.items()):
            raise bad("metadata_columns", "must map column names to type names")
        for name in ("bounds", "dedup", "producer", "calibration"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, dict):
                raise bad(name, "must be an object")
        for c in self.candidates:
            if check_relative(c.file, "candidate structure")[0] != "faiss":
                raise bad("candidates", f"names {c.file!r} outside faiss/")
            for f, least in (("bytes", 0), ("rows", 1), ("trained_rows", 0)):
                if not _is_int(getattr(c, f)) or getattr(c, f) < least:
                    raise bad(f"candidates.{f}", f"must be an integer >= {least}")
            if not _is_sha(c.sha256) or not isinstance(c.factory, str) or not isinstance(c.proxy, str):
                raise bad("candidates", "has a malformed checksum, factory or proxy")
            if not isinstance(c.proxy_state, dict) or not all(_is_number(v) for v in c.proxy_state.values()):
                raise bad("candidates.proxy_state", "must map names to finite numbers")
        covered = sum(c.rows for c in self.candidates)
        if covered != self.stored_rows:
            raise bad("candidates", f"cover {covered} rows, the shards hold {self.stored_rows}")
        if self.deletions is not None and self.deletions.rows > self.stored_rows:
            raise bad("deletions", f"lists {self.deletions.rows} rows of {self.stored_rows}")

    def committed(self, **changes: Any) -> Manifest:
        """A copy for the next commit: version + 1, fresh commit time, ``changes`` applied."""
        return replace(self, version=self.version + 1, committed_at=_now(), format_version=FORMAT_VERSION, **changes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(ch in "0123456789abcdef" for ch in v)


def _list(v: Any, field: str) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"{field} is not a list")
    return v


def _file_entry(d: Any, directory: str, where: Path) -> FileEntry:
    """A checked :class:`FileEntry` naming a file in ``directory/``."""
    if not isinstance(d, dict):
        raise ValueError(f"a {directory} entry is not an object")
    e = FileEntry(**d)
    sub, _ = check_relative(e.file, directory.rstrip("s"))
    if sub != directory:
        raise IndexCorruptError(f"{where}: {directory} entry {e.file!r} is outside {directory}/")
    if not (_is_int(e.rows) and e.rows >= 0 and _is_int(e.bytes) and e.bytes >= 0 and _is_sha(e.sha256)):
        raise IndexCorruptError(f"{where}: {directory} entry {e.file!r} has malformed rows, bytes or checksum")
    return e


def read_manifest(directory: Path) -> Manifest:
    """The committed manifest of the index at ``directory``."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = regular_file(path, "manifest").read_bytes()
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
                 geometry: str = "lorentz", next_id: int = 0) -> Manifest:
    now = _now()
    return Manifest(
        dim=dim, curv=curv, preset=preset, producer=producer, created_at=now, committed_at=now,
        modality=modality, bounds=bounds, geometry=geometry, next_id=next_id,
    )
