"""Indexing images on Ray: a Ray Data pipeline of decoder and embedder actors writing shards; the driver commits.

The driver lists the files (as the local indexer does: sorted, so a file's row id
is the run's first id plus its place in the listing), opens or creates the index
and holds its writer lock. The pipeline:

1. **decoders** (CPU actors, an autoscaling pool): read, hash and decode each file
   and make its ``(3, S, S)`` uint8 pixels (:func:`hyperret.embed.indexer.prepare_file`,
   the local workers' code); files whose content the index holds are marked, not decoded;
2. **embedders** (GPU actors, one GPU each, or CPU actors): run the model on the
   decoded images, ``batch_size`` per forward pass, and write each input batch
   (``shard_rows`` files) as one shard into the index's ``shards/`` (a shared
   filesystem on a cluster); they return per-file rows without pixels;
3. the **driver** adopts the shards and commits every ``commit_every`` images (one
   manifest swap each), writes the report of skipped files and resolves duplicate
   content found within the run (the first file in the listing keeps its row, as
   locally). Garbage collection spares the run's shards until they are adopted.

A killed job keeps its committed chunks; a re-run skips the content the index holds.
A worker that dies is restarted by Ray and its batch run again; the shards a failed
attempt wrote are never adopted and go as garbage.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embed.committer import RunWrites
from ..embed.indexer import prepare_file
from ..embed.listing import list_images
from ..embed.runs import (
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
from ..errors import InvalidInputError
from ..storage.manifest import FileEntry
from ..storage.shards import write_shard
from . import remote

#: files per decoder call
DECODE_BATCH = 32
#: most blocks of the file list (a billion files: 50,000 files a block)
MAX_BLOCKS = 20_000
_COLUMNS = ("uri", "id", "sha256", "width", "height", "reason")


@dataclass(frozen=True)
class ModelSpec:
    """How an actor loads the model: :func:`hyperret.load_encoder`'s arguments."""

    model: str
    arch: Any = None
    device: str = "cpu"
    precision: str = "auto"


class Decoder:
    """A decoder actor: files ``(uri, id)`` -> their hashes, sizes, reasons and ``(n, 3, S, S)`` uint8 pixels."""

    def __init__(self, config: dict[str, Any], size: int, max_pixels: int, known: list[Any]):
        import ray

        from ..embed.towers import split_preprocess

        self.transform = split_preprocess(config)[0]
        self.size, self.draft, self.max_pixels = size, 2 * size, max_pixels
        self.known: frozenset[str] = ray.get(known[0])  # the driver holds it for the run: a restart reads it again

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [prepare_file(u, int(i), self.known, self.transform, self.draft, self.max_pixels)
                 for u, i in zip(batch["uri"], batch["id"])]
        pixels = np.zeros((len(items), 3, self.size, self.size), np.uint8)
        for j, it in enumerate(items):
            if it.pixels is not None:
                pixels[j] = it.pixels.numpy()
        return {**_rows(items), "pixels": pixels}


class Embedder:
    """An embedder actor: decoded files -> one shard of their vectors in the index; per-file rows back."""

    def __init__(self, index: str, model: ModelSpec, batch_size: int, threads: int, tag: str,
                 kill_once: str | None = None):
        import torch

        from ..embed.encoder import load_encoder
        from ..index import Index

        if not model.device.startswith("cuda"):
            torch.set_num_threads(max(1, threads))
        device = "cuda" if model.device.startswith("cuda") else model.device  # Ray hands the actor its GPU
        self.enc = load_encoder(model.model, model.arch, device, precision=model.precision)
        self.ix = Index.open(index)
        self.path, self.batch_size, self.tag, self.kill_once = Path(index), batch_size, tag, kill_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        remote.die_once(self.kill_once)  # tests: a worker dies mid-job
        t = time.perf_counter()
        ok = np.flatnonzero(batch["reason"] == "")
        n = len(batch["uri"])
        shard = np.full(n, "", dtype=object)
        seconds = np.zeros(n)
        if len(ok):
            pixels = batch["pixels"][ok]
            vectors = np.concatenate([self.enc.encode_uint8(torch.from_numpy(pixels[i : i + self.batch_size]))
                                      for i in range(0, len(ok), self.batch_size)])
            seconds[0] = time.perf_counter() - t
            meta = meta_table({k: [_plain(v) for v in batch[k][ok]] for k in ("uri", "sha256", "width", "height")})
            table = self.ix.shard_rows(vectors, batch["id"][ok].astype(np.int64), meta)
            shard[0] = json.dumps(asdict(write_shard(self.path, table, tag=self.tag)))
        return {**{k: batch[k] for k in _COLUMNS}, "shard": shard, "model_seconds": seconds}


def _rows(items: list[Any]) -> dict[str, np.ndarray]:
    return {"uri": np.array([it.uri for it in items], dtype=object),
            "id": np.array([it.id for it in items], dtype=np.int64),
            "sha256": np.array([it.sha256 or "" for it in items], dtype=object),
            "width": np.array([it.width for it in items], dtype=np.int32),
            "height": np.array([it.height for it in items], dtype=np.int32),
            "reason": np.array([it.reason or "" for it in items], dtype=object)}


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class _Triage:
    """The driver's view of the rows coming back: counts, report lines, duplicates within the run."""

    def __init__(self, known: dict[str, str], summary: RunSummary, report: Report):
        self.known, self.summary, self.report = known, summary, report
        self.kept: dict[str, tuple[str, int]] = {}  # sha256 -> (uri, id) of this run's row for that content
        self.reasons: Counter[str] = Counter()
        self.drop: list[int] = []  # rows adopted for content an earlier file in the listing has

    def rows(self, b: dict[str, np.ndarray]) -> int:
        """Account for a batch of rows; returns how many of them hold content new to the index."""
        added = 0
        for uri, rid, sha, why in zip(b["uri"], b["id"].tolist(), b["sha256"], b["reason"]):
            if why == ALREADY:
                first = self.known.get(sha)
                if first is not None and first != uri:
                    self.skip(uri, f"duplicate: same content as {first}")
                else:
                    self.summary.already_indexed += 1
            elif why:
                self.skip(uri, why)
            elif sha in self.kept or sha in self.known:
                other = self.kept.get(sha)
                if other is None or other[1] < rid:  # an earlier file has it: this row goes
                    self.drop.append(rid)
                    self.skip(uri, f"duplicate: same content as {other[0] if other else self.known[sha]}")
                else:  # this file comes first in the listing: it keeps the content, the other row goes
                    self.drop.append(other[1])
                    self.skip(other[0], f"duplicate: same content as {uri}")
                    self.kept[sha] = (uri, rid)
            else:
                self.kept[sha] = (uri, rid)
                added += 1
        return added

    def skip(self, uri: str, why: str) -> None:
        self.report.write(uri, why)
        self.reasons[reason_class(why)] += 1


def index_images_on_ray(
    images: str | Path,
    out: str | Path,
    model: ModelSpec,
    *,
    preset: str | None = None,
    bounds: Any = None,
    batch_size: int = 32,
    actors: int | None = None,
    actor_cpus: float = 1.0,
    decoders: int | None = None,
    shard_rows: int = 1024,
    commit_every: int = 4096,
    commit_seconds: float = 300.0,
    max_pixels: int | None = None,
    report: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    compact: bool = True,
    ray_address: str | None = None,
    first_id: int | None = None,
    kill_once: str | None = None,
) -> RunSummary:
    """Embed every image under ``images`` into the index at ``out`` on Ray (see the module docstring).

    ``actors``: embedders (default: the cluster's GPUs for a ``cuda`` model, else 1),
    each with ``actor_cpus`` CPUs (its torch threads) and one GPU for ``cuda``;
    ``decoders``: at most this many decoder actors (default: the CPUs the embedders
    leave). ``shard_rows``: files per embedder call, written as one shard. The rest
    as :func:`hyperret.embed.indexer.index_images`. ``kill_once`` (tests): a marker
    path; the first embedder call that finds none makes it and kills its worker.
    """
    import ray
    import ray.data

    from ..embed.encoder import load_encoder
    from ..embed.images import MAX_PIXELS

    if batch_size < 1 or commit_every < 1 or shard_rows < 1:
        raise InvalidInputError("batch size, shard rows and commit interval must be positive")
    t0 = time.perf_counter()
    out = Path(out)
    listing = list_images(images)
    enc = load_encoder(model.model, model.arch, "cpu", precision=model.precision)  # describes it; no towers built
    ix, resumed, note = open_or_create(out, enc, preset, bounds, images, first_id)
    summary = RunSummary(path=str(out), listed=len(listing.files) + len(listing.ignored), resumed=resumed,
                         bounds_note=note, background_commits=False)
    rep = Report(Path(report) if report is not None else out / REPORTS_DIR / f"index-{stamp()}.jsonl")
    try:
        remote.init(ray_address)
        ray.data.DataContext.get_current().enable_progress_bars = False  # the caller's bar shows the files
        cpus = float(ray.cluster_resources().get("CPU", 1))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cuda = model.device.startswith("cuda")
        if cuda and not gpus:
            raise InvalidInputError("--device cuda on Ray, but the cluster has no GPU")
        n_actors = int(actors or (gpus if cuda else 1))
        free = cpus - n_actors * actor_cpus
        if free < 1:  # the decoders would wait forever for a CPU
            raise InvalidInputError(f"{n_actors} embedder(s) of {actor_cpus:g} CPUs leave {max(free, 0):g} of the "
                                    f"cluster's {cpus:g} CPUs: a decoder needs one (fewer --ray-actors or "
                                    f"--ray-actor-cpus)")
        n_decoders = int(decoders or free)
        known = indexed_hashes(ix)
        triage = _Triage(known, summary, rep)
        writes = RunWrites(ix, rep, summary)
        for p, why in listing.ignored:
            triage.skip(str(p), why)
        if on_start is not None:
            on_start(len(listing.files), len(known))
        first_id = ix.manifest.next_id
        tag = f"v{ix.version + 1:06d}-rayimg-{uuid.uuid4().hex[:8]}"
        items = [{"uri": str(p), "id": first_id + i} for i, p in enumerate(listing.files)]
        with ix.spare_shards(tag):
            if items:
                # Ray Data hands the driver a task's output when the task ends: blocks of a decoder batch
                # (or a shard, when smaller) keep the commits and the progress coming
                known_ref = ray.put(frozenset(known))  # held here for the run: restarted decoders read it again
                per_block = min(DECODE_BATCH, shard_rows)
                blocks = min(MAX_BLOCKS, -(-len(items) // per_block))
                ds: Any = ray.data.from_items(items, override_num_blocks=blocks)
                ds = ds.map_batches(Decoder, batch_size=per_block, batch_format="numpy", num_cpus=1,
                                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_decoders),
                                    fn_constructor_kwargs={"config": enc.config, "size": enc.image_size,
                                                           "max_pixels": max_pixels or MAX_PIXELS,
                                                           "known": [known_ref]})
                ds = ds.map_batches(Embedder, batch_size=shard_rows, batch_format="numpy", num_cpus=actor_cpus,
                                    num_gpus=1 if cuda else 0, compute=ray.data.ActorPoolStrategy(size=n_actors),
                                    fn_constructor_kwargs={"index": str(out.resolve()), "model": model,
                                                           "batch_size": batch_size, "tag": tag,
                                                           "threads": int(actor_cpus), "kill_once": kill_once})
                _drive(ix, ds, triage, writes, commit_every, commit_seconds, progress)
            if ix.pending or ix.pending_deletes:
                writes.commit()
                summary.commits += 1
        if triage.drop:  # rows whose content an earlier file holds: committed above, deleted now
            ix.delete(np.asarray(triage.drop, np.int64))
            ix.commit()
        writes.finish(compact, merge_shards=True)  # the embedders' many small shards merged
    finally:
        rep.close()
        ix.close()
    summary.skipped = sum(triage.reasons.values())
    summary.skipped_by_reason = dict(triage.reasons)
    summary.report = str(rep.path) if rep.lines else None
    summary.seconds = time.perf_counter() - t0
    return summary


def _drive(ix: Any, ds: Any, triage: _Triage, writes: RunWrites, commit_every: int, commit_seconds: float,
           progress: Callable[[int], None] | None) -> None:
    """Adopt the embedders' shards as they come, committing every ``commit_every`` rows or ``commit_seconds``."""
    summary = writes.summary
    handed, last = 0, time.monotonic()
    with remote.unwrapped():
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            entries = [FileEntry(**json.loads(s)) for s in b["shard"] if s]
            if entries:
                ix.adopt_shards(entries)
            added = triage.rows(b)
            summary.indexed += added
            summary.model_seconds += float(np.sum(b["model_seconds"]))
            handed += added
            if handed and (handed >= commit_every or time.monotonic() - last >= commit_seconds):
                writes.commit()  # the report flushed: its lines up to the rows just committed
                summary.commits += 1
                if triage.drop:  # committed now, so they can be deleted in the next commit
                    ix.delete(np.asarray(triage.drop, np.int64))
                    triage.drop.clear()
                handed, last = 0, time.monotonic()
            if progress is not None:
                progress(len(b["uri"]))
