"""``hyperret index``, ``info`` and ``presets``: building indexes from images or embeddings, and describing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..search.recall import MIN_ROWS as MIN_CALIBRATED_ROWS
from .app import app, fail, handle_errors
from .inputs import parse_arch
from .render import dump, images_text, progress_bars


@app.command("index")
@handle_errors
def index_cmd(
    source: Path = typer.Argument(..., help="Parquet or Arrow IPC file with an 'embedding' column, a folder of "
                                  "them, or clip-retrieval's output folder (img_emb/, metadata/); or, with "
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
    compact: bool = typer.Option(True, "--compact/--no-compact", help="Images: end the run by merging the "
                                 "segments its commits made into one (hyperret compact)."),
    background_commits: bool = typer.Option(True, "--background-commits/--sync-commits", help="Images: add and "
                                            "commit on a writer thread while the model runs (default), or "
                                            "between forward passes."),
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
    ray: bool = typer.Option(False, "--ray", help="Run on Ray (the ray extra; local Ray unless --ray-address). "
                             "Tables: workers read the parts and write the shards, one commit at the end. "
                             "Images: decoder and embedder actors (one GPU each with --device cuda) write "
                             "shards; the driver commits every --commit-every images."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="A Ray cluster for --ray."),
    ray_actors: int | None = typer.Option(None, "--ray-actors", min=1, help="Images on Ray: embedder actors "
                                             "(default: the cluster's GPUs with --device cuda, else 1)."),
    ray_actor_cpus: float = typer.Option(1.0, "--ray-actor-cpus", min=0.0, help="Images on Ray: CPUs (torch "
                                         "threads) per embedder actor."),
    ray_decoders: int | None = typer.Option(None, "--ray-decoders", min=1, help="Images on Ray: at most this "
                                               "many decoder actors (default: the CPUs the embedders leave)."),
    shard_rows: int = typer.Option(1024, "--shard-rows", min=1, help="Images on Ray: files per embedder call, "
                                   "written as one shard."),
    first_id: int | None = typer.Option(None, "--first-id", min=0, help="A new index numbers its rows from this "
                                           "id: parts of one collection built apart keep their ids apart (e.g. "
                                           "part K from K * 10**12)."),
    geometry: str | None = typer.Option(None, "--geometry", help="lorentz (HySAC space components) or cosine "
                                           "(Euclidean CLIP vectors, ranked by cosine similarity). Default: what "
                                           "the source records; clip-retrieval folders are cosine."),
    as_json: bool = typer.Option(False, "--json", help="Print the resulting index summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Index images with a model (--model), or precomputed embeddings (space components of Lorentz points)."""
    from ..storage.folders import is_embedding_folder

    if model is not None or (source.is_dir() and not is_embedding_folder(source)):
        if model is None:
            fail(f"{source} is a folder: indexing images needs --model (a HySAC or open_clip checkpoint)")
        if ray_address is not None and not ray:
            fail("--ray-address goes with --ray")
        if ray and (workers is not None or not background_commits):
            fail("--workers and --sync-commits are for local runs; on Ray, --ray-decoders and --ray-actors")
        if not ray and (ray_actors is not None or ray_decoders is not None):
            fail("--ray-actors and --ray-decoders go with --ray")
        if append or curv is not None or modality is not None or geometry is not None:
            fail("--append, --curv, --modality and --geometry are for precomputed embeddings; an image run "
                 "resumes by itself")
        on_ray = {"ray_address": ray_address, "actors": ray_actors, "actor_cpus": ray_actor_cpus,
                  "decoders": ray_decoders, "shard_rows": shard_rows} if ray else None
        summary = index_images_cmd(source, out, model=model, arch=arch, device=device, batch_size=batch_size,
                                   workers=workers, precision=precision, commit_every=commit_every,
                                   commit_seconds=commit_seconds, max_pixels=max_pixels, report=report,
                                   preset=preset, bounds=bounds, quiet=quiet or as_json, compact=compact,
                                   background_commits=background_commits, ray=on_ray, first_id=first_id)
        if as_json:
            dump(summary)
        else:
            typer.echo(images_text(summary))
        return
    info = build_with_bars(source, out, preset=preset, curv=curv, append=append, batch_rows=batch_rows, quiet=quiet,
                           bounds=bounds, modality=modality, geometry=geometry, ray=ray, ray_address=ray_address,
                           first_id=first_id,
                           warn=lambda line: typer.echo(f"warning: {line}", err=True))
    if as_json:
        dump(info)
    else:
        typer.echo(f"indexed {info['rows']} rows (dim {info['dim']}, curv {info['curv']:g}, "
                   f"preset {info['preset']}, version {info['version']}) at {info['path']}")


def index_images_cmd(source: Path, out: Path, *, model: str, arch: str | None, device: str, batch_size: int,
                     workers: int | None, precision: str, commit_every: int, commit_seconds: float,
                     max_pixels: int, report: Path | None, preset: str | None, bounds: Path | None,
                     quiet: bool, compact: bool = True, background_commits: bool = True,
                     ray: dict[str, Any] | None = None, first_id: int | None = None) -> dict[str, Any]:
    """Embed the images under ``source`` into the index at ``out`` (created, or resumed); on Ray with ``ray``."""
    from ..safety.bounds import Bounds

    b = Bounds.load(bounds) if bounds is not None else None
    bars = progress_bars(quiet, unit="images")
    task = bars.add_task("embedding images", total=None, start=False)

    def started(total: int, already: int) -> None:  # the bar appears once the index is open
        bars.update(task, total=total)
        bars.start()
        bars.start_task(task)

    common: dict[str, Any] = {
        "preset": preset, "bounds": b, "batch_size": batch_size, "commit_every": commit_every,
        "commit_seconds": commit_seconds, "max_pixels": max_pixels, "report": report, "on_start": started,
        "progress": lambda n: bars.update(task, advance=n), "compact": compact, "first_id": first_id}
    try:
        if ray is not None:
            from ..distributed.images import ModelSpec, index_images_on_ray

            spec = ModelSpec(model, parse_arch(arch), device, precision)
            summary = index_images_on_ray(source, out, spec, **common, **ray)
        else:
            from ..embed.encoder import load_encoder
            from ..embed.indexer import index_images

            enc = load_encoder(model, parse_arch(arch), device, precision=precision)
            summary = index_images(source, out, enc, workers=workers, background_commits=background_commits,
                                   **common)
    finally:
        bars.stop()
    return summary.to_dict()


def build_with_bars(source: Path, out: Path, *, quiet: bool, **kw: Any) -> dict[str, Any]:
    """:func:`hyperret.index.build.build_index` with a progress bar per stage."""
    from ..index.build import build_index

    with progress_bars(quiet) as bars:
        def stage(name: str, total: int | None) -> Any:
            task = bars.add_task(name, total=total)
            return lambda n: bars.update(task, advance=n)

        return build_index(source, out, progress=stage, **kw)


@app.command("info")
@handle_errors
def info_cmd(
    index: Path = typer.Argument(..., help="Index directory, or a parts file (its parts, from their manifests)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every file's checksum."),
) -> None:
    """Describe an index (and optionally verify its files)."""
    from ..index import Index

    if index.is_file():  # a parts file: no Ray needed to describe it
        from dataclasses import asdict

        from ..distributed.parts import PartsManifest, check_parts, read_parts_file

        paths = read_parts_file(index)
        parts = {"path": str(index), **asdict(PartsManifest.of(paths, check_parts(paths)))}
        if verify:
            for p in paths:
                Index.open(p).verify()
            parts["verified"] = True
        if as_json:
            dump(parts)
            return
        for key, val in parts.items():
            typer.echo(f"{key:20s} {val}")
        return
    ix = Index.open(index)
    info = ix.info()
    if verify:
        ix.verify()
        info["verified"] = True
    if as_json:
        dump(info)
        return
    curve = info.pop("recall", None)
    for key, val in info.items():
        typer.echo(f"{key:20s} {val}")
    if curve is None:
        typer.echo(f"{'recall':20s} not measured (under {MIN_CALIBRATED_ROWS} rows, the exhaustive scan answers)")
        return
    typer.echo(f"recall@{curve['k']} measured at {curve['rows']} rows ({curve['queries']} held-out and perturbed "
               f"queries); scan {curve['scan_ms_per_query']} ms/query")
    for p in curve["curve"]:
        typer.echo(f"  {curve['knob'] or 'flat'} {p['setting']:>5}  recall {p['recall']:.4f}  (held-out "
                   f"{p['held_out']:.4f}, perturbed {p['perturbed']:.4f}, self first {p['self_first']:.3f})  "
                   f"{p['ms_per_query']} ms/query")


@app.command("presets")
@handle_errors
def presets_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the index presets."""
    from ..search.presets import list_presets, load_preset

    presets = {name: load_preset(name).to_dict() for name in list_presets()}
    if as_json:
        dump(presets)
        return
    for name, p in presets.items():
        typer.echo(f"{name:10s} {p['description']}")
