"""A visual safety report: the radius histogram per class and a Poincaré-disk view.

Left panel: the distance to the origin per ViSU class (HySAC's Figure 1: safe text,
safe image, unsafe text and unsafe image as four peaks), on shared bins, with each
modality's decision threshold and each class's ``up_95`` when bounds are given.
Right panel: a sample of points in the Poincaré disk. A point's disk radius is its
exact Poincaré-ball norm ``tanh(sqrt(curv) * r / 2)`` (``r`` its geodesic radius), so
the radial order is faithful; its angle comes from a 2-D PCA of the unit directions
``x_s / |x_s|`` (a projection: angles are indicative only).

matplotlib is imported lazily, inside :func:`render_report` (Agg canvas, no global
pyplot state), so ``hyperret`` imports without it.

Units: radii are geodesic distances on the hyperboloid of curvature ``-curv``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from ..errors import DependencyError, InvalidInputError
from ..geometry import lorentz
from .bounds import MODALITY_CLASSES, Bounds

__all__ = ["CLASS_NAMES", "MAX_DISK_POINTS", "UNLABELLED", "render_report"]

#: Display name per class letter, in drawing order.
CLASS_NAMES = {"S": "safe text", "U": "unsafe text", "V": "safe image", "G": "unsafe image"}
#: The letter every other label is folded into.
UNLABELLED = "?"
#: At most this many sample points are drawn in the disk (a seeded subsample beyond).
MAX_DISK_POINTS = 2000
DPI = 110

_COLOURS = {"S": "#2ca02c", "U": "#d62728", "V": "#1f77b4", "G": "#ff7f0e", UNLABELLED: "#8c8c8c"}
_MODALITY_COLOURS = {"text": "#000000", "image": "#6a1b9a"}
_MODALITY_STYLES = {"text": "-", "image": "-."}


def render_report(
    radius: np.ndarray,
    letters: np.ndarray,
    out: str | Path,
    *,
    curv: float,
    bounds: Bounds | None = None,
    sample: np.ndarray | None = None,
    sample_letters: np.ndarray | None = None,
    title: str = "",
    bins: int = 80,
    seed: int = 0,
) -> dict[str, Any]:
    """Draw the report of radii ``(n,)`` with class ``letters`` ``(n,)`` to the PNG ``out``.

    ``letters`` are ViSU class letters (``S``/``U``/``V``/``G``); any other label is
    drawn as one grey ``unlabelled`` class (summary key ``"?"``). ``sample`` is an
    optional ``(s, D)`` array of space components for the Poincaré-disk panel, with
    optional ``sample_letters`` ``(s,)``; more than :data:`MAX_DISK_POINTS` rows are
    subsampled with ``seed``. ``bounds`` adds the thresholds and ``up_95`` lines.

    Returns ``{"out", "counts": {letter: n}, "radius_by_class": {letter: {"avg",
    "up_95", "low_05"}}, "thresholds": {modality: radius}, "sampled": s}`` (NumPy's
    default, linear, percentiles; ``sampled`` is the number of disk points drawn).
    """
    curv = validate.curvature(curv)
    r = np.asarray(radius, dtype=np.float64)
    lab = _letters(letters, "letters")
    if r.ndim != 1:
        raise InvalidInputError(f"radius must be one-dimensional, got shape {r.shape}")
    if r.size == 0:
        raise InvalidInputError("radius is empty: nothing to report")
    if len(lab) != len(r):
        raise InvalidInputError(f"radius has {len(r)} values but letters has {len(lab)}")
    if not np.isfinite(r).all():
        raise InvalidInputError("radius has non-finite values")
    if (r < 0).any():
        raise InvalidInputError("radius has negative values (a geodesic radius is >= 0)")
    if bins < 1:
        raise InvalidInputError(f"bins must be a positive integer, got {bins}")
    if bounds is not None:
        if not isinstance(bounds, Bounds):
            raise InvalidInputError(f"bounds must be a Bounds, got {type(bounds).__name__}")
        bounds.check_curv(curv)

    disk = _disk_points(sample, sample_letters, curv, seed) if sample is not None else None
    if disk is None and sample_letters is not None:
        raise InvalidInputError("sample_letters given without sample")

    present = [c for c in (*CLASS_NAMES, UNLABELLED) if (lab == c).any()]
    counts = {c: int((lab == c).sum()) for c in present}
    by_class: dict[str, dict[str, float]] = {}
    for c in present:
        rc = r[lab == c]
        lo, hi = np.percentile(rc, [5, 95])
        by_class[c] = {"avg": float(rc.mean()), "up_95": float(hi), "low_05": float(lo)}
    thresholds = {m: float(bounds.thresholds[m].radius) for m in MODALITY_CLASSES
                  if bounds is not None and m in bounds.thresholds}

    fig = _figure(r, lab, present, counts, bounds, thresholds, disk, curv, title, bins)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..storage.fsutil import atomic_write_bytes

    atomic_write_bytes(out, png.getvalue())
    return {"out": str(out), "counts": counts, "radius_by_class": by_class, "thresholds": thresholds,
            "sampled": 0 if disk is None else len(disk[0])}


# ------------------------------------------------------------------ input
def _letters(letters: Any, name: str) -> np.ndarray:
    """Class letters ``(n,)`` -> str array, anything but S/U/V/G folded into ``"?"``."""
    a = np.asarray(letters)
    if a.ndim != 1:
        raise InvalidInputError(f"{name} must be one-dimensional, got shape {a.shape}")
    a = a.astype(str)
    return np.where(np.isin(a, tuple(CLASS_NAMES)), a, UNLABELLED)


def _disk_points(sample: Any, sample_letters: Any, curv: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disk coordinates ``(s, 2)`` and letters ``(s,)`` of the (subsampled) sample."""
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise InvalidInputError(f"sample must be (s, D) space components with D >= 2, got shape {x.shape}")
    if sample_letters is None:
        lab = np.full(len(x), UNLABELLED)
    else:
        lab = _letters(sample_letters, "sample_letters")
        if len(lab) != len(x):
            raise InvalidInputError(f"sample has {len(x)} rows but sample_letters has {len(lab)}")
    if not np.isfinite(x).all():
        raise InvalidInputError("sample has non-finite values")
    if len(x) > MAX_DISK_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_DISK_POINTS, replace=False))
        x, lab = x[keep], lab[keep]
    return _poincare_2d(x, curv), lab


def _poincare_2d(x: np.ndarray, curv: float) -> np.ndarray:
    """Space components ``(s, D)`` -> unit-disk coordinates ``(s, 2)``.

    Norm: the exact Poincaré-ball norm ``tanh(sqrt(curv) r / 2)`` (ball scaled to
    radius 1). Angle: of the unit direction's projection on its top two principal
    components; a point at the origin (no direction) sits at the centre.
    """
    rho = np.tanh(np.sqrt(curv) * lorentz.radius(x, curv) / 2.0)
    n = np.linalg.norm(x, axis=1)
    ok = n > 0
    xy = np.zeros((len(x), 2))
    if ok.any():
        u = x[ok] / n[ok, None]
        uc = u - u.mean(axis=0)
        _, _, vt = np.linalg.svd(uc, full_matrices=False)
        p = uc @ vt[:2].T
        if p.shape[1] < 2:  # a single direction: rank-deficient, pad
            p = np.pad(p, ((0, 0), (0, 2 - p.shape[1])))
        ang = np.arctan2(p[:, 1], p[:, 0])
        xy[ok] = np.column_stack([np.cos(ang), np.sin(ang)])
    return xy * rho[:, None]


# ------------------------------------------------------------------ drawing
def _label(c: str, n: int) -> str:
    name = CLASS_NAMES.get(c, "unlabelled")
    return f"{c} {name} (n={n})" if c != UNLABELLED else f"unlabelled (n={n})"


def _figure(r, lab, present, counts, bounds, thresholds, disk, curv, title, bins):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DependencyError(f"the safety report needs matplotlib ({e}): pip install 'hyperret[report]'") from None

    has_disk = disk is not None
    fig = Figure(figsize=(13.0, 5.6) if has_disk else (8.0, 5.6))
    FigureCanvasAgg(fig)
    if has_disk:
        gs = fig.add_gridspec(1, 2, width_ratios=(1.45, 1.0))
        ax_h, ax_d = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    else:
        ax_h, ax_d = fig.add_subplot(1, 1, 1), None

    # Left: radius histogram per class, shared bins.
    edges = np.histogram_bin_edges(r, bins=bins)
    for c in present:
        rc = r[lab == c]
        ax_h.hist(rc, bins=edges, color=_COLOURS[c], alpha=0.45, histtype="stepfilled", label=_label(c, counts[c]))
        ax_h.hist(rc, bins=edges, color=_COLOURS[c], histtype="step", linewidth=1.0)
    if bounds is not None:
        for m, t in thresholds.items():
            ax_h.axvline(t, color=_MODALITY_COLOURS[m], linestyle=_MODALITY_STYLES[m], linewidth=1.8,
                         label=f"{m} threshold ({t:.3g})")
        drew_up = False
        for c in CLASS_NAMES:
            if c in bounds.classes and "up_95" in bounds.classes[c]:
                ax_h.axvline(bounds.classes[c]["up_95"], color=_COLOURS[c], linestyle="--", linewidth=1.1)
                drew_up = True
        handles, labels = ax_h.get_legend_handles_labels()
        if drew_up:
            handles.append(Line2D([], [], color="#555555", linestyle="--", linewidth=1.1))
            labels.append("class up_95 (bounds)")
    else:
        handles, labels = ax_h.get_legend_handles_labels()
    # Headroom above the peaks for the legend (two columns across the top).
    ax_h.set_ylim(0.0, ax_h.get_ylim()[1] * (1.2 + 0.08 * ((len(labels) + 1) // 2)))
    ax_h.legend(handles, labels, fontsize=8, loc="upper center", ncol=2, framealpha=0.9)
    ax_h.set_xlabel(f"geodesic distance to the origin (curvature -{curv:g})")
    ax_h.set_ylabel("items per bin")
    ax_h.set_title("distance to the origin per class", fontsize=11)
    ax_h.grid(alpha=0.25)

    # Right: Poincaré disk.
    if has_disk:
        xy, dl = disk
        t = np.linspace(0.0, 2.0 * np.pi, 361)
        ax_d.plot(np.cos(t), np.sin(t), color="black", linewidth=1.0)
        for c in (*CLASS_NAMES, UNLABELLED):
            sel = dl == c
            if sel.any():
                ax_d.scatter(xy[sel, 0], xy[sel, 1], s=4, color=_COLOURS[c], alpha=0.6, linewidths=0,
                             label=_label(c, int(sel.sum())))
        for m, tr in thresholds.items():
            rho = np.tanh(np.sqrt(curv) * tr / 2.0)
            ax_d.plot(rho * np.cos(t), rho * np.sin(t), color=_MODALITY_COLOURS[m], linewidth=1.4,
                      linestyle=_MODALITY_STYLES[m], label=f"{m} threshold")
        ax_d.set_xlim(-1.05, 1.05)
        ax_d.set_ylim(-1.05, 1.05)
        ax_d.set_aspect("equal")
        ax_d.set_axis_off()
        ax_d.set_title(f"Poincaré disk ({len(xy)} points; angle: PCA of directions)", fontsize=11)
        ax_d.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, markerscale=3,
                    frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def report_from(source: str | Path, out: str | Path, *, bounds: Bounds | str | Path | None = None,
                curv: float | None = None, sample: int = 2000, seed: int = 0) -> dict:
    """:func:`render_report` for an index directory or a labelled embedding file.

    An index's rows are lettered by a ground-truth ``unsafe`` metadata column when it
    has one, else by the labels stored with its bounds (the classifier's verdict),
    else left unlabelled; a labelled file's by its ``unsafe`` column.
    """
    from ..storage.manifest import MANIFEST_NAME
    from .bounds import as_bounds

    src = Path(source)
    override = as_bounds(bounds)
    b = override
    if src.is_dir() and (src / MANIFEST_NAME).exists():
        from ..index import Index

        ix = Index.open(src)
        snap = ix._snap
        b = override or ix.bounds
        c = ix.curv
        radius = np.concatenate([s.radius for s in snap.shards]).astype(np.float64) if snap.shards else np.zeros(0)
        mod = snap.row_modality()
        if "unsafe" in ix.manifest.metadata_columns:
            unsafe: np.ndarray | None = np.concatenate([np.asarray(s.table.column("unsafe").to_pylist(), dtype=bool)
                                     for s in snap.shards])
            how = "ground-truth 'unsafe' column"
        else:
            unsafe = snap.unsafe_rows(override)  # stored labels unless bounds were given
            how = "the classifier's labels" if unsafe is not None else "unlabelled"
        live = snap.live_rows()  # deleted rows are not in the snapshot
        radius, mod = radius[live], mod[live]
        unsafe = unsafe[live] if unsafe is not None else None
        rng = np.random.default_rng(seed)
        pick: Any = (np.sort(rng.choice(len(radius), size=min(sample, len(radius)), replace=False))
                     if len(radius) else [])
        space = np.stack([snap.shardset.row(int(live[g])) for g in pick]) if len(pick) else None
        title = f"{src.name}: {len(radius)} rows, classes from {how}"
    else:
        from .labelled import load_labelled

        data = load_labelled(src, curv, need_labels=False)
        c = data.curv
        radius = lorentz.radius(data.space, c)
        mod, unsafe = data.modality, data.unsafe
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(radius), size=min(sample, len(radius)), replace=False))
        space = data.space[pick]
        title = f"{src.name}: {len(radius)} rows"
    letters = _visu_letters(mod, unsafe)
    return render_report(radius, letters, out, curv=c, bounds=b, sample=space,
                         sample_letters=letters[pick] if space is not None else None, title=title, seed=seed)


def _visu_letters(modality: np.ndarray, unsafe: np.ndarray | None) -> np.ndarray:
    """ViSU letters from modality ``(n,)`` and unsafe ``(n,)`` (``?`` where unknown)."""
    if unsafe is None:
        return np.full(len(modality), "?")
    text = modality == "text"
    return np.where(unsafe, np.where(text, "U", "G"), np.where(text, "S", "V"))
