"""Rendering for the command line: progress bars, JSON lines, tables of hits and rows, table files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def progress_bars(quiet: bool, unit: str = "rows"):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class Speed(ProgressColumn):
        def render(self, task: Any) -> Any:
            from rich.text import Text

            return Text(f"{task.speed:,.1f} {unit}/s" if task.speed else f"- {unit}/s")

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=quiet, transient=False,
    )


def dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=json_default, indent=None))


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def print_hits(hits: list[list[dict[str, Any]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    extra = sorted({key for qh in hits for h in qh for key in h} - {"id", "distance"})
    t = Table("query", "rank", "id", "distance", *extra)
    for col in t.columns:
        col.overflow = "fold"  # never cut a value short
    for i, qh in enumerate(hits):
        for r, h in enumerate(qh):
            t.add_row(str(i), str(r + 1), str(h["id"]), f"{h['distance']:.6g}", *(str(h.get(c, "")) for c in extra))
    console = Console()
    if not console.is_terminal:  # piped: no terminal width to respect
        console = Console(width=max(console.width, 240))
    console.print(t)


def write_table(table: Any, out: Path) -> None:
    from ..errors import InvalidInputError
    from ..storage.fsutil import atomic_write_bytes, atomic_write_table

    if out.suffix == ".parquet":
        atomic_write_table(out, table)
    elif out.suffix == ".json":
        atomic_write_bytes(out, json.dumps(table.to_pylist(), default=json_default).encode())
    else:
        raise InvalidInputError(f"--out must end in .parquet or .json, got {out.name}")


def print_rows(table: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*table.column_names)
    for rec in table.to_pylist():
        t.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in rec.values()))
    Console().print(t)


def images_text(s: dict[str, Any]) -> str:
    lines = [f"indexed {s['indexed']} images ({s['images_per_second']:.1f}/s), {s['already_indexed']} already "
             f"indexed, {s['skipped']} skipped; the index has {s['rows']} rows (version {s['version']}) at "
             f"{s['path']}"]
    if s["skipped"]:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(s["skipped_by_reason"].items()))
        lines.append(f"skipped ({why}); the list with reasons: {s['report']}")
    if s.get("bounds_note"):
        lines.append(f"bounds {s['bounds_note']}")
    return "\n".join(lines)
