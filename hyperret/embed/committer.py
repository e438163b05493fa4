"""One writer thread for an indexing run: adds, commits and report lines, in hand-over order.

The indexer's main thread runs the model; everything that touches the index is a
*job* (a callable) handed to a :class:`Committer`, which runs the jobs one after
another on its own thread while the next forward pass goes on. So the index is
only ever used by one thread, and a commit (shard writes, the HNSW inserts, the
manifest swap) overlaps the model instead of stalling it.

Backpressure: the queue holds at most ``depth`` jobs; a hand-over blocks only
while it is full, i.e. while the writer is behind. A job's exception stops the
writer (later jobs are dropped, what earlier jobs committed stays committed) and
is raised, the same object, by the next :meth:`Committer.submit` or by
:meth:`Committer.finish`. :class:`RunWrites` holds the indexer's jobs.

The commit path's heavy kernels run without the GIL (Numba ``prange`` regions
release it, as do FAISS, Arrow, hashing and fsync), so the forward passes go on
beside them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

Job = Callable[[], object]

_STOP = object()


class Committer:
    """Runs jobs in hand-over order on one background thread (or inline, when ``background`` is false)."""

    def __init__(self, background: bool = True, depth: int = 8):
        if depth < 1:
            raise ValueError("depth must be positive")
        self.background = background
        #: seconds inside jobs (on the writer thread; inline, the caller's)
        self.write_seconds = 0.0
        #: seconds the caller was blocked: on a full queue and in :meth:`finish` (inline: every job)
        self.wait_seconds = 0.0
        self._error: BaseException | None = None
        self._abort = False
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="hyperret-committer", daemon=False)
            self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The writer thread's identifier (None when jobs run inline)."""
        return self._thread.ident if self._thread is not None else None

    def submit(self, job: Job) -> None:
        """Hand ``job`` over; raises a failed job's exception instead (and from then on)."""
        self._raise()
        t = time.perf_counter()
        if self._thread is None:
            try:
                job()
            except BaseException as e:
                self._error = e
                raise
            finally:
                dt = time.perf_counter() - t
                self.write_seconds += dt
                self.wait_seconds += dt
            return
        self._queue.put(job)  # blocks only while the writer is `depth` jobs behind
        self.wait_seconds += time.perf_counter() - t

    def finish(self) -> None:
        """Wait until every job handed over has run; raise the first failure."""
        t = time.perf_counter()
        try:
            self._stop()
        finally:
            self.wait_seconds += time.perf_counter() - t
        self._raise()

    def close(self) -> None:
        """Stop without running the jobs not yet started (the running one ends first); idempotent."""
        self._abort = True
        self._stop()

    def _stop(self) -> None:
        th = self._thread
        if th is None:
            return
        if th.is_alive():
            self._queue.put(_STOP)  # never blocks for long: the writer takes or drops every job
        interrupted: BaseException | None = None
        while th.is_alive():  # the index must not be closed under a running commit
            try:
                th.join()
            except KeyboardInterrupt as e:
                self._abort, interrupted = True, e
        self._thread = None
        if interrupted is not None:
            raise interrupted

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if self._error is not None or self._abort:
                continue  # dropped: the run is stopping
            t = time.perf_counter()
            try:
                job()  # type: ignore[operator]
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = e
            finally:
                self.write_seconds += time.perf_counter() - t


class RunWrites:
    """An indexing run's jobs: adds, commits, the last commit and compaction, the report's lines and flushes."""

    def __init__(self, ix: Any, report: Any, summary: Any):
        self.ix, self.report, self.summary = ix, report, summary

    def add(self, vectors: np.ndarray | None, meta: Any, lines: list[tuple[str, str]], ids: Any = None) -> None:
        """Buffer a batch's rows (``ids``: theirs, else the counter's) and write its report lines."""
        if vectors is not None:
            self.ix.add(vectors, ids=ids, metadata=meta)
        for uri, why in lines:
            self.report.write(uri, why)

    def commit(self) -> None:
        """Commit, then flush the report (its lines up to the rows just committed)."""
        self.ix.commit()
        self.report.flush()

    def finish(self, compact: bool, merge_shards: bool = False) -> None:
        """The last commit, the compaction, the report flushed; the summary's ``rows`` and ``version``.

        The compaction runs when the commits made more than one segment, or with ``merge_shards``
        more than one shard (the many small ones of a Ray run's workers).
        """
        ix, s = self.ix, self.summary
        if ix.pending:
            ix.commit()
        if compact and (len(ix.manifest.candidates) > 1 or (merge_shards and len(ix.manifest.shards) > 1)):
            ix.compact()
            s.compacted = True
        self.report.flush()
        s.rows, s.version = len(ix), ix.version
