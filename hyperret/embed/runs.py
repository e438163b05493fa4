"""What an image indexing run does beside the model, locally or on Ray: the index, the summary, the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from ..errors import IndexExistsError, InvalidInputError, ModelMismatchError
from ..storage.manifest import MANIFEST_NAME
from .encoder import Encoder
from .towers import model_config

ALREADY = "already indexed"
REPORTS_DIR = "reports"


@dataclass
class RunSummary:
    path: str
    listed: int = 0
    indexed: int = 0
    already_indexed: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    report: str | None = None
    commits: int = 0
    compacted: bool = False  # the run ended by merging its commits' segments into one
    seconds: float = 0.0
    model_seconds: float = 0.0  # main process: inside the forward passes
    wait_seconds: float = 0.0  # main process: waiting for decoded batches from the workers
    first_batch_seconds: float = 0.0  # from the call to the first batch ready for the model (start-up included)
    write_seconds: float = 0.0  # the writer: adding rows, committing (shards, candidate structure), the report
    commit_wait_seconds: float = 0.0  # main process: blocked on the writer (all of write_seconds when synchronous)
    background_commits: bool = True  # adds and commits ran on a writer thread
    rows: int = 0
    version: int = 0
    resumed: bool = False
    bounds_note: str | None = None  # why bounds found beside the checkpoint were not stored

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["images_per_second"] = self.indexed / self.seconds if self.seconds > 0 else 0.0
        return d


def open_or_create(out: Path, encoder: Encoder, preset: str | None, bounds: Any,
                    source: Any, first_id: int | None = None) -> tuple[Any, bool, str | None]:
    """``(index, resumed, note)``: the note says why bounds beside the checkpoint were left out.

    ``first_id``: a new index numbers its rows from it; a resumed one must already be numbered
    at or past it (it was created with it).
    """
    from ..index import Index

    if (out / MANIFEST_NAME).exists():
        ix = Index.open(out, writable=True)
        try:
            check_model(ix.manifest.producer.get("model"), encoder, str(out))
            if preset is not None and preset != ix.manifest.preset.get("name"):
                raise InvalidInputError(f"{out} was built with preset {ix.manifest.preset.get('name')}; "
                                        f"a resumed run keeps it (drop --preset)")
            if first_id is not None and ix.manifest.next_id < first_id:
                raise InvalidInputError(f"{out} numbers its rows from its own counter ({ix.manifest.next_id}); "
                                        f"--first-id is for a new index")
        except BaseException:
            ix.close()
            raise
        return ix, True, None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise IndexExistsError(f"{out} exists and is neither an index nor an empty folder")
    b, note = bounds, None
    found = getattr(encoder, "bounds", None)
    if b is None and found is not None:
        if found.can_classify("image"):
            b = found
        else:  # a minimal file (S and V up_95) serves the hysac redirect at search time, not row labels
            note = (f"{found.source}: not stored with the rows, it cannot label images (it needs V and G); "
                    f"pass it at search time (--bounds) for the hysac redirect")
    ix = Index.create(out, dim=encoder.dim, curv=encoder.curv, preset=preset, geometry=encoder.geometry,
                      modality="image", bounds=b, first_id=first_id or 0,
                      producer={"model": encoder.describe(), "source": str(source), "vectors": "images"})
    return ix, False, note


def check_model(recorded: dict[str, Any] | None, encoder: Encoder, where: str) -> None:
    """A :class:`ModelMismatchError` unless ``encoder`` is the model ``recorded`` in an index's manifest."""
    if not recorded:
        raise ModelMismatchError(f"{where} records no model (it was built from precomputed vectors); "
                                 f"search it with --vectors")
    mine = encoder.describe()
    for key in ("kind", "geometry", "dim"):
        if recorded.get(key) != mine.get(key):
            raise ModelMismatchError(f"model mismatch: {where} was built with {key} {recorded.get(key)!r}, "
                                     f"the model given has {mine.get(key)!r}")
    if _arch_config(recorded.get("arch")) != _arch_config(mine["arch"]):
        raise ModelMismatchError(f"model mismatch: {where} was built with architecture "
                                 f"{_arch_name(recorded.get('arch'))}, the model given is "
                                 f"{_arch_name(mine['arch'])} with another config")
    if abs(float(recorded.get("curv", 0.0)) - mine["curv"]) > 1e-6 * mine["curv"]:
        raise ModelMismatchError(f"model mismatch: {where} has curvature {recorded.get('curv')}, the model "
                                 f"given {mine['curv']}")
    if recorded.get("file_sha256") != mine["file_sha256"]:
        raise ModelMismatchError(f"model mismatch: {where} was built with checkpoint {recorded.get('checkpoint')} "
                                 f"(sha256 {str(recorded.get('file_sha256'))[:12]}), not {mine['checkpoint']} "
                                 f"(sha256 {mine['file_sha256'][:12]})")


def _arch_config(arch: Any) -> dict[str, Any] | None:
    """An architecture's config without its name (two names for one config are the same model)."""
    if arch is None:
        return None
    cfg = dict(model_config(arch)[1])
    cfg.pop("name", None)
    return cfg


def _arch_name(arch: Any) -> str:
    return str(arch.get("name", "custom")) if isinstance(arch, dict) else str(arch)


def indexed_hashes(ix: Any) -> dict[str, str]:
    """sha256 -> uri of the live rows of an index (empty for a new one)."""
    if not len(ix) or "sha256" not in ix.manifest.metadata_columns:
        return {}
    t = ix.get(ix.ids(), columns=["sha256", "uri"])
    return dict(zip(t.column("sha256").to_pylist(), t.column("uri").to_pylist()))


def meta_table(meta: dict[str, list[Any]]) -> Any:
    import pyarrow as pa

    return pa.table({
        "uri": pa.array(meta["uri"], pa.string()),
        "sha256": pa.array(meta["sha256"], pa.string()),
        "width": pa.array(meta["width"], pa.int32()),
        "height": pa.array(meta["height"], pa.int32()),
    })


def reason_class(reason: str) -> str:
    return reason.split(":", 1)[0].split(" (", 1)[0]


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


class Report:
    """A JSON-lines file of ``{"uri", "reason"}``, created on the first line."""

    def __init__(self, path: Path):
        self.path, self.lines = path, 0
        self._f: TextIO | None = None

    def write(self, uri: str, reason: str) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps({"uri": uri, "reason": reason}) + "\n")
        self.lines += 1

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
