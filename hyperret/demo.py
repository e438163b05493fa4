"""The built-in demo: generated HySAC-like data, indexed and searched end to end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import lorentz
from .synthetic import CLASSES, LabelledPoints, make_points

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
    from .cli import _print_hits, build_index
    from .index import Index

    out.mkdir(parents=True, exist_ok=True)
    points = make_points(n, dim, curv=curv, seed=7)
    src = out / "demo.parquet"
    write_points(points, src)
    ix_dir = out / "index"
    shutil.rmtree(ix_dir, ignore_errors=True)
    info = build_index(src, ix_dir, preset=preset, curv=None, append=False, quiet=quiet)
    ix = Index.open(ix_dir)
    picks = [int(np.flatnonzero(points.cls == c)[0]) for c in CLASSES]
    queries = points.space[picks]
    res = ix.search(queries, k=5)
    hits = res.to_list(["class", "uri"])
    radii = lorentz.radius(points.space, curv)
    report = {
        "index": info,
        "radius_by_class": {c: float(np.median(radii[points.cls == c])) for c in CLASSES},
        "queries": [{"class": c, "id": p, "hits": h} for c, p, h in zip(CLASSES, picks, hits)],
    }
    if not quiet:
        print(f"\nindexed {info['rows']} HySAC-like points at {ix_dir} "
              f"(preset {info['preset']}, {info['candidate_structure']})")
        print("median distance to the origin: " + ", ".join(
            f"{CLASS_NAMES[c]} {v:.2f}" for c, v in report["radius_by_class"].items()))
        print("one query per class (the item itself comes first, distance 0):")
        _print_hits(hits)
    return report
