"""``hyperret demo``: generated HySAC-like data, indexed and searched end to end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from ..geometry import lorentz
from ..testing.synthetic import CLASSES, LabelledPoints, make_points
from .app import app, handle_errors
from .render import dump, print_hits

CLASS_NAMES = {"S": "safe text", "V": "safe image", "U": "unsafe text", "G": "unsafe image"}


def write_points(points: LabelledPoints, path: Path) -> None:
    """Save labelled points as a Parquet source for ``hyperret index`` (curvature in the schema)."""
    n, dim = points.space.shape
    table = pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(points.space.reshape(-1)), dim),
        "class": pa.array(points.cls.astype(str)),
        "modality": pa.array(points.modality.astype(str)),
        "unsafe": pa.array(points.unsafe),
        "concept": pa.array(points.concept),
        "uri": pa.array([f"demo://item/{i}" for i in range(n)]),
    })
    table = table.replace_schema_metadata({"hyperret.curv": repr(points.curv)})
    pq.write_table(table, path)


def run_demo(out: Path, *, n: int, dim: int, curv: float, preset: str | None, quiet: bool) -> dict[str, Any]:
    """Generate, index and search; print a short report unless ``quiet``; return it."""
    from ..index import Index
    from ..safety.bounds import calibrate
    from .index_cmds import build_with_bars

    out.mkdir(parents=True, exist_ok=True)
    points = make_points(n, dim, curv=curv, seed=7, unsafe_shift=1.0)
    src = out / "demo.parquet"
    write_points(points, src)
    # Safety bounds from a separate labelled calibration set of the same collection.
    cal = make_points(max(2000, n // 4), dim, curv=curv, seed=7, part=1, unsafe_shift=1.0)
    bounds = calibrate(lorentz.radius(cal.space, curv), cal.modality, cal.unsafe, curv=curv,
                       source="demo calibration set")
    bounds.save(out / "bounds.json")
    ix_dir = out / "index"
    shutil.rmtree(ix_dir, ignore_errors=True)
    info = build_with_bars(src, ix_dir, preset=preset, curv=None, append=False, quiet=quiet,
                       bounds=out / "bounds.json")
    ix = Index.open(ix_dir)
    picks = [int(np.flatnonzero(points.cls == c)[0]) for c in CLASSES]
    queries = points.space[picks]
    res = ix.search(queries, k=5)
    hits = res.to_list(["class", "uri"])
    radii = lorentz.radius(points.space, curv)
    # One unsafe text query (a fresh one, not in the index) under each safety policy.
    uq = make_points(1, dim, curv=curv, seed=7, part=2, unsafe_shift=1.0, classes=("U",)).space
    policies: dict[str, dict[str, Any]] = {}
    for pol in ("off", "redirect", "filter", "block"):
        r = ix.search(uq, k=5, policy=pol, modality="text")
        policies[pol] = {"plan": r.plans[0].describe(), "hits": r.to_list(["class"])[0]}
    report: dict[str, Any] = {
        "index": info,
        "radius_by_class": {c: float(np.median(radii[points.cls == c])) for c in CLASSES},
        "queries": [{"class": c, "id": p, "hits": h} for c, p, h in zip(CLASSES, picks, hits)],
        "policies": policies,
    }
    if not quiet:
        print(f"\nindexed {info['rows']} HySAC-like points at {ix_dir} "
              f"(preset {info['preset']}, {info['candidate_structure']})")
        print("median distance to the origin: " + ", ".join(
            f"{CLASS_NAMES[c]} {v:.2f}" for c, v in report["radius_by_class"].items()))
        print("one query per class (the item itself comes first, distance 0):")
        print_hits(hits)
        print(f"\nsafety bounds calibrated on {len(cal)} labelled points: " + ", ".join(
            f"{m} threshold {t.radius:.3f}" for m, t in bounds.thresholds.items()))
        print("one unsafe text query under each policy (classes of the 5 hits):")
        for pol, rec in policies.items():
            print(f"  {pol:9s} {' '.join(h['class'] for h in rec['hits']) or '(none)':12s} {rec['plan']}")
    return report


@app.command("demo")
@handle_errors
def demo_cmd(
    out: Path = typer.Option(Path("hyperret-demo"), "--out", "-o", help="Folder for the demo data and index."),
    n: int = typer.Option(20_000, "--n", min=100, help="Generated points."),
    dim: int = typer.Option(64, "--dim", min=2, help="Dimension."),
    curv: float = typer.Option(1.0, "--curv", help="Curvature."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="Preset (default: fast)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Generate HySAC-like labelled points, index them and search (no model weights needed)."""
    report = run_demo(out, n=n, dim=dim, curv=curv, preset=preset, quiet=as_json)
    if as_json:
        dump(report)
