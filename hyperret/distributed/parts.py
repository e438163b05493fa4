"""A collection in parts: the parts file, the checks that parts agree and keep distinct ids, their manifest.

A parts file is ``{"format": "hyperret-parts", "parts": ["part0", "/data/part1"]}``
(relative paths from the file's folder): ``hyperret parts`` writes one after the
checks, and :class:`hyperret.ShardedIndex`, ``hyperret search``, ``serve`` and
``info`` read it. Reading one needs no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..storage.manifest import Manifest
from ..storage.versions import read_latest

PARTS_FORMAT = "hyperret-parts"
MAX_PARTS_FILE = 1 << 20  # bytes


def read_parts_file(path: str | Path) -> list[Path]:
    """The part directories a parts file names (relative ones from its folder); a clear error for a bad file."""
    f = Path(path)
    try:
        raw = f.read_bytes()[: MAX_PARTS_FILE + 1]
    except OSError as e:
        raise InvalidInputError(f"cannot read {f}: {e.strerror or e}") from None
    if len(raw) > MAX_PARTS_FILE:
        raise InvalidInputError(f"{f}: a parts file is at most {MAX_PARTS_FILE} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInputError(f"{f} is not a parts file (not JSON)") from None
    parts = doc.get("parts") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("format") != PARTS_FORMAT or not isinstance(parts, list) \
            or not parts or not all(isinstance(p, str) and p for p in parts):
        raise InvalidInputError(f'{f} is not a parts file ({{"format": "{PARTS_FORMAT}", "parts": [DIR, ...]}})')
    return [(f.parent / p) if not Path(p).is_absolute() else Path(p) for p in parts]


def write_parts_file(path: str | Path, parts: Sequence[str | Path]) -> Path:
    """Write a parts file naming ``parts`` (kept as given: relative ones are from the file's folder)."""
    f = Path(path)
    f.write_text(json.dumps({"format": PARTS_FORMAT, "parts": [str(p) for p in parts]}, indent=1) + "\n")
    return f


def check_parts(paths: Sequence[Path]) -> list[Manifest]:
    """The parts' latest manifests; an error unless each is an index and all share dim, curv, geometry,
    modality and bounds."""
    if not paths:
        raise InvalidInputError("a sharded index needs at least one part")
    manifests = [read_latest(p) for p in paths]
    first = manifests[0]
    for p, m in zip(paths[1:], manifests[1:]):
        for key in ("dim", "curv", "geometry", "modality", "bounds"):
            if getattr(m, key) != getattr(first, key):
                raise InvalidInputError(f"part {p} has {key} {getattr(m, key)!r}, {paths[0]} "
                                        f"{getattr(first, key)!r}: parts must agree")
    return manifests


def id_clash(paths: Sequence[Path]) -> str | None:
    """None when the parts' live ids are all distinct, else a line naming two parts that share one.

    Reads every part's ids (8 bytes a row); the exact check runs only where the id ranges overlap.
    """
    from ..index import Index

    parts = []
    for p in paths:
        ids = Index.open(p).ids()
        if len(ids):
            parts.append((int(ids.min()), int(ids.max()), str(p), ids))
    parts.sort(key=lambda t: t[0])
    if all(b[0] > a[1] for a, b in zip(parts, parts[1:])):
        return None
    ids = np.concatenate([t[3] for t in parts])
    owner = np.concatenate([np.full(len(t[3]), j) for j, t in enumerate(parts)])
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if not len(same):
        return None
    i = int(same[0])
    a, b = parts[int(owner[order[i]])][2], parts[int(owner[order[i + 1]])][2]
    more = f" and {len(same) - 1} more" if len(same) > 1 else ""
    return (f"{a} and {b} both hold id {int(ids[order[i]])}{more}: a collection's parts need distinct ids "
            f"(build part K with --first-id K*10**12, or give the rows ids)")


@dataclass(frozen=True)
class PartsManifest:
    """What a sharded index reports as its manifest: the parts' common fields and their sums.

    ``version`` is the sum of the parts' versions: it grows whenever a part commits.
    ``dedup_radius``: the radius of the parts' last applied dedup when they all record one and
    the same (what ``search(dedup=True)`` takes), else None.
    """

    version: int
    rows: int
    deleted_rows: int
    dim: int
    curv: float
    geometry: str
    modality: str
    bounds: dict[str, Any] | None
    metadata_columns: dict[str, str]
    producer: dict[str, Any]
    parts: list[dict[str, Any]] = field(default_factory=list)
    dedup_radius: float | None = None

    @classmethod
    def of(cls, paths: list[Path], manifests: list[Manifest]) -> PartsManifest:
        first = manifests[0]
        cols: dict[str, str] = {}
        for m in manifests:
            cols.update(m.metadata_columns)
        radii = {float(m.dedup["radius"]) if m.dedup and "radius" in m.dedup else None for m in manifests}
        return cls(version=sum(m.version for m in manifests), rows=sum(m.rows for m in manifests),
                   deleted_rows=sum(m.deleted_rows for m in manifests), dim=first.dim, curv=first.curv,
                   geometry=first.geometry, modality=first.modality, bounds=first.bounds, metadata_columns=cols,
                   producer=dict(first.producer),
                   parts=[{"path": str(p), "version": m.version, "rows": m.rows}
                          for p, m in zip(paths, manifests)],
                   dedup_radius=radii.pop() if len(radii) == 1 else None)
