"""``hyperret index IMAGES``: a folder (or list) of images -> an index, resumably.

Worker processes (a torch ``DataLoader``) read, hash, decode and preprocess files
while the main process runs the model, so decoding overlaps the forward passes.
Rows are committed in chunks (every ``commit_every`` images or
``commit_seconds``): a killed run keeps every finished chunk, and a re-run skips
files whose content (SHA-256) the index already holds. Files that cannot be
indexed never stop the run: each is written to a JSON-lines report with its
reason. Every row carries ``uri``, ``sha256``, ``width`` and ``height``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np

from ..errors import IndexExistsError, InvalidInputError, ModelMismatchError
from ..storage.manifest import MANIFEST_NAME
from .encoder import Encoder
from .images import MAX_PIXELS, ImageSkipped, decode, read_file
from .listing import list_images
from .towers import model_config

ALREADY = "already indexed"
REPORTS_DIR = "reports"
Progress = Callable[[int], None]  # called with the number of files just handled


@dataclass
class Item:
    """What a worker made of one file."""

    uri: str
    sha256: str | None = None
    width: int = 0
    height: int = 0
    pixels: Any = None  # (3, S, S) uint8 tensor, in the worker only (collated into one batch tensor)
    decoded: bool = False  # whether the batch tensor holds a row for this file
    reason: str | None = None  # why it is not indexed


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
    write_seconds: float = 0.0  # main process: buffering rows and committing (shards, candidate structure)
    rows: int = 0
    version: int = 0
    resumed: bool = False
    bounds_note: str | None = None  # why bounds found beside the checkpoint were not stored

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["images_per_second"] = self.indexed / self.seconds if self.seconds > 0 else 0.0
        return d


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class _Files:
    """A map-style dataset over file paths (a torch Dataset by duck typing)."""

    def __init__(self, files: list[Path], known: frozenset[str], transform: Any, draft: int, max_pixels: int):
        self.files, self.known, self.transform = files, known, transform
        self.draft, self.max_pixels = draft, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        path = self.files[i]
        item = Item(uri=str(path))
        try:
            data, item.sha256 = read_file(path)
            if item.sha256 in self.known:
                item.reason = ALREADY
                return item
            d = decode(data, max_pixels=self.max_pixels, draft=self.draft)
            item.width, item.height = d.width, d.height
            item.pixels = self.transform(d.image)
        except ImageSkipped as e:
            item.reason = str(e)
        except Exception as e:  # a decoder bug on one odd file must not end the run
            item.reason = f"cannot decode: {type(e).__name__}: {e}"
        return item


def _collate(items: list[Item]) -> tuple[list[Item], Any]:
    """One uint8 tensor per chunk: the items travel back without their pixels (one shared buffer, not one each)."""
    import torch

    ok = [it.pixels for it in items if it.pixels is not None]
    for it in items:
        it.decoded, it.pixels = it.pixels is not None, None
    return items, (torch.stack(ok) if ok else None)


def _regroup(chunks: Any, batch_size: int) -> Any:
    """Chunks ``(items, pixels)`` from the loader -> batches of about ``batch_size`` decoded images."""
    import torch

    items: list[Item] = []
    pix: list[Any] = []
    ready = 0
    for its, px in chunks:
        items.extend(its)
        if px is not None:
            pix.append(px)
            ready += len(px)
        if ready >= batch_size:
            yield items, (torch.cat(pix) if len(pix) > 1 else pix[0])
            items, pix, ready = [], [], 0
    if items:
        yield items, (torch.cat(pix) if len(pix) > 1 else (pix[0] if pix else None))


def index_images(
    images: str | Path,
    out: str | Path,
    encoder: Encoder,
    *,
    preset: str | None = None,
    bounds: Any = None,
    batch_size: int = 32,
    workers: int | None = None,
    commit_every: int = 4096,
    commit_seconds: float = 300.0,
    max_pixels: int = MAX_PIXELS,
    report: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    progress: Progress | None = None,
    decode_chunk: int | None = None,
    compact: bool = True,
) -> RunSummary:
    """Embed every image under ``images`` with ``encoder`` into the index at ``out`` (created or resumed).

    ``on_start(total, already)`` is called once the files are listed; ``progress(n)``
    after each batch with the number of files handled. ``decode_chunk``: files a
    worker decodes per task (default: ``batch_size``). ``compact``: merge the
    segments the chunked commits made into one at the end (:meth:`Index.compact`).
    """
    from torch.utils.data import DataLoader

    if batch_size < 1 or commit_every < 1:
        raise InvalidInputError("batch size and commit interval must be positive")
    t0 = time.perf_counter()
    out = Path(out)
    listing = list_images(images)
    n_workers = default_workers() if workers is None else int(workers)
    ix, resumed, note = _open_or_create(out, encoder, preset, bounds, images)
    summary = RunSummary(path=str(out), listed=len(listing.files) + len(listing.ignored), resumed=resumed,
                         bounds_note=note)
    reasons: Counter[str] = Counter()
    rep = _Report(Path(report) if report is not None else out / REPORTS_DIR / f"index-{_stamp()}.jsonl")
    try:
        known = _indexed_hashes(ix)
        for p, why in listing.ignored:
            rep.write(str(p), why)
            reasons[_reason_class(why)] += 1
        if on_start is not None:
            on_start(len(listing.files), len(known))
        ds = _Files(listing.files, frozenset(known), encoder.pixel_transform, 2 * encoder.image_size, max_pixels)
        # A worker decodes one batch per task (measured on an H100 with 15 workers: tasks of 18 or 64
        # files cost more in inter-process traffic than they save in start-up); skipped files leave a
        # batch short, and the main process regroups short ones into model batches.
        chunk = decode_chunk or batch_size
        loader = DataLoader(ds, batch_size=chunk, shuffle=False, num_workers=n_workers, collate_fn=_collate,
                            prefetch_factor=2 if n_workers else None,
                            persistent_workers=False)
        last_commit = time.monotonic()
        batches = _regroup(iter(loader), batch_size)
        while True:
            tw = time.perf_counter()
            nxt = next(batches, None)
            summary.wait_seconds += time.perf_counter() - tw
            if nxt is None:
                break
            items, pixels = nxt
            vectors = None
            if pixels is not None:
                tf = time.perf_counter()
                vectors = encoder.encode_uint8(pixels)
                summary.model_seconds += time.perf_counter() - tf
            rows, meta = _triage(items, known, rep, reasons, summary)
            tw = time.perf_counter()
            if rows and vectors is not None:  # rows come only from decoded items, so from a batch
                ix.add(vectors[np.asarray(rows)], metadata=_meta_table(meta))
                summary.indexed += len(rows)
            if ix.pending and (ix.pending >= commit_every or time.monotonic() - last_commit >= commit_seconds):
                ix.commit()
                rep.flush()
                summary.commits += 1
                last_commit = time.monotonic()
            summary.write_seconds += time.perf_counter() - tw
            if progress is not None:
                progress(len(items))
        tw = time.perf_counter()
        if ix.pending:
            ix.commit()
            summary.commits += 1
        if compact and len(ix.manifest.candidates) > 1:
            ix.compact()
            summary.compacted = True
        summary.write_seconds += time.perf_counter() - tw
        rep.flush()
        summary.rows, summary.version = len(ix), ix.version
    finally:
        rep.close()
        ix.close()
    summary.skipped = sum(reasons.values())
    summary.skipped_by_reason = dict(reasons)
    summary.report = str(rep.path) if rep.lines else None
    summary.seconds = time.perf_counter() - t0
    return summary


def _triage(items: list[Item], known: dict[str, str], rep: _Report, reasons: Counter[str],
            summary: RunSummary) -> tuple[list[int], dict[str, list[Any]]]:
    """Which rows of a batch's vectors to add (and their metadata); the rest are counted or reported."""
    rows: list[int] = []
    meta: dict[str, list[Any]] = {"uri": [], "sha256": [], "width": [], "height": []}
    j = -1  # row of the batch tensor
    for it in items:
        if it.decoded:
            j += 1
        if it.reason == ALREADY or (it.reason is None and it.sha256 in known):
            first = known.get(it.sha256) if it.sha256 is not None else None
            if first is not None and first != it.uri:
                rep.write(it.uri, f"duplicate: same content as {first}")
                reasons["duplicate"] += 1
            else:
                summary.already_indexed += 1
        elif it.reason is not None:
            rep.write(it.uri, it.reason)
            reasons[_reason_class(it.reason)] += 1
        else:
            known[cast(str, it.sha256)] = it.uri  # an item without a reason was read and hashed
            rows.append(j)
            for key, v in (("uri", it.uri), ("sha256", it.sha256), ("width", it.width), ("height", it.height)):
                meta[key].append(v)
    return rows, meta


def _open_or_create(out: Path, encoder: Encoder, preset: str | None, bounds: Any,
                    source: Any) -> tuple[Any, bool, str | None]:
    """``(index, resumed, note)``: the note says why bounds beside the checkpoint were left out."""
    from ..index import Index

    if (out / MANIFEST_NAME).exists():
        ix = Index.open(out, writable=True)
        try:
            check_model(ix.manifest.producer.get("model"), encoder, str(out))
            if preset is not None and preset != ix.manifest.preset.get("name"):
                raise InvalidInputError(f"{out} was built with preset {ix.manifest.preset.get('name')}; "
                                        f"a resumed run keeps it (drop --preset)")
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
                      modality="image", bounds=b,
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


def _indexed_hashes(ix: Any) -> dict[str, str]:
    """sha256 -> uri of the live rows of an index (empty for a new one)."""
    if not len(ix) or "sha256" not in ix.manifest.metadata_columns:
        return {}
    t = ix.get(ix.ids(), columns=["sha256", "uri"])
    return dict(zip(t.column("sha256").to_pylist(), t.column("uri").to_pylist()))


def _meta_table(meta: dict[str, list[Any]]) -> Any:
    import pyarrow as pa

    return pa.table({
        "uri": pa.array(meta["uri"], pa.string()),
        "sha256": pa.array(meta["sha256"], pa.string()),
        "width": pa.array(meta["width"], pa.int32()),
        "height": pa.array(meta["height"], pa.int32()),
    })


def _reason_class(reason: str) -> str:
    return reason.split(":", 1)[0].split(" (", 1)[0]


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


class _Report:
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
