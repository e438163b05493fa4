"""``hyperret versions``, ``verify``, ``repair``, ``cleanup`` and ``compact``: an index's history and its health."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail, handle_errors
from .render import dump, progress_bars


@app.command("versions")
@handle_errors
def versions_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON lines, one per version."),
) -> None:
    """List an index's versions (works on an index whose latest manifest is damaged)."""
    from ..storage.versions import list_versions

    if not index.is_dir():
        fail(f"no hyperret index at {index}")
    versions = list_versions(index)
    if not versions:
        fail(f"no hyperret index at {index} (no manifest, no versions)")
    for v in versions:
        if as_json:
            dump(v.to_dict())
            continue
        state = "latest" if v.latest else ("ok" if v.intact else f"unusable: {v.problem}")
        typer.echo(f"v{v.version:<6d} {v.committed_at:30s} rows={v.rows:<10d} shards={v.shards:<4d} {state}")


@app.command("verify")
@handle_errors
def verify_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    version: int | None = typer.Option(None, "--version", min=0, help="Verify this version instead of the latest."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Recompute the checksum of every file the manifest names (shards, structure, deletions)."""
    from ..index import Index

    ix = Index.open(index, version=version)
    ix.verify()
    out = {"path": str(index), "version": ix.version, "files": len(ix.manifest.files()), "verified": True}
    if as_json:
        dump(out)
    else:
        typer.echo(f"verified: version {out['version']}, {out['files']} files")


@app.command("repair")
@handle_errors
def repair_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Restore a damaged or missing manifest from the newest version whose files pass their checksums."""
    from ..index import Index

    out = Index.repair(index)
    if as_json:
        dump(out)
    elif out["repaired"]:
        typer.echo(f"restored version {out['version']}")
    else:
        typer.echo(f"nothing to repair: version {out['version']} is intact")


@app.command("cleanup")
@handle_errors
def cleanup_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    keep: int = typer.Option(1, "--keep", min=1, help="Keep at least this many newest versions."),
    older_than: float | None = typer.Option(None, "--older-than", min=0.0,
                                            help="Only remove versions committed more than this many seconds ago."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Remove old versions and the files only they named."""
    from ..index import Index

    with Index.open(index, writable=True, keep_versions=None) as ix:
        out = ix.cleanup(older_than=older_than, keep=keep)
    if as_json:
        dump(out)
    else:
        typer.echo(f"removed {len(out['versions'])} versions, {out['files']} files, {out['bytes']} bytes")


@app.command("compact")
@handle_errors
def compact_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    cleanup: bool = typer.Option(False, "--cleanup", help="Then remove every older version and its files."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Rewrite the shards without deleted rows, merge small shards and the candidate segments into one."""
    from ..index import Index

    with Index.open(index, writable=True) as ix:
        with progress_bars(quiet or as_json) as bars:
            task = bars.add_task("compacting", total=len(ix))
            out = ix.compact(progress=lambda n: bars.update(task, advance=n))
        if cleanup:
            out["cleanup"] = ix.cleanup(keep=1)
    if as_json:
        dump(out)
    elif not out["compacted"]:
        typer.echo(f"nothing to compact: version {out['version']} has one segment, no deleted rows, no small shards")
    else:
        freed = f", {out['cleanup']['bytes']} bytes freed" if cleanup else ""
        typer.echo(f"compacted to version {out['version']}: {out['rows_removed']} deleted rows removed, "
                   f"shards {out['shards_before']} -> {out['shards_after']}, segments {out['segments_before']} -> "
                   f"{out['segments_after']}{freed}")
