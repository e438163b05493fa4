"""The FAISS candidate stage: a structure over a proxy of the Lorentz coordinates.

It proposes, for each query, candidate rows (global row numbers of the snapshot, also the
FAISS ids: appends add rows at the end); the exact rerank decides. Built, extended, saved, loaded here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import IndexCorruptError
from ..storage.arrays import read_arrays, write_arrays
from ..storage.shardset import ShardSet
from . import graph, hnsw
from .codes import Codes
from .presets import Preset
from .proxies import PROXIES, Proxy, State, pad, padded_dim

Progress = Callable[[int], None]  # called with the number of rows just added
_ADD_CHUNK = 20_000
_IO_FLAGS = faiss.IO_FLAG_MMAP_IFC if hasattr(faiss, "IO_FLAG_MMAP_IFC") else 0


@dataclass
class CandidateStage:
    """A FAISS index over the proxy of every row of a snapshot.

    A reader of a graph walked in Lorentz order holds no FAISS index (``index`` is
    None), only the graph's memory-mapped arrays: the walk reads the shards.
    """

    index: Any  # a faiss.Index, or None for a graph-only reader (FAISS ships no usable types)
    preset: Preset
    factory: str  # what was actually built (a small index gets "Flat")
    state: State
    dim: int
    curv: float
    trained_rows: int = 0
    proxy_name: str = ""  # the space actually indexed; "" = the preset's
    #: Below this many rows the structure is a flat scan (None: the preset's ``min_rows``).
    min_rows: int | None = None
    _graph: graph.Graph | None = field(default=None, init=False, repr=False)  # views of the HNSW arrays
    _codes: Codes | None = field(default=None, init=False, repr=False)  # the walk's 8-bit rows (preset codes)
    _kind_cache: str | None = field(default=None, init=False, repr=False)
    on_gpu: Any = field(default=None, init=False, repr=False)  # a faiss-gpu copy (cuda.faiss_gpu.GpuStructure)

    @property
    def proxy(self) -> Proxy:
        return PROXIES[self.proxy_name or self.preset.proxy]

    @property
    def rows(self) -> int:
        return int(self.index.ntotal) if self.index is not None else int(self._current_graph().levels.shape[0])

    @property
    def navigates_lorentz(self) -> bool:
        """True when search walks the graph with the exact inner product (hyperret.search.graph)."""
        return self.preset.navigate == "lorentz" and self._kind() == "hnsw"

    @property
    def is_exhaustive(self) -> bool:
        """True when the structure is a flat scan (candidates are exact up to rounding)."""
        return self.factory == "Flat" and self.proxy.name in ("ip", "mips_l2")

    # ----------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        preset: Preset,
        spaces: Sequence[np.ndarray],
        dim: int,
        curv: float,
        progress: Progress | None = None,
        min_rows: int | None = None,
    ) -> CandidateStage:
        """Train (if needed) and fill a structure over all rows of ``spaces`` (each ``(n_i, dim)``).

        ``min_rows``: below this many rows, a flat scan (None: the preset's).
        """
        n = sum(len(s) for s in spaces)
        factory = _factory_for(preset, n, _preset_dim(preset, dim), min_rows)
        if _own_graph(preset, factory):
            stage = cls(index=None, preset=preset, factory=factory, state={}, dim=dim, curv=curv,
                        proxy_name=preset.proxy, min_rows=min_rows)
            stage._graph = hnsw.build(ShardSet(spaces, dim), curv, _hnsw_m(factory), _efc(preset),
                                      progress=progress)
            stage._encode(spaces)
            return stage
        # Below min_rows the fallback is a flat scan: of the exact reduction, so it is exact.
        proxy = PROXIES["ip" if factory == "Flat" and preset.factory != "Flat" else preset.proxy]
        state = _merged_state(proxy, spaces, curv)
        d = padded_dim(dim, proxy, preset.pad_to)
        index = _new_index(preset, proxy, d, factory)
        stage = cls(index=index, preset=preset, factory=factory, state=state, dim=dim, curv=curv,
                    proxy_name=proxy.name, min_rows=min_rows)
        if not index.is_trained:
            sample = _sample_rows(spaces, preset.train_rows)
            if stage._lorentz_ivf:
                _train_lorentz_ivf(index, sample, curv, d)
            else:
                index.train(pad(proxy.database(sample, curv, state), d))
            stage.trained_rows = n
        stage._add(spaces, progress)
        stage._encode(spaces)
        return stage

    def _encode(self, spaces: Sequence[np.ndarray]) -> None:
        """Navigation codes of every row, when the preset asks for them and the structure is a walked graph."""
        if self.preset.codes == "sq8" and self.navigates_lorentz:
            self._codes = Codes.encode(spaces, self.dim)

    @property
    def _lorentz_ivf(self) -> bool:
        """An IVF over the exact inner-product reduction with hyperbolic Voronoi cells."""
        return self.preset.navigate == "lorentz" and self.proxy.name == "ip" and self._kind() == "ivf"

    def try_extend(self, spaces: Sequence[np.ndarray], progress: Progress | None = None) -> bool:
        """Add rows in place; False (nothing added) when a rebuild is due instead."""
        n_new = sum(len(s) for s in spaces)
        total = self.rows + n_new
        if not self.proxy.covers(self.state, _merged_state(self.proxy, spaces, self.curv)):
            return False  # e.g. the MIPS reduction's M no longer bounds every norm
        if self.trained_rows and total > self.preset.rebuild_growth * self.trained_rows:
            return False  # the trained quantiser no longer represents the data
        if self.factory != _factory_for(self.preset, total, _preset_dim(self.preset, self.dim), self.min_rows):
            return False  # grew past min_rows, or nlist is due to change
        self._add(spaces, progress)
        return True

    def grown(self, spaces: Sequence[np.ndarray], new: Sequence[np.ndarray],
              progress: Progress | None = None) -> CandidateStage:
        """A new structure over this one's rows ``spaces`` followed by the rows ``new``; this one is untouched.

        Searches may be reading this structure, so it grows a copy (a saved graph
        becomes a growable FAISS graph again); where the copy cannot grow (see
        :meth:`try_extend`), or is a flat scan (cheaper to refill than to copy), it
        is a rebuild over both.
        """
        if _own_graph(self.preset, self.factory):
            total = self.rows + sum(len(s) for s in new)
            if self.factory == _factory_for(self.preset, total, _preset_dim(self.preset, self.dim), self.min_rows):
                copy = replace(self, index=None)
                copy._graph = hnsw.extend(self._current_graph(), ShardSet([*spaces, *new], self.dim), self.curv,
                                          _hnsw_m(self.factory), _efc(self.preset), progress=progress)
                copy._codes = self._grown_codes(spaces, new)
                return copy
        elif self.factory != "Flat":
            copy = replace(self, index=None)
            if self.index is None:  # a saved graph, opened read-only: its proxy vectors are recomputed
                copy._graph = self._current_graph()
                copy._rebuild_index(spaces)
            else:
                copy.index = faiss.clone_index(self.index)
            if copy.try_extend(new, progress):
                copy._codes = self._grown_codes(spaces, new)
                return copy
        if progress is not None:
            progress(-sum(len(s) for s in spaces))  # rebuilding: these rows are counted again
        return CandidateStage.build(self.preset, [*spaces, *new], self.dim, self.curv, progress, self.min_rows)

    def _grown_codes(self, spaces: Sequence[np.ndarray], new: Sequence[np.ndarray]) -> Codes | None:
        """The codes of ``spaces`` + ``new``: these extended (a copy), or encoded afresh if there were none."""
        if self.preset.codes != "sq8" or not self.navigates_lorentz:
            return None
        if self._codes is None or self._codes.rows != sum(len(s) for s in spaces):
            return Codes.encode([*spaces, *new], self.dim)
        return self._codes.extended(new)

    def _add(self, spaces: Sequence[np.ndarray], progress: Progress | None) -> None:
        self._graph = None  # the graph's arrays may move when it grows
        for xb in self._proxy_chunks(spaces, self.index.d):
            if self._lorentz_ivf:
                _add_lorentz_ivf(self.index, xb, time_col=self.dim)
            else:
                self.index.add(xb)
            if progress is not None:
                progress(len(xb))

    def _proxy_chunks(self, spaces: Sequence[np.ndarray], d: int) -> Iterator[np.ndarray]:
        """The rows of ``spaces`` as padded proxy vectors ``(<= _ADD_CHUNK, d)``, in row order."""
        for s in spaces:
            for start in range(0, len(s), _ADD_CHUNK):
                yield pad(self.proxy.database(s[start : start + _ADD_CHUNK], self.curv, self.state), d)

    # ---------------------------------------------------------------- search
    def search(self, queries: np.ndarray, kc: int, shards: ShardSet, *, ef: int | None = None,
               nprobe: int | None = None, skip: np.ndarray | None = None,
               evals: np.ndarray | None = None) -> np.ndarray:
        """Candidate rows ``(m, kc)`` int64 for ``queries: (m, dim)``; ``-1`` where fewer exist.

        ``ef`` (graphs) / ``nprobe`` (IVF): the search knob, default the preset's.
        ``skip: (rows,)`` nonzero = never proposed (a graph walks through such rows,
        FAISS skips them with an ``IDSelector``). ``evals: (m,)``: a Lorentz walk
        writes its distance evaluations per query there.
        """
        if self.navigates_lorentz:
            ef = int(ef or self.preset.search.get("efSearch", 64))
            return graph.search(self._current_graph(), queries, shards, self.curv, kc, ef, skip, evals, self._codes)
        xq = pad(self.proxy.query(queries, self.curv, self.state), self.index.d)
        params = self._search_params(kc, ef, nprobe)
        if skip is not None and np.any(skip):
            keep = np.packbits(np.asarray(skip) == 0, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(skip), faiss.swig_ptr(keep))
            if params is None:
                params = faiss.SearchParameters()
            params.sel = selector
        index = self.on_gpu.index if self.on_gpu is not None and self.on_gpu.takes(kc, params) else self.index
        return index.search(xq, kc)[1] if params is None else index.search(xq, kc, params=params)[1]

    def near_rows(self, rows: np.ndarray, kc: int, shards: ShardSet, ef: int | None = None) -> np.ndarray:
        """Candidate rows ``(m, kc)`` near stored ``rows: (m,)`` (the row itself may be among them).

        A Lorentz-walked graph starts each walk at the row's own node (``ef``: beam
        width, default ``kc``); other structures search with the row's vector.
        """
        if self.navigates_lorentz:
            return graph.walk_from_rows(self._current_graph(), rows, shards, self.curv, kc, ef or kc)
        return self.search(shards.gather(rows), kc, shards)

    def _search_params(self, kc: int, ef: int | None = None, nprobe: int | None = None):
        kind = self._kind()
        if kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(int(ef or self.preset.search.get("efSearch", 64)), kc))
        if kind == "ivf":
            nlist = faiss.extract_index_ivf(self.index).nlist
            return faiss.SearchParametersIVF(nprobe=min(int(nprobe or self.preset.search.get("nprobe", 16)), nlist))
        return None

    @property
    def movable_to_gpu(self) -> bool:
        """A FAISS flat or IVF structure (what faiss-gpu can hold); graphs are walked on the CPU."""
        return self.index is not None and not self.navigates_lorentz and self._kind() in ("flat", "ivf")

    @property
    def knob(self) -> str | None:
        """The search knob this structure takes: ``ef`` (a graph), ``nprobe`` (an IVF) or None (a flat scan)."""
        kind = self._kind()
        return {"hnsw": "ef", "ivf": "nprobe"}.get(kind)

    def _current_graph(self) -> graph.Graph:
        if self._graph is None:
            self._graph = graph.Graph.of(self.index)
        return self._graph

    def _kind(self) -> str:
        """"hnsw", "ivf" or "flat": which search parameters the structure takes (cached)."""
        kind = self._kind_cache
        if kind is None:
            if self.index is None or _hnsw(self.index) is not None:
                kind = "hnsw"
            else:
                try:
                    faiss.extract_index_ivf(self.index)
                    kind = "ivf"
                except RuntimeError:
                    kind = "flat"
            self._kind_cache = kind
        return kind

    # ------------------------------------------------------------------- io
    @property
    def file_suffix(self) -> str:
        """``.graph`` for a Lorentz-walked graph (hyperret's array file), else ``.faiss``."""
        return ".graph" if self.navigates_lorentz else ".faiss"

    def save(self, path: Path) -> None:
        """Write the structure: FAISS's format, or for a Lorentz-walked graph its arrays alone.

        The walk reads the shards, so the graph's proxy vectors (as large as the
        shards) are not saved; a writer recomputes them from the shards on load.
        """
        if self.navigates_lorentz:
            arrays, meta = self._current_graph().arrays()
            if self._codes is not None:
                arrays.update(self._codes.arrays())
            write_arrays(path, arrays, meta)
        else:
            faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, preset: Preset, factory: str, proxy: str, state: State, dim: int, curv: float,
             trained_rows: int, *, min_rows: int | None = None) -> CandidateStage:
        """Read a saved structure, for searching (:meth:`grown` makes a copy that grows).

        ``min_rows``: the flat-scan threshold it grows under (None: the preset's).
        """
        if not path.exists():
            raise FileNotFoundError(2, "candidate structure missing", str(path))
        if proxy not in PROXIES:
            raise IndexCorruptError(f"candidate structure {path.name}: unknown candidate space {proxy!r} "
                                    f"(known: {', '.join(PROXIES)})")
        stage = cls(index=None, preset=preset, factory=factory, state=dict(state), dim=dim, curv=curv,
                    trained_rows=trained_rows, proxy_name=proxy, min_rows=min_rows)
        if preset.navigate == "lorentz" and factory.startswith("HNSW"):
            arrays, meta = read_arrays(path)
            try:
                stage._graph = graph.Graph.from_arrays(arrays, meta)
                stage._codes = Codes.from_arrays(arrays, stage._graph.levels.shape[0], dim)
            except ValueError as e:
                raise IndexCorruptError(f"candidate graph {path.name} is malformed: {e}") from None
            return stage
        flags = _IO_FLAGS if factory == "Flat" else 0  # mapped: a flat scan is refilled, never grown
        try:
            stage.index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise IndexCorruptError(f"candidate structure {path.name} is unreadable: "
                                    f"{str(e).strip().splitlines()[-1]}") from None
        d = padded_dim(dim, stage.proxy, preset.pad_to)
        if stage.index.d != d:
            raise IndexCorruptError(f"candidate structure {path.name} has dimension {stage.index.d}, "
                                    f"the index's candidate space {d}")
        return stage

    def _rebuild_index(self, spaces: Sequence[np.ndarray]) -> None:
        """A growable FAISS HNSW from the saved graph and proxy vectors recomputed from ``spaces``."""
        d = padded_dim(self.dim, self.proxy, self.preset.pad_to)
        index = _new_index(self.preset, self.proxy, d, self.factory)
        saved = self._current_graph()
        try:
            saved.into(index)
        except ValueError as e:
            raise IndexCorruptError(f"saved graph does not fit {self.factory}: {e}") from None
        storage = faiss.downcast_index(faiss.downcast_index(index).storage)
        for xb in self._proxy_chunks(spaces, d):
            storage.add(xb)
        if storage.ntotal != saved.levels.shape[0]:
            raise IndexCorruptError(f"graph has {saved.levels.shape[0]} nodes, the shards {storage.ntotal} rows")
        index.ntotal = storage.ntotal
        self.index, self._graph = index, None  # the graph now lives in the index


def _own_graph(preset: Preset, factory: str) -> bool:
    """True when hyperret builds this structure itself: an HNSW graph in the exact metric."""
    return preset.graph_metric == "lorentz" and preset.navigate == "lorentz" and factory.startswith("HNSW")


def _hnsw_m(factory: str) -> int:
    """The ``M`` of an ``HNSW<M>`` factory string."""
    digits = "".join(ch for ch in factory[4:] if ch.isdigit())
    return int(digits or 32)


def _efc(preset: Preset) -> int:
    return int(preset.build.get("efConstruction", 64))


def _train_lorentz_ivf(index: faiss.Index, sample: np.ndarray, curv: float, d: int) -> None:
    """Centroids on the hyperboloid (k-means in ambient coordinates, then normalised); codes trained.

    The quantizer holds ``[c_s, c_t]`` of points on the hyperboloid, so a query
    ``[q_s, -q_t]`` probes the lists in the order of its hyperbolic distance to them.
    """
    ivf = faiss.extract_index_ivf(index)
    dim = sample.shape[1]
    amb = pad(PROXIES["ip"].database(sample, curv, {}), d)  # shape: (s, d) = [x_s, x_t, 0...]
    km = faiss.Kmeans(d, ivf.nlist, niter=20, seed=1234, max_points_per_centroid=64)
    km.train(amb)
    c = km.centroids.astype(np.float64)
    space, time = c[:, :dim], c[:, dim]
    # An ambient mean is timelike inside the hyperboloid; rescale it onto <c, c>_L = -1/curv.
    lorentz_norm = np.sqrt(np.maximum(time**2 - np.sum(space**2, axis=1), 1e-30))
    space = space / (np.sqrt(curv) * lorentz_norm)[:, None]
    centroids = pad(PROXIES["ip"].database(space, curv, {}), d)
    ivf.quantizer.add(centroids)
    # Codes of residuals to the (hyperbolically) assigned centroid: the inner product stays
    # linear, <q, x> = <q, c> + <q, x - c>, and residual ranges are small, the time one too.
    ivf.by_residual = True
    assign = _lorentz_assign(ivf, amb, dim)
    faiss.downcast_index(index).sq.train(amb - centroids[assign])
    index.is_trained = True


def _add_lorentz_ivf(index: faiss.Index, xb: np.ndarray, time_col: int) -> None:
    """Add ``[x_s, x_t]`` rows ``(n, d)`` to the lists of their hyperbolically nearest centroids."""
    ivf = faiss.extract_index_ivf(index)
    assign = _lorentz_assign(ivf, xb, time_col)
    ivf.add_core(len(xb), faiss.swig_ptr(xb), None, faiss.swig_ptr(assign))


def _lorentz_assign(ivf, xb: np.ndarray, time_col: int) -> np.ndarray:
    """List of each ``[x_s, x_t]`` row: its nearest centroid in hyperbolic distance -> ``(n,)`` int64."""
    flipped = xb.copy()
    flipped[:, time_col] *= -1  # [x_s, -x_t] . [c_s, c_t] = <x, c>_L, largest = nearest
    _, assign = ivf.quantizer.search(flipped, 1)
    return np.ascontiguousarray(assign[:, 0])


def _new_index(preset: Preset, proxy: Proxy, d: int, factory: str) -> faiss.Index:
    """An empty FAISS structure over ``d``-dimensional proxy vectors, with the preset's build knobs."""
    metric = faiss.METRIC_INNER_PRODUCT if proxy.metric == "ip" else faiss.METRIC_L2
    index = faiss.index_factory(d, factory, metric)
    hnsw = _hnsw(index)
    if hnsw is not None and "efConstruction" in preset.build:
        hnsw.efConstruction = int(preset.build["efConstruction"])
    return index


def _preset_dim(preset: Preset, dim: int) -> int:
    """Proxy dimension of the preset's own space (what its factory string is sized for)."""
    return padded_dim(dim, PROXIES[preset.proxy], preset.pad_to)


def _hnsw(index: faiss.Index):
    idx = faiss.downcast_index(index)
    return getattr(idx, "hnsw", None)


def _factory_for(preset: Preset, n: int, d: int, min_rows: int | None = None) -> str:
    if n < max(1, preset.min_rows if min_rows is None else min_rows):
        return "Flat"
    nlist = preset.nlist or _auto_nlist(n)
    pq_m = d // max(1, preset.pq_sub)
    return preset.factory.format(nlist=nlist, d=d, pq_m=pq_m)


def _auto_nlist(n: int) -> int:
    """About ``4 sqrt(n)`` lists, a power of two, with at least 39 training points each."""
    target = max(1.0, min(4.0 * math.sqrt(n), n / 39.0))
    return max(1, 2 ** int(round(math.log2(target))))


def _merged_state(proxy: Proxy, spaces: Sequence[np.ndarray], curv: float) -> State:
    out: State = {}
    for s in spaces:
        for start in range(0, len(s), 262_144):
            for k, v in proxy.state_for(s[start : start + 262_144], curv).items():
                out[k] = max(out.get(k, 0.0), v)
    return out


def _sample_rows(spaces: Sequence[np.ndarray], limit: int, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` rows drawn without replacement across ``spaces`` -> ``(s, dim)``."""
    counts = np.array([len(s) for s in spaces], dtype=np.int64)
    n = int(counts.sum())
    take = np.sort(np.random.default_rng(seed).choice(n, size=min(n, limit), replace=False))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for i, s in enumerate(spaces):
        sel = take[(take >= offsets[i]) & (take < offsets[i + 1])] - offsets[i]
        if len(sel):
            parts.append(np.asarray(s[sel], dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, spaces[0].shape[1]), np.float32)
