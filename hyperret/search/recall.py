"""Recall as a contract: an index measures its own recall@k and maps recall targets to search settings.

At a commit that grows the index past a factor of the rows it last measured (and
at compaction), :func:`measure` runs two query sets drawn from the index's own
rows against the exact answer of :func:`hyperret.search.scan.scan`:

- **held-out rows**: sampled rows are taken out of the answer (a skip mask: the
  graph walks through them but never returns them) and searched with their own
  vectors, so each query is a point of the collection's distribution that the
  index does not hold;
- **perturbed rows**: other sampled rows moved by tangent-space noise at the
  origin (5% of their norm), the nearby-but-not-stored queries real users send.

For each setting of the structure's knob (``ef`` of a graph, ``nprobe`` of an
IVF) it records recall@k of the whole pipeline (candidates, then the exact
rerank) on both sets, how often a stored row queried with its own vector comes
back first, the walk's distance evaluations per query, and the time per query of
that setting and of the exhaustive scan. :class:`Calibration` turns those into
``setting_for(recall)`` (the smallest setting whose *lower* recall of the two
sets reaches the target), ``predicted(setting)`` and the cost model
``prefer_scan(setting)``: the scan answers when it was measured faster.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..storage.shardset import ShardSet
from .rerank import rerank
from .scan import scan
from .segments import Segments

#: An index re-measures its recall when it has grown past this factor of the rows it measured.
GROWTH = 2.0
#: Below this many live rows an index is not measured: the scan answers every query.
MIN_ROWS = 256
#: Queries per set (held-out, perturbed).
QUERIES = 200
#: The knob ladders measured.
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: A recall target is met at the setting whose measured recall reaches it plus this margin.
MARGIN = 0.01
#: Tangent-space noise of the perturbed queries, relative to the row's norm there.
JITTER = 0.05


@dataclass(frozen=True)
class Calibration:
    """The recall curve an index measured on its own rows (what the manifest records)."""

    rows: int  # live rows when measured
    k: int
    knob: str | None  # "ef", "nprobe", or None (a flat scan: one point)
    settings: list[int] = field(default_factory=list)
    held_out: list[float] = field(default_factory=list)  # recall@k per setting
    perturbed: list[float] = field(default_factory=list)
    self_first: list[float] = field(default_factory=list)  # a stored row's own vector finds it first
    evals: list[float] = field(default_factory=list)  # distance evaluations per query (graphs)
    seconds: list[float] = field(default_factory=list)  # per query, in a batch of the queries
    scan_seconds: float = 0.0  # per query, the exhaustive scan in the same batch
    queries: int = 0

    # -------------------------------------------------------------- decisions
    def recall(self) -> list[float]:
        """The predicted recall@k per setting: the lower of the two query sets."""
        return [min(a, b) for a, b in zip(self.held_out, self.perturbed)]

    def setting_for(self, target: float) -> int | None:
        """The smallest measured setting whose predicted recall reaches ``target`` + :data:`MARGIN`; None if none did.

        The margin covers queries less like the collection's rows than the measured ones
        (fresh points of a concept's cloud fell 0.012 short of the prediction); a target
        above ``1 - MARGIN`` asks for the curve's best.
        """
        want = min(target + MARGIN, max(self.recall(), default=1.0)) if target < 1.0 else 1.0
        want = max(want, target)
        for s, r in zip(self.settings, self.recall()):
            if r >= want:
                return s
        return None

    def predicted(self, setting: int) -> float:
        """Predicted recall@k at ``setting`` (interpolated between measured settings, clamped)."""
        if not self.settings:
            return 1.0
        return float(np.interp(setting, self.settings, self.recall()))

    def prefer_scan(self, setting: int | None) -> bool:
        """True when the exhaustive scan was measured no slower than the structure at ``setting``."""
        if setting is None or not self.settings or self.scan_seconds <= 0:
            return setting is None
        return self.scan_seconds <= float(np.interp(setting, self.settings, self.seconds))

    def walk_evals(self, setting: int) -> float:
        """Distance evaluations per query at ``setting`` (0 when not a graph)."""
        return float(np.interp(setting, self.settings, self.evals)) if self.evals else 0.0

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Calibration | None:
        """A calibration read from a manifest; None if malformed (it is then measured again)."""
        if not isinstance(d, dict):
            return None
        try:
            c = cls(**d)
        except TypeError:
            return None
        lists = (c.settings, c.held_out, c.perturbed, c.self_first, c.evals, c.seconds)
        if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:
            return None
        if not all(isinstance(s, int) and 0 < s <= 1 << 20 for s in c.settings) or c.settings != sorted(c.settings):
            return None
        nums = [*c.held_out, *c.perturbed, *c.self_first, *c.evals, *c.seconds, c.scan_seconds]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in nums):
            return None
        if c.knob not in ("ef", "nprobe", None) or not isinstance(c.rows, int) or not isinstance(c.k, int):
            return None
        return c

    def summary(self) -> dict[str, Any]:
        """What ``info`` shows: the curve and the settings for 0.95 / 0.98 / 0.99."""
        return {"rows": self.rows, "k": self.k, "knob": self.knob, "queries": self.queries,
                "curve": [{"setting": s, "recall": round(r, 4), "held_out": round(h, 4), "perturbed": round(p, 4),
                           "self_first": round(f, 4), "ms_per_query": round(1e3 * t, 4)}
                          for s, r, h, p, f, t in zip(self.settings, self.recall(), self.held_out, self.perturbed,
                                                      self.self_first, self.seconds)],
                "scan_ms_per_query": round(1e3 * self.scan_seconds, 4),
                "settings_for": {str(t): self.setting_for(t) for t in (0.95, 0.98, 0.99)}}


def due(previous: Calibration | None, live_rows: int) -> bool:
    """True when an index of ``live_rows`` should (re-)measure its recall."""
    if live_rows < MIN_ROWS:
        return False
    return previous is None or live_rows >= GROWTH * previous.rows or live_rows * GROWTH <= previous.rows


def measure(stage: Segments, shards: ShardSet, curv: float, deleted: np.ndarray | None, k: int = 10,
            queries: int = QUERIES, seed: int = 0) -> Calibration:
    """Recall@k of ``stage`` (with the exact rerank) per knob setting, on the index's own rows."""
    n = shards.rows
    live = np.flatnonzero(~deleted) if deleted is not None else np.arange(n)
    rng = np.random.default_rng(seed)
    h = int(min(queries, max(1, len(live) // 8)))
    pick = rng.choice(live, size=min(len(live), 2 * h), replace=False)
    held, src = np.sort(pick[:h]), pick[h:]
    base = np.zeros(n, dtype=np.uint8)
    if deleted is not None:
        base[deleted] = 2
    skip_held = base.copy()
    skip_held[held] = 2
    q_held = shards.gather(held)
    q_pert = _perturbed(shards.gather(src), curv, rng)
    q_self = q_held[: max(1, h // 2)]
    self_rows = held[: len(q_self)]
    kc = stage.preset.candidates_for(k)

    t0 = time.perf_counter()
    truth_held = _exact(q_held, shards, curv, k, skip_held)
    truth_pert = _exact(q_pert, shards, curv, k, base if deleted is not None else None)
    scan_s = (time.perf_counter() - t0) / (len(q_held) + len(q_pert))

    knob = stage.knob
    ladder = _ladder(knob, stage)
    cal: dict[str, list] = {"settings": [], "held_out": [], "perturbed": [], "self_first": [], "evals": [],
                            "seconds": []}
    _ranked(stage, q_pert, shards, curv, k, kc, None, {}, None)  # warm: pages and caches, not timed
    for s in ladder:
        kw = {"ef": s} if knob == "ef" else {"nprobe": s} if knob == "nprobe" else {}
        kcs = max(k, min(kc, s)) if knob == "ef" else kc  # as the executor: the beam bounds the candidates
        ev = np.zeros(len(q_held), dtype=np.int64)
        t0 = time.perf_counter()
        got_h = _ranked(stage, q_held, shards, curv, k, kcs, skip_held, kw, ev)
        got_p = _ranked(stage, q_pert, shards, curv, k, kcs, base if deleted is not None else None, kw, None)
        secs = (time.perf_counter() - t0) / (len(q_held) + len(q_pert))
        first = _ranked(stage, q_self, shards, curv, 1, kcs, base if deleted is not None else None, kw, None)
        cal["settings"].append(int(s))
        cal["held_out"].append(_recall(got_h, truth_held))
        cal["perturbed"].append(_recall(got_p, truth_pert))
        cal["self_first"].append(float(np.mean(first[:, 0] == self_rows)))
        cal["evals"].append(float(ev.mean()) if knob == "ef" else 0.0)
        cal["seconds"].append(secs)
        if knob is not None and min(cal["held_out"][-1], cal["perturbed"][-1]) >= 0.999:
            break  # the rest of the ladder only costs time
    return Calibration(rows=int(len(live)), k=k, knob=knob, scan_seconds=scan_s, queries=len(q_held) + len(q_pert),
                       **cal)


def _ladder(knob: str | None, stage: Segments) -> tuple[int, ...]:
    if knob == "ef":
        return EF_LADDER
    if knob == "nprobe":
        return NPROBE_LADDER
    return (1,)


def _exact(q: np.ndarray, shards: ShardSet, curv: float, k: int, skip: np.ndarray | None) -> np.ndarray:
    cand = scan(q, shards, curv, min(shards.rows, 4 * k + 32), skip=skip)
    return rerank(q, cand, shards, curv, k, skip=skip)[0]


def _ranked(stage: Segments, q: np.ndarray, shards: ShardSet, curv: float, k: int, kc: int,
            skip: np.ndarray | None, kw: dict[str, int], evals: np.ndarray | None) -> np.ndarray:
    cand = stage.search(q, min(kc, shards.rows), shards, skip=skip, evals=evals, **kw)
    return rerank(q, cand, shards, curv, k, skip=skip)[0]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true rows (``-1`` excluded) that were found."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0


def _perturbed(x: np.ndarray, curv: float, rng: np.random.Generator) -> np.ndarray:
    """Rows ``x: (m, D)`` moved by tangent-space noise at the origin (``JITTER`` of their norm) -> float32."""
    from ..geometry import lorentz

    v = lorentz.log_map0(x.astype(np.float64), curv)
    scale = JITTER * np.linalg.norm(v, axis=1, keepdims=True) / math.sqrt(v.shape[1])
    v += scale * rng.standard_normal(v.shape)
    return lorentz.exp_map0(v, curv).astype(np.float32)
