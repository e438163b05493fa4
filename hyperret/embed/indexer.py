"""``hyperret index IMAGES``: a folder (or list) of images -> an index, resumably.

Worker processes (a torch ``DataLoader``) read, hash, decode and preprocess files
while the main process runs the model, so decoding overlaps the forward passes;
a writer thread (:mod:`hyperret.embed.committer`) adds and commits the rows
meanwhile, so commits overlap them too. Rows are committed in chunks (every
``commit_every`` images or ``commit_seconds``): a killed run keeps every finished
chunk, and a re-run skips files whose content (SHA-256) the index already holds.
Files that cannot be indexed never stop the run: each is written to a JSON-lines
report with its reason. Every row carries ``uri``, ``sha256``, ``width`` and ``height``.
A file's row id is the run's first id (the index's counter) plus the file's place
in the sorted listing: it depends on nothing but the listing, so a run on Ray
(:mod:`hyperret.distributed.images`) gives the same ids; a skipped file leaves a gap.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numba
import numpy as np

from ..errors import InvalidInputError
from .committer import Committer, RunWrites
from .encoder import Encoder
from .images import MAX_PIXELS, ImageSkipped, decode, read_file
from .listing import list_images
from .runs import (
    ALREADY,
    REPORTS_DIR,
    Report,
    RunSummary,
    indexed_hashes,
    meta_table,
    open_or_create,
    reason_class,
    stamp,
)

__all__ = ["Item", "index_images", "prepare_file"]

Progress = Callable[[int], None]  # called with the number of files just handled


@dataclass
class Item:
    """What a worker made of one file."""

    uri: str
    id: int = -1  # the row id it gets if indexed: the run's first id + its place in the listing
    sha256: str | None = None
    width: int = 0
    height: int = 0
    pixels: Any = None  # (3, S, S) uint8 tensor, in the worker only (collated into one batch tensor)
    decoded: bool = False  # whether the batch tensor holds a row for this file
    reason: str | None = None  # why it is not indexed


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class _Files:
    """A map-style dataset over file paths (a torch Dataset by duck typing)."""

    def __init__(self, files: list[Path], known: frozenset[str], transform: Any, draft: int, max_pixels: int,
                 first_id: int):
        self.files, self.known, self.transform, self.first_id = files, known, transform, first_id
        self.draft, self.max_pixels = draft, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        return prepare_file(self.files[i], self.first_id + i, self.known, self.transform, self.draft,
                            self.max_pixels)


def prepare_file(path: Path | str, row_id: int, known: frozenset[str], transform: Any, draft: int,
                 max_pixels: int) -> Item:
    """Read, hash, decode and transform one file (a worker's job); an :class:`Item` with a reason if skipped."""
    item = Item(uri=str(path), id=row_id)
    try:
        data, item.sha256 = read_file(path)
        if item.sha256 in known:
            item.reason = ALREADY
            return item
        d = decode(data, max_pixels=max_pixels, draft=draft)
        item.width, item.height = d.width, d.height
        item.pixels = transform(d.image)
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
    first_id: int | None = None,
) -> RunSummary:
    """Embed every image under ``images`` with ``encoder`` into the index at ``out`` (created or resumed).

    ``on_start(total, already)`` is called once the files are listed; ``progress(n)``
    after each batch with the number of files handled. ``decode_chunk``: files a
    worker decodes per task (default: ``batch_size``). ``compact``: merge the
    segments the chunked commits made into one at the end (:meth:`Index.compact`).
    ``background_commits``: adds and commits run on a writer thread while the model
    goes on (:class:`~hyperret.embed.committer.Committer`); false: on this thread.
    ``first_id``: a new index numbers its rows from it (parts of one collection built apart).
    """
    from torch.utils.data import DataLoader

    if batch_size < 1 or commit_every < 1:
        raise InvalidInputError("batch size and commit interval must be positive")
    t0 = time.perf_counter()
    out = Path(out)
    listing = list_images(images)
    n_workers = default_workers() if workers is None else int(workers)
    ix, resumed, note = open_or_create(out, encoder, preset, bounds, images, first_id)
    summary = RunSummary(path=str(out), listed=len(listing.files) + len(listing.ignored), resumed=resumed,
                         bounds_note=note)
    reasons: Counter[str] = Counter()
    rep = Report(Path(report) if report is not None else out / REPORTS_DIR / f"index-{stamp()}.jsonl")
    committer: Committer | None = None
    try:
        known = indexed_hashes(ix)
        ignored = [(str(p), why) for p, why in listing.ignored]
        reasons.update(reason_class(why) for _, why in ignored)
        if on_start is not None:
            on_start(len(listing.files), len(known))
        ds = _Files(listing.files, frozenset(known), encoder.pixel_transform, 2 * encoder.image_size, max_pixels,
                    ix.manifest.next_id)
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
            rows, ids, meta = _triage(items, known, lines, reasons, summary)
            if rows and vectors is not None:  # rows come only from decoded items, so from a batch
                committer.submit(partial(writes.add, vectors[np.asarray(rows)], meta_table(meta), lines, ids))
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
            summary: RunSummary) -> tuple[list[int], list[int], dict[str, list[Any]]]:
    """Which rows of a batch's vectors to add (their ids, metadata); the rest are counted or reported in ``lines``."""
    rows: list[int] = []
    ids: list[int] = []
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
            reasons[reason_class(it.reason)] += 1
        else:
            known[cast(str, it.sha256)] = it.uri  # an item without a reason was read and hashed
            rows.append(j)
            ids.append(it.id)
            for key, v in (("uri", it.uri), ("sha256", it.sha256), ("width", it.width), ("height", it.height)):
                meta[key].append(v)
    return rows, ids, meta
