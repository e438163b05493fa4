"""The ``hyperret`` command line: index, search, calibrate, classify, explain, eval, report, info, presets, demo.

Every command calls the public library; errors a user can cause print one line
on stderr and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"hyperret {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print hyperret's version and exit."),
) -> None:
    """Safety-aware hyperbolic vector retrieval for HySAC embeddings."""


def _fail(message: str) -> NoReturn:
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


def _progress(quiet: bool, unit: str = "rows"):
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
    source: Path = typer.Argument(..., help="Parquet or Arrow IPC file with an 'embedding' column; or, with "
                                  "--model, a folder of images (recursive) or a text file of image paths."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to create (or extend with --append; an "
                             "image run resumes an existing one)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Embed images with this checkpoint: a path, "
                                        "a folder or a Hugging Face repo id (aimagelab/hysac)."),
    arch: str | None = typer.Option(None, "--arch", help="open_clip architecture name or config JSON "
                                       "(default ViT-L-14-quickgelu)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Decoding processes (default: cores - 1, "
                                          "at most 8; 0 decodes in the main process)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on a GPU, fp32 on the CPU), "
                                  "fp32, fp16 or bf16."),
    commit_every: int = typer.Option(4096, "--commit-every", min=1, help="Commit after this many new images."),
    commit_seconds: float = typer.Option(300.0, "--commit-seconds", min=0.0, help="...or after this many seconds."),
    max_pixels: int = typer.Option(178_956_970, "--max-pixels", min=1, help="Skip images larger than this "
                                   "(width x height): decompression bombs."),
    report: Path | None = typer.Option(None, "--report", help="JSON-lines list of skipped files (default: "
                                          "OUT/reports/index-TIME.jsonl)."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="Preset name or TOML path (default: fast)."),
    curv: float | None = typer.Option(None, "--curv", help="Curvature c (> 0); else the schema key hyperret.curv."),
    append: bool = typer.Option(False, "--append", help="Add to the existing index at --out in one new commit."),
    bounds: Path | None = typer.Option(None, "--bounds", help="Safety bounds JSON: store every row's "
                                          "unsafe_score and unsafe_label, enable the safety policies "
                                          "(images: default hysac_bounds.json beside the checkpoint)."),
    modality: str | None = typer.Option(None, "--modality", help="image, text or mixed (default: from the "
                                           "source's 'modality' column, else image)."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help="Rows read per batch."),
    as_json: bool = typer.Option(False, "--json", help="Print the resulting index summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Index images with a model (--model), or precomputed embeddings (space components of Lorentz points)."""
    if model is not None or source.is_dir():
        if model is None:
            _fail(f"{source} is a folder: indexing images needs --model (a HySAC or open_clip checkpoint)")
        if append or curv is not None or modality is not None:
            _fail("--append, --curv and --modality are for precomputed embeddings; an image run resumes by itself")
        summary = index_images_cmd(source, out, model=model, arch=arch, device=device, batch_size=batch_size,
                                   workers=workers, precision=precision, commit_every=commit_every,
                                   commit_seconds=commit_seconds, max_pixels=max_pixels, report=report,
                                   preset=preset, bounds=bounds, quiet=quiet or as_json)
        if as_json:
            _dump(summary)
        else:
            typer.echo(_images_text(summary))
        return
    info = build_index(source, out, preset=preset, curv=curv, append=append, batch_rows=batch_rows, quiet=quiet,
                       bounds=bounds, modality=modality)
    if as_json:
        _dump(info)
    else:
        typer.echo(f"indexed {info['rows']} rows (dim {info['dim']}, curv {info['curv']:g}, "
                   f"preset {info['preset']}, version {info['version']}) at {info['path']}")


def index_images_cmd(source: Path, out: Path, *, model: str, arch: str | None, device: str, batch_size: int,
                     workers: int | None, precision: str, commit_every: int, commit_seconds: float,
                     max_pixels: int, report: Path | None, preset: str | None, bounds: Path | None,
                     quiet: bool) -> dict[str, Any]:
    """Embed the images under ``source`` into the index at ``out`` (created, or resumed)."""
    from .embed.encoder import load_encoder
    from .embed.indexer import index_images
    from .safety.bounds import Bounds

    b = Bounds.load(bounds) if bounds is not None else None
    enc = load_encoder(model, _arch(arch), device, precision=precision)
    bars = _progress(quiet, unit="images")
    task = bars.add_task("embedding images", total=None, start=False)

    def started(total: int, already: int) -> None:  # the bar appears once the index is open
        bars.update(task, total=total)
        bars.start()
        bars.start_task(task)

    try:
        summary = index_images(source, out, enc, preset=preset, bounds=b, batch_size=batch_size, workers=workers,
                               commit_every=commit_every, commit_seconds=commit_seconds, max_pixels=max_pixels,
                               report=report, on_start=started, progress=lambda n: bars.update(task, advance=n))
    finally:
        bars.stop()
    return summary.to_dict()


def _arch(arch: str | None) -> Any:
    """An ``--arch`` value: a name, a JSON file, or inline JSON."""
    if arch is not None and arch.lstrip().startswith("{"):
        try:
            return json.loads(arch)
        except ValueError as e:
            _fail(f"--arch is not valid JSON ({e})")
    return arch


def _images_text(s: dict[str, Any]) -> str:
    lines = [f"indexed {s['indexed']} images ({s['images_per_second']:.1f}/s), {s['already_indexed']} already "
             f"indexed, {s['skipped']} skipped; the index has {s['rows']} rows (version {s['version']}) at "
             f"{s['path']}"]
    if s["skipped"]:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(s["skipped_by_reason"].items()))
        lines.append(f"skipped ({why}); the list with reasons: {s['report']}")
    if s.get("bounds_note"):
        lines.append(f"bounds {s['bounds_note']}")
    return "\n".join(lines)


def build_index(source: Path, out: Path, *, preset: str | None, curv: float | None, append: bool,
                batch_rows: int = 65_536, quiet: bool = True, bounds: Path | None = None,
                modality: str | None = None) -> dict[str, Any]:
    """Read ``source`` and build (or append to) the index at ``out``; all or nothing."""
    from .errors import IndexExistsError, InvalidInputError
    from .index import Index
    from .ingest import Source, resolve_curv
    from .safety.bounds import Bounds

    src = Source(source, batch_rows=batch_rows)
    if append and (bounds is not None or modality is not None):
        raise InvalidInputError("--bounds and --modality are fixed when an index is created; not with --append")
    b = Bounds.load(bounds) if bounds is not None else None
    if modality is None and not append:
        modality = _source_modality(src)
    c = resolve_curv(curv, src.curv, str(source), required=not append)
    if append:
        ix = Index.open(out, writable=True)
        if c is not None and abs(c - ix.curv) > 1e-9 * ix.curv:
            ix.close()
            raise InvalidInputError(f"source curvature {c:g} differs from the index's {ix.curv:g}")
        target = out
    else:
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
                    if c is None:  # pragma: no cover - resolve_curv requires it unless appending
                        raise InvalidInputError(f"curvature unknown for {source}")
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
    texts: list[str] | None = typer.Argument(None, help="Text queries (embedded with the index's model)."),
    images: list[Path] | None = typer.Option(None, "--image", help="Image query (repeatable)."),
    vectors: Path | None = typer.Option(None, "--vectors", help=".npy file of query space components, "
                                           "(m, dim) or (dim,)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Checkpoint for text/image queries (default: "
                                        "the one the index records; another is an error)."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture for --model (default: the index's)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (for the model)."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="Results per query."),
    candidates: int | None = typer.Option(None, "--candidates", min=1, help="Rows the rerank sees per query."),
    columns: str | None = typer.Option(None, "--columns", help="Comma-separated metadata columns to show."),
    policy: str = typer.Option("off", "--policy", help="off, redirect, filter, block or outward; or a "
                               "comma-separated list with one per query."),
    modality: str | None = typer.Option(None, "--modality", help="The --vectors queries' modality: text or "
                                           "image, or a comma-separated list with one per query (default: text; "
                                           "texts and images are known)."),
    redirect_mode: str = typer.Option("geodesic", "--redirect-mode", help="geodesic (default) or hysac."),
    target: str | None = typer.Option(None, "--target", help="Bounds statistic (avg, up_95, low_05, ...) or "
                                         "radius the geodesic moves aim for."),
    bounds: Path | None = typer.Option(None, "--bounds", help="Bounds JSON to use instead of the index's."),
    allow_unsafe: bool = typer.Option(False, "--allow-unsafe", help="Permit --policy outward (retrieves unsafe "
                                      "content on purpose)."),
    explain: bool = typer.Option(False, "--explain", help="Say, per query, what the planner did."),
    dedup: bool = typer.Option(False, "--dedup", help="Collapse near-duplicates among the hits, keeping the "
                               "nearest (radius: --dedup-radius, else the index's last applied dedup, else 0.05)."),
    dedup_radius: float | None = typer.Option(None, "--dedup-radius", min=0.0, help="Radius for --dedup."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per query, one per line."),
) -> None:
    """Search an index by text, image or query vectors, under a safety policy."""
    from .index import Index

    texts, images = list(texts or []), list(images or [])
    if not texts and not images and vectors is None:
        _fail("nothing to search for: give a sentence, --image PATH or --vectors FILE")
    if vectors is not None and (texts or images):
        _fail("--vectors cannot be combined with text or --image queries")
    if modality is not None and vectors is None:
        _fail("--modality is for --vectors; text and image queries know theirs")
    ix = Index.open(index)
    if vectors is not None:
        q, mods = _load_vectors(vectors), _listed(modality or "text")
    else:
        q, mods = _embed_queries(ix, texts, images, model=model, arch=arch, device=device)
    res = ix.search(q, k=k, candidates=candidates, policy=_listed(policy), modality=mods,
                    redirect_mode=redirect_mode, bounds=bounds, allow_unsafe=allow_unsafe,
                    target=_target(target),
                    dedup=(dedup_radius if dedup_radius is not None else True) if dedup or dedup_radius is not None
                    else False)
    cols = [c.strip() for c in columns.split(",")] if columns else None
    hits = res.to_list(cols)
    labels = [f"text: {t}" for t in texts] + [f"image: {p}" for p in images]
    if as_json:
        for i, h in enumerate(hits):
            rec = {"query": i, "exact": res.exact, "hits": h}
            if labels:
                rec["input"] = labels[i]
            if explain:
                rec["plan"] = res.plans[i].to_dict()
            _dump(rec)
        return
    for i, lab in enumerate(labels):
        typer.echo(f"query {i}: {lab}")
    _print_hits(hits)
    if explain:
        for p in res.plans:
            typer.echo(p.describe())


def _load_vectors(path: Path) -> Any:
    import numpy as np

    from .errors import SourceError

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SourceError(f"query file {path} does not exist") from None
    except (ValueError, OSError) as e:
        raise SourceError(f"{path} is not a readable .npy file ({e})") from None


def _embed_queries(ix: Any, texts: list[str], images: list[Path], *, model: str | None, arch: str | None,
                   device: str) -> tuple[Any, list[str]]:
    """Embed text and image queries with the index's model (or a checked ``model``): ``(vectors, modalities)``."""
    import numpy as np

    from .embed.encoder import load_encoder
    from .embed.indexer import check_model
    from .errors import ModelMismatchError

    recorded = ix.manifest.producer.get("model")
    arch_ = _arch(arch) if arch else (recorded or {}).get("arch")
    if model is None:
        if not recorded:
            raise ModelMismatchError(f"{ix.path} records no model (built from precomputed vectors): pass --model, "
                                     f"or search with --vectors")
        spec = recorded["checkpoint"]
        enc = load_encoder(spec, arch_, device, kind=recorded["kind"],
                           lora_alpha=float(recorded.get("lora_alpha", 1.0)))
        size = enc.located.path.stat().st_size
        if size != recorded.get("file_bytes"):
            raise ModelMismatchError(f"the checkpoint {spec} has changed since {ix.path} was built "
                                     f"({recorded.get('file_bytes')} bytes then, {size} now)")
    else:
        enc = load_encoder(model, arch_, device)
        if recorded:
            check_model(recorded, enc, str(ix.path))
    parts = [np.zeros((0, enc.dim), np.float32)]
    if texts:
        parts.append(enc.encode_text(texts))
    if images:
        parts.append(enc.encode_images([str(p) for p in images]))
    return np.concatenate(parts), ["text"] * len(texts) + ["image"] * len(images)


def _listed(value: str) -> str | list[str]:
    """``a`` stays a string; ``a,b,c`` becomes a list (one entry per query)."""
    return [v.strip() for v in value.split(",")] if "," in value else value.strip()


def _target(value: str | None) -> str | float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


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


# --------------------------------------------------------------- safety
@app.command("dedup")
@_errors
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
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Find exact and near-duplicate groups; with --apply, keep one row of each group."""
    from .dedup.run import check_out_path
    from .errors import InvalidInputError
    from .index import Index

    if auto and radius is not None:
        raise InvalidInputError("give --radius or --auto, not both")
    if not auto and radius is None:
        raise InvalidInputError("give --radius R or --auto")
    check_out_path(out)  # before the long run, not after it
    ix = Index.open(index, writable=apply)
    try:
        with _progress(quiet) as bars:
            tasks: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bars.add_task(phase, total=total)
                bars.update(tasks[phase], completed=done)

            res = ix.dedup(radius=radius, auto=auto, unsafe_only=unsafe_only, grouping=grouping, keep=keep,
                           method=method, progress=progress)
        res.write(out)  # the record of what is to be deleted exists before anything is
        if apply:
            ix.apply_dedup(res)
    finally:
        ix.close()
    s = res.summary
    s["out"] = str(out)
    if as_json:
        _dump(s)
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


@app.command("calibrate")
@_errors
def calibrate_cmd(
    labelled: Path = typer.Argument(..., help="Parquet/Arrow file: embedding, modality (text|image), unsafe (bool)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bounds JSON to write."),
    curv: float | None = typer.Option(None, "--curv", help="Curvature; else the schema key hyperret.curv."),
    criterion: str = typer.Option("balanced", "--criterion", help="balanced, safe-fpr:X or unsafe-recall:X."),
    as_json: bool = typer.Option(False, "--json", help="Print the bounds as JSON."),
) -> None:
    """Calibrate safety bounds (per-class radius statistics, per-modality thresholds) from labelled embeddings."""
    from . import lorentz
    from .safety.bounds import calibrate
    from .safety.labelled import load_labelled

    data = load_labelled(labelled, curv)
    if data.unsafe is None:  # pragma: no cover - load_labelled needs the labels by default
        raise AssertionError("labelled file without labels")
    b = calibrate(lorentz.radius(data.space, data.curv), data.modality, data.unsafe, curv=data.curv,
                  criterion=criterion, source=str(labelled))
    b.save(out)
    if as_json:
        _dump(b.to_dict())
        return
    for letter, st in b.classes.items():
        typer.echo(f"class {letter}: n={int(st['count'])} low_05={st['low_05']:.4f} avg={st['avg']:.4f} "
                   f"up_95={st['up_95']:.4f}")
    for m, t in b.thresholds.items():
        typer.echo(f"{m} threshold {t.radius:.4f} ({t.criterion}): balanced accuracy {t.balanced_accuracy:.4f}, "
                   f"unsafe flagged {t.tpr:.4f}, safe flagged {t.fpr:.4f}")
    typer.echo(f"wrote {out}")


@app.command("classify")
@_errors
def classify_cmd(
    source: Path = typer.Argument(..., help="Parquet/Arrow file with an 'embedding' column."),
    index: Path | None = typer.Option(None, "--index", help="Use this index's bounds and curvature."),
    bounds: Path | None = typer.Option(None, "--bounds", help="Bounds JSON (instead of --index's)."),
    curv: float | None = typer.Option(None, "--curv", help="Curvature; else the index's or the file's."),
    modality: str | None = typer.Option(None, "--modality", help="text or image, when the file has no "
                                           "'modality' column."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the table: .parquet or .json."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per row."),
) -> None:
    """Classify embeddings as safe or unsafe by their distance to the origin."""
    import pyarrow as pa

    from .errors import InvalidInputError
    from .index import Index
    from .safety.bounds import Bounds
    from .safety.classify import classify
    from .safety.labelled import load_labelled

    b = Bounds.load(bounds) if bounds is not None else None
    c = curv
    if index is not None:
        ix = Index.open(index)
        b = b or ix.bounds
        c = c if c is not None else ix.curv
        if modality is None and ix.modality != "mixed":
            modality = ix.modality
    if b is None:
        raise InvalidInputError("no bounds: pass --bounds FILE or --index DIR built with bounds")
    if c is None:
        c = b.curv
    data = load_labelled(source, c, need_labels=False, modality=modality)
    res = classify(data.space, b, data.curv, data.modality)
    table = pa.table({"row": pa.array(range(len(res)), pa.int64()), "modality": res.modality.tolist(),
                      "radius": res.radius, "unsafe_score": res.score, "unsafe": res.unsafe,
                      "class": res.cls.tolist()})
    if out is not None:
        _write_table(table, out)
    if as_json:
        for rec in table.to_pylist():
            _dump(rec)
    elif out is None:
        _print_rows(table)
    n_unsafe = int(res.unsafe.sum())
    if not as_json:
        typer.echo(f"{n_unsafe} of {len(res)} unsafe" + (f"; wrote {out}" if out is not None else ""), err=True)


def _write_table(table: Any, out: Path) -> None:
    from .errors import InvalidInputError
    from .storage.fsutil import atomic_write_bytes, atomic_write_table

    if out.suffix == ".parquet":
        atomic_write_table(out, table)
    elif out.suffix == ".json":
        atomic_write_bytes(out, json.dumps(table.to_pylist(), default=_json_default).encode())
    else:
        raise InvalidInputError(f"--out must end in .parquet or .json, got {out.name}")


def _print_rows(table: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*table.column_names)
    for rec in table.to_pylist():
        t.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in rec.values()))
    Console().print(t)


@app.command("explain")
@_errors
def explain_cmd(
    captions: Path = typer.Argument(..., help="Caption index (text rows) searched for entailing captions."),
    index: Path | None = typer.Option(None, "--index", help="Index holding the item given by --id."),
    item: int | None = typer.Option(None, "--id", help="Walk from this item of --index."),
    vectors: Path | None = typer.Option(None, "--vectors", help=".npy file with one query vector (dim,)."),
    steps: int = typer.Option(10, "--steps", min=1, help="Interpolation steps from the point to the origin."),
    column: str | None = typer.Option(None, "--column", help="Caption metadata column to show "
                                         "(default: caption, text or the first string column)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Walk from an item or a query to the origin: the nearest entailing caption (or HySAC's [ROOT]) at each step."""
    import numpy as np

    from .errors import InvalidInputError
    from .index import Index
    from .safety.explain import explain_path

    caps = Index.open(captions)
    if (item is None) == (vectors is None):
        raise InvalidInputError("give exactly one of --id (with --index) or --vectors")
    if item is not None:
        if index is None:
            raise InvalidInputError("--id needs --index (the index that holds the item)")
        src = Index.open(index)
        if src.curv != caps.curv or src.dim != caps.dim:
            raise InvalidInputError(f"{index} (dim {src.dim}, curv {src.curv:g}) and {captions} "
                                    f"(dim {caps.dim}, curv {caps.curv:g}) are not in the same space")
        point = src.vectors([item])[0]
    elif vectors is not None:
        point = np.asarray(_load_vectors(vectors), dtype=np.float32)
        if point.ndim == 2 and point.shape[0] == 1:
            point = point[0]
        if point.ndim != 1:
            raise InvalidInputError(f"--vectors must hold one vector, got shape {point.shape}")
    walk = explain_path(point, caps, steps=steps, column=column)
    if as_json:
        _dump(walk)
        return
    for st in walk["steps"]:
        if st["root"]:
            cap = "[ROOT] (no caption entails this point; the origin does)" if st["id"] is None else \
                f"[ROOT] (the origin is nearer than [{st['id']}] {st.get('caption', '')}, which entails it)"
        else:
            cap = f"entailed by [{st['id']}] {st.get('caption', '')}"
        near = st.get("nearest")
        tail = f"; nearest [{near['id']}] {near.get('caption', '')}" if near and near["id"] != st["id"] else ""
        typer.echo(f"t={st['t']:.2f} radius={st['radius']:.4f}  {cap}{tail}")


@app.command("eval")
@_errors
def eval_cmd(
    paired: Path = typer.Argument(..., help="Quadruples: Parquet/Arrow with S,U,V,G (or safe_text, unsafe_text, "
                                  "safe_image, unsafe_image) embedding columns, a .npz with those arrays, or HySAC's "
                                  "encode_dataset dict saved with torch.save (.pt/.pth; give --curv)."),
    bounds: Path | None = typer.Option(None, "--bounds", help="Bounds JSON (default: calibrated on the set "
                                          "itself, and said so)."),
    curv: float | None = typer.Option(None, "--curv", help="Curvature; else the file's."),
    redirect_mode: str = typer.Option("geodesic", "--redirect-mode", help="geodesic or hysac."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the markdown table here."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Evaluate retrieval (R@1/10/20, safe@1/unsafe@1) and unsafe classification on paired embeddings (HySAC's
    protocol)."""
    from .safety.bounds import Bounds
    from .safety.evaluate import evaluate, markdown
    from .safety.labelled import load_paired

    quads, c = load_paired(paired, curv)
    b = Bounds.load(bounds) if bounds is not None else None
    report = evaluate(quads, c, bounds=b, redirect_mode=redirect_mode)
    md = markdown(report)
    if out is not None:
        from .storage.fsutil import atomic_write_bytes

        atomic_write_bytes(out, (md + "\n").encode())
    if as_json:
        _dump(report)
    else:
        typer.echo(md)


@app.command("report")
@_errors
def report_cmd(
    source: Path = typer.Argument(..., help="An index directory, or a labelled embedding file."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write."),
    bounds: Path | None = typer.Option(None, "--bounds", help="Bounds JSON (default: the index's)."),
    curv: float | None = typer.Option(None, "--curv", help="Curvature of a labelled file."),
    sample: int = typer.Option(2000, "--sample", min=1, help="Points in the Poincaré-disk view."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Plot the distance-to-origin histogram per class with the thresholds, and a Poincaré-disk view."""
    from .safety.report import report_from

    summary = report_from(source, out, bounds=bounds, curv=curv, sample=sample)
    if as_json:
        _dump(summary)
    else:
        typer.echo(f"wrote {summary['out']} ({', '.join(f'{k}: {v}' for k, v in summary['counts'].items())})")


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
    preset: str | None = typer.Option(None, "--preset", "-p", help="Preset (default: fast)."),
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
    main()
