"""The query planner: classify each query, apply its safety policy, and say what happened.

Per query: the radius (distance to the origin), the class the bounds give it, the
policy in force, the query actually searched, and a :class:`QueryPlan` recording
it all. Policies (one per call, or one per query in a batch):

- ``off``: the query as it is; nothing is classified away.
- ``redirect``: a query is moved toward the origin (the safety traversal). Mode
  ``geodesic`` (default) moves the queries the bounds classify unsafe, and never
  touches a safe one; mode ``hysac`` is HySAC's own rule: it moves every query
  whose distance to the origin exceeds its target, whatever the classifier says
  (:mod:`hyperret.safety.traversal`), and needs only the ``up_95`` of the safe
  class being retrieved.
- ``filter``: unsafe hits are dropped in the rerank and the list is refilled to
  ``k`` from further candidates.
- ``block``: an unsafe query gets no results, with the reason.
- ``outward``: the reference's outward move (a query nearer the origin than the
  unsafe region is pushed out to it), for moderators who must find unsafe
  content; only with ``allow_unsafe=True``.

The planner decides; :meth:`hyperret.Index.search` runs the candidate stage and
the rerank for the plan.

Why ``geodesic`` is the default redirect mode: it moves the query along its own
geodesic to a radius taken from the bounds (the safe class of the modality being
retrieved), so it redirects every query the bounds call unsafe, whatever the
model's radius scale. HySAC's formula compares a radius with a Euclidean norm and
adds a ``+ 1`` offset tuned on the official model's radii; on other radius scales
it moves few or no queries (measured in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..geometry import lorentz
from .bounds import MODALITY_CLASSES, Bounds
from .classify import classify_radius, modality_array
from .traversal import HYSAC_ALPHA, geodesic_outward, geodesic_redirect, hysac_outward, hysac_redirect, hysac_target

POLICIES = ("off", "redirect", "filter", "block", "outward")
REDIRECT_MODES = ("geodesic", "hysac")
#: Default bounds statistic for the geodesic moves: the safe class's for ``redirect``,
#: the unsafe class's for ``outward`` (both of the modality being retrieved).
DEFAULT_TARGET = {"redirect": "low_05", "outward": "avg"}


@dataclass
class QueryPlan:
    """What the planner and the search did with one query."""

    query: int
    policy: str
    modality: str  # the query's modality
    target_modality: str  # the modality of the rows being retrieved
    radius: float  # the query's distance to the origin
    unsafe: bool | None = None  # the bounds' verdict on the query (None: no bounds)
    unsafe_score: float | None = None  # calibrated probability of unsafe
    query_class: str | None = None  # S/U (text) or V/G (image)
    action: str = "search"  # search | redirect | filter | block | outward
    moved: bool = False  # the query searched differs from the query given
    redirect_mode: str | None = None
    target_radius: float | None = None  # radius the move aimed for (geodesic) / HySAC's target norm
    searched_radius: float | None = None  # radius of the query actually searched
    candidates: int = 0  # candidate rows the rerank saw (last round)
    refills: int = 0  # extra candidate rounds the filter needed
    unsafe_skipped: int = 0  # unsafe rows the filter left out (a scan: all it skipped; a walk: its candidates)
    scanned: int = 0  # rows the exhaustive scan compared (0: the candidate structure answered)
    collapsed: int = 0  # near-duplicate hits dropped by search-time dedup
    returned: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for people: the verdict, then what was done."""
        verdict = "" if self.unsafe is None else (
            f"{'unsafe' if self.unsafe else 'safe'} {self.modality} query (class {self.query_class}, "
            f"p={self.unsafe_score:.3f}, radius {self.radius:.4g}); ")
        return f"query {self.query}: {verdict}policy {self.policy}: {self.reason}"


@dataclass
class Plan:
    """Plans for a batch: the queries to search, and which queries go which way."""

    queries: np.ndarray  # shape: (m, D) float32, after any moves
    plans: list[QueryPlan]
    plain: np.ndarray  # shape: (a,) int64, queries searched normally
    filtered: np.ndarray  # shape: (b,) int64, queries searched with unsafe rows left out
    blocked: np.ndarray  # shape: (c,) int64, queries given no results

    def subset(self, sel: np.ndarray) -> Plan:
        """The plan of queries ``sel: (s,)`` alone (their QueryPlans are shared, not copied)."""
        pos = np.full(len(self.plans), -1, dtype=np.int64)
        pos[sel] = np.arange(len(sel))

        def part(a: np.ndarray) -> np.ndarray:
            p = pos[a]
            return np.sort(p[p >= 0])

        return Plan(self.queries[sel], [self.plans[i] for i in sel], part(self.plain), part(self.filtered),
                    part(self.blocked))


def per_query(value: Any, m: int, name: str, allowed: Sequence[str]) -> list[str]:
    """A string for every query, or a list with one per query -> ``m`` validated strings."""
    vals = [value] * m if isinstance(value, str) else list(value)
    if len(vals) != m:
        raise InvalidInputError(f"{name}: got {len(vals)} entries for {m} queries")
    for v in vals:
        if v not in allowed:
            raise InvalidInputError(f"unknown {name} {v!r} (one of: {', '.join(allowed)})")
    return vals


def check_redirect_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`REDIRECT_MODES`, else an :class:`InvalidInputError`."""
    if mode not in REDIRECT_MODES:
        raise InvalidInputError(f"unknown redirect mode {mode!r} (one of: {', '.join(REDIRECT_MODES)})")
    return mode


def make_plan(
    queries: np.ndarray,
    *,
    curv: float,
    policy: str | Sequence[str],
    modality: str | Sequence[str],
    index_modality: str,
    bounds: Bounds | None,
    redirect_mode: str = "geodesic",
    allow_unsafe: bool = False,
    alpha: float = HYSAC_ALPHA,
    target: str | float | None = None,
) -> Plan:
    """Classify ``queries: (m, D)`` and decide, per query, what to search and how."""
    m = queries.shape[0]
    policies = per_query(policy, m, "policy", POLICIES)
    mod = modality_array(modality, m)
    check_redirect_mode(redirect_mode)
    if "outward" in policies and not allow_unsafe:
        raise InvalidInputError("policy 'outward' retrieves unsafe content on purpose: pass allow_unsafe=True "
                                "(--allow-unsafe)")
    needs = sorted({p for p in policies if p != "off"})
    if needs and bounds is None:
        raise InvalidInputError(f"policy {needs[0]!r} needs safety bounds: build the index with bounds "
                                "(--bounds) or pass bounds=")
    if bounds is not None:
        bounds.check_curv(curv)
    radius = lorentz.radius(queries, curv)
    target_mod = mod if index_modality == "mixed" else np.full(m, index_modality)
    out = queries.copy()
    plans = [QueryPlan(query=i, policy=policies[i], modality=str(mod[i]), target_modality=str(target_mod[i]),
                       radius=float(radius[i])) for i in range(m)]
    if bounds is not None:
        _classify(plans, radius, mod, bounds, redirect_mode)
    for i, p in enumerate(plans):
        if p.policy == "off":
            p.reason = "searched as given"
        elif bounds is not None:  # every other policy was refused above without bounds
            _apply(out, i, p, bounds, curv, redirect_mode, alpha, target)
    idx = np.arange(m, dtype=np.int64)
    acts = np.array([p.action for p in plans]) if m else np.zeros(0, dtype=str)
    return Plan(queries=out, plans=plans, plain=idx[(acts != "filter") & (acts != "block")],
                filtered=idx[acts == "filter"], blocked=idx[acts == "block"])


def _apply(out: np.ndarray, i: int, p: QueryPlan, bounds: Bounds, curv: float, redirect_mode: str, alpha: float,
           target: str | float | None) -> None:
    """Apply query ``i``'s policy (not ``off``): record the action, move it in ``out`` if the policy says so."""
    if p.policy == "filter":
        p.action = "filter"
        p.reason = "unsafe hits left out, list refilled to k"
    elif p.policy == "block":
        if p.unsafe:
            p.action = "block"
            p.reason = (f"blocked: radius {p.radius:.4g} >= {p.modality} threshold "
                        f"{bounds.threshold(p.modality).radius:.4g}")
        else:
            p.reason = "safe query, searched as given"
    elif p.policy == "redirect":
        if redirect_mode == "hysac" or p.unsafe:  # HySAC's rule is its own gate
            _move(out, i, p, bounds, curv, redirect_mode, alpha, target, inward=True)
        else:
            p.reason = "safe query, searched as given"
    elif p.policy == "outward":
        _move(out, i, p, bounds, curv, redirect_mode, alpha, target, inward=False)


def _classify(plans: list[QueryPlan], radius: np.ndarray, mod: np.ndarray, bounds: Bounds,
              redirect_mode: str) -> None:
    """Fill in each plan's verdict where the bounds can classify its modality.

    Queries whose policy depends on the verdict (``block``; ``redirect`` in the
    ``geodesic`` mode) need it: for those an unclassifiable modality is an error
    naming what the bounds lack. Others go without a verdict (``unsafe`` None).
    """
    for m in MODALITY_CLASSES:
        sel = np.flatnonzero(mod == m)
        if not len(sel):
            continue
        if not bounds.can_classify(m):
            for i in sel:
                p = plans[i]
                if p.policy == "block" or (p.policy == "redirect" and redirect_mode == "geodesic"):
                    what = "policy 'block'" if p.policy == "block" else "the geodesic redirect"
                    bounds.threshold(m, why=f"{what} on {m} queries")  # raises, naming what is missing
            continue
        unsafe, score = classify_radius(radius[sel], m, bounds)
        for j, i in enumerate(sel):
            p = plans[i]
            p.unsafe, p.unsafe_score = bool(unsafe[j]), float(score[j])
            p.query_class = MODALITY_CLASSES[m][int(p.unsafe)]


def _move(out: np.ndarray, i: int, p: QueryPlan, bounds: Bounds, curv: float, mode: str, alpha: float,
          target: str | float | None, *, inward: bool) -> None:
    """Move query ``i`` (in ``out``) toward the origin or away from it, recording it in ``p``."""
    safe_l, unsafe_l = MODALITY_CLASSES[p.target_modality]
    letter = safe_l if inward else unsafe_l
    q = out[i : i + 1]
    p.action = "redirect" if inward else "outward"
    p.redirect_mode = mode
    if mode == "hysac":
        b = bounds.stat(letter, "up_95", why=f"the hysac {'redirect' if inward else 'outward move'} to "
                                             f"{p.target_modality}")
        p.target_radius = hysac_target(b, curv, alpha)
        moved_q, moved = (hysac_redirect if inward else hysac_outward)(q, b, curv, alpha)
        rule = f"HySAC target {p.target_radius:.4g} from {letter} up_95 {b:.4g}"
    else:
        key = target if target is not None else DEFAULT_TARGET[p.action]
        r_t = float(key) if isinstance(key, (int, float)) else bounds.stat(
            letter, str(key), why=f"the geodesic {'redirect' if inward else 'outward move'} to {p.target_modality}")
        p.target_radius = r_t
        moved_q, moved = (geodesic_redirect if inward else geodesic_outward)(q, r_t, curv)
        rule = f"target radius {r_t:.4g} ({letter} {key})"
    p.moved = bool(moved[0])
    out[i] = moved_q[0]
    p.searched_radius = float(lorentz.radius(out[i], curv))
    if p.moved:
        where = "toward the origin" if inward else "outward"
        p.reason = f"moved {where} ({mode}): radius {p.radius:.4g} -> {p.searched_radius:.4g}, {rule}"
    else:
        side = "within" if inward else "beyond"
        p.reason = f"not moved: radius {p.radius:.4g} already {side} the {rule}"
