"""``hyperret push`` and ``pull``: an index's versions to and from object storage (pyarrow filesystems)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, handle_errors
from .render import dump, progress_bars


@app.command("push")
@handle_errors
def push_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    uri: str = typer.Argument(..., help="Where to: s3://bucket/prefix, gs://..., abfs://..., hdfs://..., or a path."),
    force: bool = typer.Option(False, "--force", help="Push over another index, or a newer version, at URI."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Upload the index's committed version (the files the store lacks, then the manifest, last)."""
    from ..storage.objectstore import push

    with progress_bars(quiet or as_json, unit="bytes") as bars:
        task = bars.add_task("uploading", total=None)
        info = push(index, uri, force=force, progress=lambda n: bars.update(task, advance=n))
    if as_json:
        dump(info)
    else:
        typer.echo(f"pushed version {info['version']} ({info['rows']} rows) to {uri}: {info['files_sent']} files "
                   f"sent ({info['bytes_sent']:,} bytes), {info['files_present']} already there")


@app.command("pull")
@handle_errors
def pull_cmd(
    uri: str = typer.Argument(..., help="Where an index was pushed to (s3://bucket/prefix, ... or a path)."),
    index: Path = typer.Argument(..., help="Local copy to create or bring up to date."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Copy the latest pushed version into a local index (checked file by file; the manifest committed last)."""
    from ..storage.objectstore import pull

    with progress_bars(quiet or as_json, unit="bytes") as bars:
        task = bars.add_task("downloading", total=None)
        info = pull(uri, index, progress=lambda n: bars.update(task, advance=n))
    if as_json:
        dump(info)
    elif info["previous_version"] == info["version"]:
        typer.echo(f"{index} is already at version {info['version']}")
    else:
        typer.echo(f"pulled version {info['version']} ({info['rows']} rows) into {index}: {info['files_fetched']} "
                   f"files fetched ({info['bytes_fetched']:,} bytes), {info['files_present']} already there")
