"""The ``hyperret`` command line: index, search, info, presets, demo.

Every command calls the public library; errors a user can cause print one line
on stderr and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer

app = typer.Typer(
    name="hyperret",
    help="Safety-aware hyperbolic vector retrieval for HySAC embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USAGE = 2


def _fail(message: str) -> None:
    typer.echo(f"hyperret: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _errors(fn: F) -> F:
    """Turn hyperret's errors (and OS errors) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import HyperretError

        try:
            return fn(*args, **kwargs)
        except HyperretError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")
        except KeyboardInterrupt:
            _fail("interrupted; nothing was committed by the interrupted step")
        except typer.Exit:
            raise
        except Exception as e:  # a bug, not bad input: say so in one line, trace on request
            if os.environ.get("HYPERRET_DEBUG"):
                raise
            typer.echo(f"hyperret: internal error: {type(e).__name__}: {e} (set HYPERRET_DEBUG=1 for a trace)",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _progress(quiet: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.speed} rows/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=quiet, transient=False,
    )


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=_json_default, indent=None))


def _json_default(o: Any) -> Any:
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


# ---------------------------------------------------------------- index
@app.command("index")
@_errors
def index_cmd(
    source: Path = typer.Argument(..., help="Parquet or Arrow IPC file with an 'embedding' column."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to create (or extend with --append)."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset name or TOML path (default: fast)."),
    curv: Optional[float] = typer.Option(None, "--curv", help="Curvature c (> 0); else the schema key hyperret.curv."),
    append: bool = typer.Option(False, "--append", help="Add to the existing index at --out in one new commit."),
    bounds: Optional[Path] = typer.Option(None, "--bounds", help="Safety bounds JSON: store every row's "
                                          "unsafe_score and unsafe_label, enable the safety policies."),
    modality: Optional[str] = typer.Option(None, "--modality", help="image, text or mixed (default: from the "
                                           "source's 'modality' column, else image)."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help="Rows read per batch."),
    as_json: bool = typer.Option(False, "--json", help="Print the resulting index summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Index precomputed embeddings (space components of Lorentz points)."""
    info = build_index(source, out, preset=preset, curv=curv, append=append, batch_rows=batch_rows, quiet=quiet,
                       bounds=bounds, modality=modality)
    if as_json:
        _dump(info)
    else:
        typer.echo(f"indexed {info['rows']} rows (dim {info['dim']}, curv {info['curv']:g}, "
                   f"preset {info['preset']}, version {info['version']}) at {info['path']}")


def build_index(source: Path, out: Path, *, preset: str | None, curv: float | None, append: bool,
                batch_rows: int = 65_536, quiet: bool = True, bounds: Path | None = None,
                modality: str | None = None) -> dict[str, Any]:
    """Read ``source`` and build (or append to) the index at ``out``; all or nothing."""
    from .errors import IndexExistsError, InvalidInputError
    from .index import Index
    from .ingest import Source
    from .safety.bounds import Bounds

    src = Source(source, batch_rows=batch_rows)
    if append and (bounds is not None or modality is not None):
        raise InvalidInputError("--bounds and --modality are fixed when an index is created; not with --append")
    b = Bounds.load(bounds) if bounds is not None else None
    if modality is None and not append:
        modality = _source_modality(src)
    src_curv = src.curv
    if curv is not None and src_curv is not None and abs(curv - src_curv) > 1e-9 * max(curv, src_curv):
        raise InvalidInputError(f"--curv {curv:g} contradicts the source's hyperret.curv {src_curv:g}")
    c = curv if curv is not None else src_curv
    if append:
        ix = Index.open(out, writable=True)
        if c is not None and abs(c - ix.curv) > 1e-9 * ix.curv:
            ix.close()
            raise InvalidInputError(f"source curvature {c:g} differs from the index's {ix.curv:g}")
        target = out
    else:
        if c is None:
            raise InvalidInputError("curvature unknown: pass --curv or set the schema metadata key hyperret.curv")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise IndexExistsError(f"{out} already exists (use --append to add to an index)")
        target = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        ix = None
    try:
        with _progress(quiet) as bars:
            task = bars.add_task("reading", total=src.rows)
            start = 0
            for batch in src.batches():
                if ix is None:
                    ix = Index.create(target, dim=batch.vectors.shape[1], curv=c, preset=preset,
                                      producer={"source": str(source), "vectors": "precomputed"},
                                      modality=modality or "image", bounds=b)
                try:
                    ix.add(batch.vectors, ids=batch.ids, metadata=batch.metadata)
                except InvalidInputError as e:
                    raise type(e)(f"{source} rows {start}..{start + len(batch.vectors) - 1}: {e}") from None
                start += len(batch.vectors)
                bars.update(task, advance=len(batch.vectors))
            if ix is None or (start == 0 and not append):
                raise InvalidInputError(f"{source} has no rows")
            build = bars.add_task("candidate structure", total=ix.pending + (len(ix) if append else 0))
            ix.commit(progress=lambda n: bars.update(build, advance=n))
        info = ix.info()
        ix.close()
        ix = None
        if not append:
            if out.exists():
                out.rmdir()  # an empty directory the user made: checked above
            os.rename(target, out)
            info["path"] = str(out)
        return info
    except BaseException:
        if ix is not None:
            ix.close()  # drops uncommitted rows: an appended index keeps its last snapshot
        if not append:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _source_modality(src: Any) -> str:
    """``image``/``text`` when the source's ``modality`` column has one value, ``mixed`` for both."""
    vals = src.distinct("modality")
    if vals is None:
        return "mixed"
    vals = {v for v in vals if v is not None}
    return "image" if not vals else (vals.pop() if len(vals) == 1 else "mixed")


# --------------------------------------------------------------- search
@app.command("search")
@_errors
def search_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    vectors: Path = typer.Option(..., "--vectors", help=".npy file of query space components, (m, dim) or (dim,)."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="Results per query."),
    candidates: Optional[int] = typer.Option(None, "--candidates", min=1, help="Rows the rerank sees per query."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated metadata columns to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per query, one per line."),
) -> None:
    """Search an index with query vectors."""
    import numpy as np

    from .errors import SourceError
    from .index import Index

    try:
        q = np.load(vectors, allow_pickle=False)
    except FileNotFoundError:
        raise SourceError(f"query file {vectors} does not exist") from None
    except (ValueError, OSError) as e:
        raise SourceError(f"{vectors} is not a readable .npy file ({e})") from None
    ix = Index.open(index)
    res = ix.search(q, k=k, candidates=candidates)
    cols = [c.strip() for c in columns.split(",")] if columns else None
    hits = res.to_list(cols)
    if as_json:
        for i, h in enumerate(hits):
            _dump({"query": i, "exact": res.exact, "hits": h})
        return
    _print_hits(hits)


def _print_hits(hits: list[list[dict[str, Any]]]) -> None:
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


# ----------------------------------------------------------------- info
@app.command("info")
@_errors
def info_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every file's checksum."),
) -> None:
    """Describe an index (and optionally verify its files)."""
    from .index import Index

    ix = Index.open(index)
    info = ix.info()
    if verify:
        ix.verify()
        info["verified"] = True
    if as_json:
        _dump(info)
        return
    for key, val in info.items():
        typer.echo(f"{key:20s} {val}")


@app.command("presets")
@_errors
def presets_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the index presets."""
    from .presets import list_presets, load_preset

    presets = {name: load_preset(name).to_dict() for name in list_presets()}
    if as_json:
        _dump(presets)
        return
    for name, p in presets.items():
        typer.echo(f"{name:10s} {p['description']}")


# ----------------------------------------------------------------- demo
@app.command("demo")
@_errors
def demo_cmd(
    out: Path = typer.Option(Path("hyperret-demo"), "--out", "-o", help="Folder for the demo data and index."),
    n: int = typer.Option(20_000, "--n", min=100, help="Generated points."),
    dim: int = typer.Option(64, "--dim", min=2, help="Dimension."),
    curv: float = typer.Option(1.0, "--curv", help="Curvature."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset (default: fast)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Generate HySAC-like labelled points, index them and search (no model weights needed)."""
    from .demo import run_demo

    report = run_demo(out, n=n, dim=dim, curv=curv, preset=preset, quiet=as_json)
    if as_json:
        _dump(report)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
