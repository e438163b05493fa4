"""``hyperret export``: an index's live rows out as a Parquet table that ``hyperret index`` reads back."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, handle_errors
from .render import dump, progress_bars


@app.command("export")
@handle_errors
def export_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Parquet file to write (id, embedding, metadata)."),
    columns: str | None = typer.Option(None, "--columns", help="Comma-separated metadata columns (default: all)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write an index's live rows (ids, vectors, metadata) to one Parquet file, re-indexable as it is."""
    from ..index import Index

    ix = Index.open(index)
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    with progress_bars(quiet or as_json) as bars:
        task = bars.add_task("exporting", total=len(ix))
        info = ix.export(out, force=force, columns=cols, progress=lambda n: bars.update(task, advance=n))
    if as_json:
        dump(info)
    else:
        typer.echo(f"exported {info['rows']} rows ({', '.join(info['columns'])}) to {info['path']}")
