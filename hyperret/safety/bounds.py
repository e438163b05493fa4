"""Safety bounds: per-class radius statistics and per-modality decision thresholds.

HySAC puts safe content near the origin and unsafe content farther out, so the
geodesic distance to the origin (the *radius*) is the classifier's one feature.
A bounds file holds, per ViSU class letter (``S`` safe text, ``U`` unsafe text,
``V`` safe image, ``G`` unsafe image), the radius statistics in HySAC's own
format (``up_95``, ``low_05``, ``avg``; HySAC's reference code reads these keys
only), plus hyperret's per-modality thresholds: the radius above which an item is
called unsafe, the criterion that chose it, and a logistic calibration of the
probability of being unsafe given the radius. HySAC's official
``hysac_bounds.json`` (letters only) loads too; its thresholds are then derived
from the class statistics (see :func:`derived_threshold`). A minimal file loads as
well: HySAC's redirect needs only the safe classes' ``up_95`` (``S`` and ``V``);
whatever needs more (classifying a modality needs both of its classes, or a
threshold) fails with an error naming what is missing.

Units: radii are geodesic distances on the hyperboloid of curvature ``-curv``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, SourceError

CLASSES = ("S", "U", "V", "G")
MODALITIES = ("text", "image")
#: (safe letter, unsafe letter) per modality.
MODALITY_CLASSES = {"text": ("S", "U"), "image": ("V", "G")}
FORMAT_NAME = "hyperret.bounds"
FORMAT_VERSION = 1
CRITERIA = ("balanced", "safe-fpr", "unsafe-recall")


def _check_threshold(t: Threshold, where: str) -> None:
    """Refuse a rule that would label rows by a NaN comparison (every row safe) or a broken score."""
    for name in ("radius", "slope", "center"):
        v = getattr(t, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidInputError(f"{where}: {name} must be a finite number, got {v!r}")
    if t.radius < 0:
        raise InvalidInputError(f"{where}: radius must be >= 0, got {t.radius!r}")
    if not isinstance(t.criterion, str):
        raise InvalidInputError(f"{where}: criterion must be a string, got {t.criterion!r}")


@dataclass(frozen=True)
class Threshold:
    """The decision rule of one modality: ``unsafe = radius >= radius_threshold``.

    ``probability(r) = 1 / (1 + exp(-slope * (r - center)))`` is the calibrated
    probability of being unsafe (Platt scaling, both classes weighted equally).
    The fit figures (``balanced_accuracy`` ...) are on the calibration data.
    """

    radius: float
    criterion: str
    slope: float
    center: float
    balanced_accuracy: float | None = None
    tpr: float | None = None  # unsafe items called unsafe
    fpr: float | None = None  # safe items called unsafe
    n_safe: int = 0
    n_unsafe: int = 0

    def probability(self, r: np.ndarray) -> np.ndarray:
        """Probability of unsafe for radii ``r: (n,)`` -> ``(n,)`` float64."""
        z = self.slope * (np.asarray(r, dtype=np.float64) - self.center)
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = sigmoid(z), without overflow

    def is_unsafe(self, r: np.ndarray) -> np.ndarray:
        """``r >= radius`` for radii ``r: (n,)`` -> ``(n,)`` bool."""
        return np.asarray(r, dtype=np.float64) >= self.radius


@dataclass(frozen=True)
class Bounds:
    """Per-class radius statistics (HySAC's format) and per-modality thresholds."""

    classes: dict[str, dict[str, float]]
    thresholds: dict[str, Threshold]
    curv: float | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------- lookups
    def stat(self, letter: str, key: str, why: str = "") -> float:
        """One statistic, e.g. ``stat("V", "up_95")``; absent: an error naming it (and ``why`` it is needed)."""
        try:
            return float(self.classes[letter][key])
        except KeyError:
            raise InvalidInputError(f"{why}{': ' if why else ''}the bounds have no {key!r} for class {letter!r} "
                                    f"({self._holding()})") from None

    def can_classify(self, modality: str) -> bool:
        """Whether items of ``modality`` can be called safe or unsafe (a threshold, given or derived)."""
        return modality in self.thresholds

    def threshold(self, modality: str, why: str = "") -> Threshold:
        """The decision rule for ``modality`` (``text`` or ``image``); absent: an error naming what is missing."""
        if modality not in self.thresholds:
            if modality not in MODALITY_CLASSES:
                raise InvalidInputError(f"unknown modality {modality!r} (expected text or image)")
            safe, unsafe = MODALITY_CLASSES[modality]
            raise InvalidInputError(f"{why or f'classifying {modality}'} needs both classes {safe} and {unsafe} "
                                    f"(or a threshold for {modality}) in the bounds ({self._holding()})")
        return self.thresholds[modality]

    def _holding(self) -> str:
        parts = [f"{c}: {', '.join(self.classes[c])}" for c in CLASSES if c in self.classes]
        parts += [f"{m} threshold" for m in MODALITIES if m in self.thresholds]
        return f"{self.source or 'they'} {'hold ' + '; '.join(parts) if parts else 'hold nothing'}"

    def check_curv(self, curv: float) -> None:
        """Radii depend on the curvature: refuse bounds calibrated at another one."""
        if self.curv is not None and abs(self.curv - curv) > 1e-6 * max(self.curv, curv):
            raise InvalidInputError(f"bounds were calibrated at curvature {self.curv:g}, the index has {curv:g}")

    # ------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
        d.update({k: dict(v) for k, v in self.classes.items()})  # HySAC's layout: letters at the top
        d["thresholds"] = {m: asdict(t) for m, t in self.thresholds.items()}
        d["curv"] = self.curv
        d["source"] = self.source
        if self.extra:
            d["extra"] = self.extra
        return d

    def save(self, path: str | Path) -> None:
        """Write as JSON (readable by HySAC's reference code too: letters at the top level)."""
        from ..storage.fsutil import atomic_write_bytes

        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "") -> Bounds:
        """From hyperret's format or HySAC's (class letters with ``up_95``/``low_05``/``avg``)."""
        if not isinstance(d, Mapping):
            raise InvalidInputError(f"{source or 'bounds'}: expected a JSON object")
        if int(d.get("format_version", 0) or 0) > FORMAT_VERSION:
            raise InvalidInputError(f"{source}: bounds format version {d['format_version']} is newer than this "
                                    f"hyperret")
        classes: dict[str, dict[str, float]] = {}
        for letter in CLASSES:
            if letter in d:
                raw = d[letter]
                if not isinstance(raw, Mapping):
                    raise InvalidInputError(f"{source}: class {letter!r} must map statistic names to numbers")
                try:
                    classes[letter] = {str(k): float(v) for k, v in raw.items()}
                except (TypeError, ValueError):
                    raise InvalidInputError(f"{source}: class {letter!r} has a non-numeric statistic") from None
                bad = [k for k, v in classes[letter].items() if not math.isfinite(v)]
                if bad:
                    raise InvalidInputError(f"{source}: class {letter!r} statistic {bad[0]!r} is not finite")
        thresholds: dict[str, Threshold] = {}
        for m, t in (d.get("thresholds") or {}).items():
            if m not in MODALITIES:
                raise InvalidInputError(f"{source}: unknown modality {m!r} in thresholds")
            try:
                thresholds[m] = Threshold(**t)
            except TypeError as e:
                raise InvalidInputError(f"{source}: threshold for {m!r}: {e}") from None
            _check_threshold(thresholds[m], f"{source or 'bounds'}: threshold for {m!r}")
        for m, (safe, unsafe) in MODALITY_CLASSES.items():
            if m not in thresholds and safe in classes and unsafe in classes:
                thresholds[m] = derived_threshold(classes[safe], classes[unsafe])
        if not classes and not thresholds:
            raise InvalidInputError(f"{source or 'bounds'}: no class statistics (S, U, V, G) and no thresholds")
        curv = d.get("curv")
        if curv is not None:
            try:
                curv = float(curv)
            except (TypeError, ValueError):
                raise InvalidInputError(f"{source or 'bounds'}: curv {curv!r} is not a number") from None
            if not (math.isfinite(curv) and curv > 0):
                raise InvalidInputError(f"{source or 'bounds'}: curv must be positive and finite, got {curv}")
        return cls(classes=classes, thresholds=thresholds, curv=curv,
                   source=str(d.get("source") or source), extra=dict(d.get("extra") or {}))

    @classmethod
    def load(cls, path: str | Path) -> Bounds:
        """Read a bounds JSON file (hyperret's or HySAC's ``hysac_bounds.json``)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise SourceError(f"bounds file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise SourceError(f"{path} is not a readable JSON bounds file ({e})") from None
        return cls.from_dict(raw, source=str(path))


def as_bounds(b: Bounds | Mapping[str, Any] | str | Path | None) -> Bounds | None:
    """Accept a :class:`Bounds`, its dict form, or a path to a bounds file."""
    if b is None or isinstance(b, Bounds):
        return b
    if isinstance(b, Mapping):
        return Bounds.from_dict(b)
    if isinstance(b, (str, Path)):
        return Bounds.load(b)
    raise InvalidInputError(f"bounds must be a Bounds, a dict or a path, got {type(b).__name__}")


# ------------------------------------------------------------- statistics
def class_stats(r: np.ndarray) -> dict[str, float]:
    """Radius statistics of one class ``r: (n,)`` in HySAC's keys plus a few more.

    Percentiles are NumPy's default (linear interpolation).
    """
    r = np.asarray(r, dtype=np.float64)
    q = np.percentile(r, [1, 5, 50, 95, 99])
    return {
        "up_95": float(q[3]), "low_05": float(q[1]), "avg": float(r.mean()),
        "std": float(r.std()), "median": float(q[2]), "up_99": float(q[4]), "low_01": float(q[0]),
        "min": float(r.min()), "max": float(r.max()), "count": float(len(r)),
    }


def derived_threshold(safe: Mapping[str, float], unsafe: Mapping[str, float]) -> Threshold:
    """A threshold from class statistics alone (HySAC's official file has no thresholds).

    Criterion ``midpoint``: halfway between the safe class's ``up_95`` and the unsafe
    class's ``low_05`` when they are in that order, else halfway between the class
    averages. The logistic passes through 5% at the lower and 95% at the upper of
    the two points it used.
    """
    lo, hi = safe.get("up_95"), unsafe.get("low_05")
    rule = "midpoint of safe up_95 and unsafe low_05"
    if lo is None or hi is None or not hi > lo:
        lo, hi = safe.get("avg"), unsafe.get("avg")
        rule = "midpoint of the safe and unsafe averages"
    if lo is None or hi is None or not hi > lo:
        raise InvalidInputError("bounds: the unsafe class is not farther from the origin than the safe one")
    center = 0.5 * (lo + hi)
    slope = 2.0 * math.log(19.0) / (hi - lo)
    return Threshold(radius=center, criterion=f"derived: {rule}", slope=slope, center=center)


def choose_threshold(r_safe: np.ndarray, r_unsafe: np.ndarray, criterion: str = "balanced") -> Threshold:
    """Pick the radius threshold of one modality from labelled radii by ``criterion``.

    - ``balanced``: maximise balanced accuracy (mean of the per-class accuracies);
      among equally good thresholds, the middle of the widest gap between radii.
    - ``safe-fpr:X``: the smallest threshold that flags at most a fraction ``X`` of
      the safe items (then as many unsafe as possible).
    - ``unsafe-recall:X``: the largest threshold that flags at least a fraction ``X``
      of the unsafe items.
    """
    r0 = np.sort(np.asarray(r_safe, dtype=np.float64))
    r1 = np.sort(np.asarray(r_unsafe, dtype=np.float64))
    if not len(r0) or not len(r1):
        raise InvalidInputError("calibration needs both safe and unsafe items of the modality")
    name, _, arg = criterion.partition(":")
    if name == "balanced":
        t = _balanced_threshold(r0, r1)
    elif name in ("safe-fpr", "unsafe-recall"):
        try:
            x = float(arg)
        except ValueError:
            raise InvalidInputError(f"criterion {criterion!r}: give a fraction, e.g. {name}:0.01") from None
        if not 0.0 <= x <= 1.0:
            raise InvalidInputError(f"criterion {criterion!r}: the fraction must be in [0, 1]")
        if name == "safe-fpr":
            allowed = int(math.floor(x * len(r0)))  # safe items that may be flagged
            t = float(np.nextafter(r0[len(r0) - 1 - allowed], np.inf)) if allowed < len(r0) else float(r0[0])
        else:
            need = int(math.ceil(x * len(r1)))  # unsafe items that must be flagged
            t = float(r1[len(r1) - need]) if need > 0 else float(np.nextafter(r1[-1], np.inf))
    else:
        raise InvalidInputError(f"unknown criterion {criterion!r} (one of: balanced, safe-fpr:X, unsafe-recall:X)")
    slope, center = _platt(r0, r1)
    tpr = float(np.mean(r1 >= t))
    fpr = float(np.mean(r0 >= t))
    return Threshold(radius=float(t), criterion=criterion, slope=slope, center=center,
                     balanced_accuracy=0.5 * (tpr + 1.0 - fpr), tpr=tpr, fpr=fpr,
                     n_safe=int(len(r0)), n_unsafe=int(len(r1)))


def _balanced_threshold(r0: np.ndarray, r1: np.ndarray) -> float:
    """Threshold maximising balanced accuracy over sorted safe ``r0`` and unsafe ``r1`` radii."""
    allr = np.unique(np.concatenate([r0, r1]))
    # Candidate thresholds: every distinct radius (flag it and everything above) plus one
    # past the end; accuracy is piecewise constant between them.
    cand = np.append(allr, np.nextafter(allr[-1], np.inf))
    tpr = 1.0 - np.searchsorted(r1, cand, side="left") / len(r1)
    tnr = np.searchsorted(r0, cand, side="left") / len(r0)
    bal = 0.5 * (tpr + tnr)
    best = np.flatnonzero(bal >= bal.max() - 1e-12)
    # Each candidate t flags [t, inf); the same flags hold for any threshold in
    # (previous radius, t]. Take the middle of the widest such interval.
    lo = np.where(best > 0, allr[np.maximum(best - 1, 0)], allr[0] - 1.0)
    hi = cand[best]
    i = int(np.argmax(hi - lo))
    return float(0.5 * (lo[i] + hi[i])) if best[i] > 0 else float(hi[i])


def _platt(r0: np.ndarray, r1: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Logistic ``p = sigmoid(a (r - center))`` fitted to radii, both classes weighted equally.

    Platt's smoothed targets (``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``) keep the fit
    finite when the classes are separable. Newton's method on ``(a, b)`` with
    ``p = sigmoid(a r + b)``; returns ``(a, center = -b / a)``.
    """
    r = np.concatenate([r0, r1])
    y = np.concatenate([np.full(len(r0), 1.0 / (len(r0) + 2)), np.full(len(r1), (len(r1) + 1.0) / (len(r1) + 2))])
    w = np.concatenate([np.full(len(r0), 0.5 / len(r0)), np.full(len(r1), 0.5 / len(r1))])
    mu, sd = r.mean(), r.std() or 1.0
    z = (r - mu) / sd  # standardised: Newton is well conditioned
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (a * z + b)))
        g = np.array([np.sum(w * (p - y) * z), np.sum(w * (p - y))])
        s = w * p * (1.0 - p) + 1e-12
        h = np.array([[np.sum(s * z * z), np.sum(s * z)], [np.sum(s * z), np.sum(s)]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    slope = a / sd
    center = mu - b * sd / a if a != 0 else mu
    return float(slope), float(center)


def calibrate(
    radius: np.ndarray,
    modality: np.ndarray,
    unsafe: np.ndarray,
    *,
    curv: float,
    criterion: str = "balanced",
    source: str = "",
) -> Bounds:
    """Bounds from labelled radii ``(n,)``, modality ``(n,)`` (text|image) and unsafe ``(n,)`` bool.

    Class statistics for every class present; a threshold for every modality that
    has both safe and unsafe items (chosen by ``criterion``, see :func:`choose_threshold`).
    """
    r = np.asarray(radius, dtype=np.float64)
    mod = np.asarray(modality).astype(str)
    uns = np.asarray(unsafe).astype(bool)
    if not (len(r) == len(mod) == len(uns)):
        raise InvalidInputError("radius, modality and unsafe must have the same length")
    bad = sorted(set(np.unique(mod)) - set(MODALITIES))
    if bad:
        raise InvalidInputError(f"unknown modality {bad[0]!r} (expected text or image)")
    if not np.isfinite(r).all():
        raise InvalidInputError("calibration radii must be finite")
    classes: dict[str, dict[str, float]] = {}
    thresholds: dict[str, Threshold] = {}
    for m, (safe_l, unsafe_l) in MODALITY_CLASSES.items():
        sel = mod == m
        for letter, want in ((safe_l, False), (unsafe_l, True)):
            rs = r[sel & (uns == want)]
            if len(rs):
                classes[letter] = class_stats(rs)
        if (sel & ~uns).any() and (sel & uns).any():
            thresholds[m] = choose_threshold(r[sel & ~uns], r[sel & uns], criterion)
    if not thresholds:
        raise InvalidInputError("calibration needs safe and unsafe items of at least one modality")
    return Bounds(classes=classes, thresholds=thresholds, curv=float(curv), source=source)
