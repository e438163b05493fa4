"""``hyperret search``: text, image and vector queries under the safety policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .app import app, fail, handle_errors
from .inputs import embed_queries, listed, load_vectors, target_value
from .render import dump, print_hits


@app.command("search")
@handle_errors
def search_cmd(
    index: Path = typer.Argument(..., help="Index directory, or a parts file (its parts searched on Ray)."),
    texts: list[str] | None = typer.Argument(None, help="Text queries (embedded with the index's model)."),
    images: list[Path] | None = typer.Option(None, "--image", help="Image query (repeatable)."),
    vectors: Path | None = typer.Option(None, "--vectors", help=".npy file of query space components, "
                                           "(m, dim) or (dim,)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Checkpoint for text/image queries (default: "
                                        "the one the index records; another is an error)."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture for --model (default: the index's)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N: where the model runs and the "
                               "index's rows are searched (on a GPU: exact, by the CUDA kernels)."),
    device_storage: str = typer.Option("float32", "--device-storage", help="float32 or float16: the rows on "
                                       "the GPU (float16 halves the memory; the rerank stays exact)."),
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
    recall: float | None = typer.Option(None, "--recall", min=0.0, max=1.0, help="Recall@10 to reach, as the "
                                         "index measured it on its own rows (see `hyperret info`); default: the "
                                         "preset's (fast: 0.98)."),
    ef: int | None = typer.Option(None, "--ef", min=1, max=65536, help="Graph beam width, set directly."),
    nprobe: int | None = typer.Option(None, "--nprobe", min=1, max=65536, help="IVF lists probed, set directly."),
    where: str | None = typer.Option(None, "--where", help="Metadata predicate, e.g. \"width > 500 and not "
                                        "unsafe_label\" (grammar: hyperret.search.predicates)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per query, one per line."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="A parts file's Ray cluster (default: "
                                              "a local Ray)."),
) -> None:
    """Search an index by text, image or query vectors, under a safety policy."""
    from ..index import Index

    texts, images = list(texts or []), list(images or [])
    if not texts and not images and vectors is None:
        fail("nothing to search for: give a sentence, --image PATH or --vectors FILE")
    if vectors is not None and (texts or images):
        fail("--vectors cannot be combined with text or --image queries")
    if modality is not None and vectors is None:
        fail("--modality is for --vectors; text and image queries know theirs")
    if index.is_file():  # a parts file
        from ..distributed import ShardedIndex

        if bounds is not None:
            fail("--bounds searches one index: a parts file's parts use the bounds they share")
        ix: Any = ShardedIndex.open(index, ray_address, device=device)
    else:
        if ray_address is not None:
            fail("--ray-address is for a parts file")
        ix = Index.open(index, device=device, device_storage=device_storage)
    if vectors is not None:
        q, mods = load_vectors(vectors), listed(modality or "text")
    else:
        q, mods = embed_queries(ix, texts, images, model=model, arch=arch, device=device)
    extra: dict[str, Any] = {} if bounds is None else {"bounds": bounds}
    res = ix.search(q, k=k, candidates=candidates, policy=listed(policy), modality=mods,
                    redirect_mode=redirect_mode, allow_unsafe=allow_unsafe,
                    target=target_value(target), recall=recall, ef=ef, nprobe=nprobe, where=where,
                    dedup=(dedup_radius if dedup_radius is not None else True) if dedup or dedup_radius is not None
                    else False, **extra)
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
            dump(rec)
        return
    for i, lab in enumerate(labels):
        typer.echo(f"query {i}: {lab}")
    print_hits(hits)
    if explain:
        for p in res.plans:
            typer.echo(p.describe())
