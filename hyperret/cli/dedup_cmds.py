"""``hyperret dedup``: duplicate groups, written out and optionally applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .app import app, handle_errors
from .render import dump, progress_bars


@app.command("dedup")
@handle_errors
def dedup_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    radius: float | None = typer.Option(None, "--radius", "-r", min=0.0, help="Geodesic distance within which "
                                           "two rows are near copies."),
    auto: bool = typer.Option(False, "--auto", help="Pick the radius from the gap in the nearest-neighbour "
                              "distances (and say what was picked and why)."),
    unsafe_only: bool = typer.Option(False, "--unsafe-only", help="Only rows the index's bounds label unsafe."),
    out: Path = typer.Option(..., "--out", "-o", help="Groups table to write: .parquet, .csv or .json."),
    apply: bool = typer.Option(False, "--apply", help="Delete every non-representative in one new commit "
                               "(without it: a dry run)."),
    grouping: str = typer.Option("components", "--grouping", help="components (connected, may chain) or star "
                                 "(every member within the radius of its representative)."),
    keep: str = typer.Option("centre", "--keep", help="Representative: centre, lowest-id, min:COLUMN or "
                             "max:COLUMN (ties: lowest id)."),
    method: str = typer.Option("cells", "--method", help="cells (exact join, default) or stage (the index's "
                               "candidate stage)."),
    ray: bool = typer.Option(False, "--ray", help="Join the cells on Ray tasks (local Ray; the ray extra)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="A Ray cluster to join the cells on."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Find exact and near-duplicate groups; with --apply, keep one row of each group."""
    from ..dedup.run import check_out_path
    from ..errors import InvalidInputError
    from ..index import Index

    if auto and radius is not None:
        raise InvalidInputError("give --radius or --auto, not both")
    if not auto and radius is None:
        raise InvalidInputError("give --radius R or --auto")
    check_out_path(out)  # before the long run, not after it
    ix = Index.open(index, writable=apply)
    try:
        with progress_bars(quiet) as bars:
            tasks: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bars.add_task(phase, total=total)
                bars.update(tasks[phase], completed=done)

            res = ix.dedup(radius=radius, auto=auto, unsafe_only=unsafe_only, grouping=grouping, keep=keep,
                           method=method, progress=progress, ray=ray, ray_address=ray_address)
        res.write(out)  # the record of what is to be deleted exists before anything is
        if apply:
            ix.apply_dedup(res)
    finally:
        ix.close()
    s = res.summary
    s["out"] = str(out)
    if as_json:
        dump(s)
        return
    typer.echo(_dedup_text(s))


def _dedup_text(s: dict[str, Any]) -> str:
    lines = []
    if s.get("radius_source") == "auto":
        a = s["auto"]
        lines.append(f"radius {s['radius']:.4g} (auto): the widest gap in the nearest-neighbour distances of "
                     f"{a['sample']} sampled rows lies between {a['lower_edge']:.3g} and {a['upper_edge']:.3g} "
                     f"({a['ratio']:.1f}x; {a['below']} below, {a['above']} above)")
    else:
        lines.append(f"radius {s['radius']:.4g}")
    lines.append(f"{s['eligible_rows']} rows compared ({'unsafe only' if s['unsafe_only'] else 'all'}); "
                 f"{s['groups']} groups hold {s['rows_in_groups']} rows ({s['exact_duplicate_rows']} exact copies); "
                 f"largest group {s['largest_group']}, widest diameter {s['max_diameter']:.4g}"
                 + (f", {s['groups_wider_than_radius']} groups wider than the radius (chained; try --grouping star)"
                    if s["groups_wider_than_radius"] and s["grouping"] == "components" else ""))
    if s.get("applied"):
        lines.append(f"deleted {s['to_delete']} rows, keeping one per group: committed version {s['applied_version']}")
    else:
        lines.append(f"dry run: {s['to_delete']} rows would be deleted (--apply to delete them)")
    lines.append(f"groups written to {s['out']}")
    return "\n".join(lines)
