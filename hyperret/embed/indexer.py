"""``hyperret index IMAGES``: a folder (or list) of images -> an index, resumably.

Worker processes (a torch ``DataLoader``) read, hash, decode and preprocess files
while the main process runs the model, so decoding overlaps the forward passes;
a writer thread (:mod:`hyperret.embed.committer`) adds and commits the rows
meanwhile, so commits overlap them too. Rows are committed in chunks (every
``commit_every`` images or ``commit_seconds``): a killed run keeps every finished
chunk, and a re-run skips files whose content (SHA-256) the index already holds.
Files that cannot be indexed never stop the run: each is written to a JSON-lines
report with its reason. Every row carries ``uri``, ``sha256``, ``width`` and ``height``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TextIO, cast

import numba
import numpy as np

from ..errors import IndexExistsError, InvalidInputError, ModelMismatchError
from ..storage.manifest import MANIFEST_NAME
from .committer import Committer, RunWrites
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


class _Tasks:
    """Files per worker task (a batch sampler): ``chunk`` each, except at the start.

    The first model batch is split across the workers (``batch_size / workers``
    files each), and tasks double from there up to ``chunk``: the model starts
    after a worker decoded a few files, not a whole chunk, and the workers stay
    ahead while the tasks grow. Few tasks are small, so their inter-process
    traffic hardly counts.
    """

    def __init__(self, n: int, chunk: int, batch_size: int, workers: int):
        self.n, self.chunk, self.workers = n, chunk, max(1, workers)
        self.first = min(chunk, -(-batch_size // self.workers))

    def __iter__(self) -> Any:
        start = 0
        for size in self._sizes():
            yield list(range(start, start + size))
            start += size

    def __len__(self) -> int:
        return sum(1 for _ in self._sizes())

    def _sizes(self) -> Any:
        left, size, k = self.n, self.first, 0
        while left > 0:
            yield min(size, left)
            left, k = left - size, k + 1
            if k % self.workers == 0:  # a round done: a task per worker
                size = min(self.chunk, 2 * size)


def _regroup(chunks: Any, batch_size: int) -> Any:
    """Chunks ``(items, pixels)`` from the loader -> batches of ``batch_size`` decoded images (the last: fewer).

    A chunk may be split between two batches; items stay in order, a batch ends
    at its last decoded image (files skipped after it go with the next batch).
    """
    import torch

    items: list[Item] = []
    pix: list[Any] = []
    ready = 0
    for its, px in chunks:
        items.extend(its)
        if px is not None:
            pix.append(px)
            ready += len(px)
        while ready >= batch_size:
            every = torch.cat(pix) if len(pix) > 1 else pix[0]
            cut = [i for i, it in enumerate(items) if it.decoded][batch_size - 1] + 1
            yield items[:cut], every[:batch_size]
            items, pix, ready = items[cut:], ([every[batch_size:]] if ready > batch_size else []), ready - batch_size
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
    background_commits: bool = True,
) -> RunSummary:
    """Embed every image under ``images`` with ``encoder`` into the index at ``out`` (created or resumed).

    ``on_start(total, already)`` is called once the files are listed; ``progress(n)``
    after each batch with the number of files handled. ``decode_chunk``: files a
    worker decodes per task (default: ``batch_size``). ``compact``: merge the
    segments the chunked commits made into one at the end (:meth:`Index.compact`).
    ``background_commits``: adds and commits run on a writer thread while the model
    goes on (:class:`~hyperret.embed.committer.Committer`); false: on this thread.
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
    committer: Committer | None = None
    try:
        known = _indexed_hashes(ix)
        ignored = [(str(p), why) for p, why in listing.ignored]
        reasons.update(_reason_class(why) for _, why in ignored)
        if on_start is not None:
            on_start(len(listing.files), len(known))
        ds = _Files(listing.files, frozenset(known), encoder.pixel_transform, 2 * encoder.image_size, max_pixels)
        # A worker decodes one batch per task (measured on an H100 with 15 workers: tasks of 18 or 64
        # files cost more in inter-process traffic than they save in start-up), after a short ramp;
        # the main process regroups the tasks' decoded images into model batches.
        tasks = _Tasks(len(ds), decode_chunk or batch_size, batch_size, n_workers)
        loader = DataLoader(ds, batch_sampler=tasks, num_workers=n_workers, collate_fn=_collate,
                            prefetch_factor=2 if n_workers else None, persistent_workers=False)
        # Numba's threads start on this thread, not the writer's: TBB then lets this thread fork the
        # workers (of this run and the next) cleanly, instead of warning about each fork
        numba.get_num_threads()
        batches = _regroup(iter(loader), batch_size)  # the workers start
        # the writer keeps one commit running and about one chunk of batches (and its commit) queued
        committer = Committer(background_commits, depth=max(4, -(-commit_every // batch_size) + 2))
        summary.background_commits = background_commits
        writes = RunWrites(ix, rep, summary)
        committer.submit(partial(writes.add, None, None, ignored))
        last_commit = time.monotonic()
        handed = 0  # rows handed over since the last commit
        while True:
            tw = time.perf_counter()
            nxt = next(batches, None)
            summary.wait_seconds += time.perf_counter() - tw
            if not summary.first_batch_seconds:
                summary.first_batch_seconds = time.perf_counter() - t0
            if nxt is None:
                break
            items, pixels = nxt
            vectors = None
            if pixels is not None:
                tf = time.perf_counter()
                vectors = encoder.encode_uint8(pixels)
                summary.model_seconds += time.perf_counter() - tf
            lines: list[tuple[str, str]] = []
            rows, meta = _triage(items, known, lines, reasons, summary)
            if rows and vectors is not None:  # rows come only from decoded items, so from a batch
                committer.submit(partial(writes.add, vectors[np.asarray(rows)], _meta_table(meta), lines))
                summary.indexed += len(rows)
                handed += len(rows)
            elif lines:
                committer.submit(partial(writes.add, None, None, lines))
            if handed and (handed >= commit_every or time.monotonic() - last_commit >= commit_seconds):
                committer.submit(writes.commit)  # the report is flushed after the commit covering its batches
                summary.commits += 1
                handed, last_commit = 0, time.monotonic()
            if progress is not None:
                progress(len(items))
        if handed:
            summary.commits += 1
        committer.submit(partial(writes.finish, compact))
        committer.finish()
    finally:
        try:
            if committer is not None:  # the index is closed only once the writer has stopped
                committer.close()
                summary.write_seconds, summary.commit_wait_seconds = committer.write_seconds, committer.wait_seconds
        finally:
            rep.close()
            ix.close()
    summary.skipped = sum(reasons.values())
    summary.skipped_by_reason = dict(reasons)
    summary.report = str(rep.path) if rep.lines else None
    summary.seconds = time.perf_counter() - t0
    return summary


def _triage(items: list[Item], known: dict[str, str], lines: list[tuple[str, str]], reasons: Counter[str],
            summary: RunSummary) -> tuple[list[int], dict[str, list[Any]]]:
    """Which rows of a batch's vectors to add (and their metadata); the rest are counted or reported in ``lines``."""
    rows: list[int] = []
    meta: dict[str, list[Any]] = {"uri": [], "sha256": [], "width": [], "height": []}
    j = -1  # row of the batch tensor
    for it in items:
        if it.decoded:
            j += 1
        if it.reason == ALREADY or (it.reason is None and it.sha256 in known):
            first = known.get(it.sha256) if it.sha256 is not None else None
            if first is not None and first != it.uri:
                lines.append((it.uri, f"duplicate: same content as {first}"))
                reasons["duplicate"] += 1
            else:
                summary.already_indexed += 1
        elif it.reason is not None:
            lines.append((it.uri, it.reason))
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
