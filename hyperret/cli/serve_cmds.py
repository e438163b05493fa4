"""``hyperret serve`` (the HTTP service and web page) and ``hyperret key`` (API keys for it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from .app import app, fail, handle_errors


@app.command("serve")
@handle_errors
def serve_cmd(
    indexes: list[Path] = typer.Argument(..., help="Index directories to serve (each by its folder name), or "
                                         "parts files (one index over its parts on Ray, named by the file)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="TCP port."),
    model: str | None = typer.Option(None, "--model", "-m", help="Checkpoint for text and image queries "
                                        "(default: the one the index records)."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture for --model (default: the index's)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (the model and the indexes' rows)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="Hashed API keys (hyperret key); "
                                                "with keys, every request needs one."),
    default_policy: str = typer.Option("off", "--default-policy", help="The policy of requests that name none: "
                                       "off, redirect, filter or block."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Server processes."),
    max_k: int = typer.Option(1000, "--max-k", min=1, help="The largest k a request may ask for."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds a search may take (then 503)."),
    max_body: int = typer.Option(8 << 20, "--max-body", min=1024, help="Largest request body in bytes."),
    search_slots: int = typer.Option(1, "--search-slots", min=1, max=256, help="Searches run at once per "
                                     "process (each uses every core; more only contend on a small machine)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="The Ray cluster serving parts files' "
                                              "parts (default: a local Ray)."),
) -> None:
    """Serve indexes over HTTP: JSON search and classify, a web page at /, OpenAPI at /docs, /metrics."""
    try:
        import uvicorn
    except ImportError:
        fail("hyperret serve needs the serve extra: pip install 'hyperret[serve]'")
    from ..serve import CONFIG_ENV, create_app, service_from_config
    from .inputs import parse_arch

    paths: list[str | Path] = [str(p) for p in indexes]
    if workers > 1 and ray_address is None and any(p.is_file() for p in indexes):
        fail("a parts file with --workers > 1 needs --ray-address (a Ray cluster every server process joins)")
    cfg = {"paths": paths, "ray_address": ray_address,
           "model": model, "arch": parse_arch(arch), "device": device, "default_policy": default_policy,
           "api_key_file": str(api_key_file) if api_key_file else None,
           "limits": {"max_k": max_k, "timeout_seconds": timeout, "max_body_bytes": max_body,
                      "search_slots": search_slots}}
    service = service_from_config(cfg)  # as each worker process builds its own with --workers N
    typer.echo(f"serving {', '.join(service.indexes)} on http://{host}:{port} (page /, API docs /docs)", err=True)
    if workers == 1:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
        return
    os.environ[CONFIG_ENV] = json.dumps(cfg)  # each worker process builds its own service from it
    uvicorn.run("hyperret.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


@app.command("key")
@handle_errors
def key_cmd(
    name: str = typer.Argument(..., help="A name for the key (letters, digits, . _ -)."),
    file: Path = typer.Option(..., "--file", help="The key file to append to (created if absent)."),
    unsafe: bool = typer.Option(False, "--unsafe", help="Allow the outward policy and allow_unsafe."),
) -> None:
    """Make an API key for hyperret serve: its hash goes in --file, the key is printed once."""
    from ..serve.keys import add_key

    typer.echo(add_key(file, name, ["search", "unsafe"] if unsafe else ["search"]))


@app.command("parts")
@handle_errors
def parts_cmd(
    out: Path = typer.Argument(..., help="The parts file to write (JSON)."),
    parts: list[Path] = typer.Argument(..., help="Index directories: the parts of one collection."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Name indexes as the parts of one collection: hyperret search and serve take the file (on Ray)."""
    from ..distributed.parts import check_parts, id_clash, write_parts_file

    if out.exists() and not force:
        fail(f"{out} exists (--force replaces it)")
    if out.is_dir():
        fail(f"{out} is a folder; the parts file is a JSON file")
    paths = [p if p.is_absolute() else Path.cwd() / p for p in parts]
    manifests = check_parts(paths)
    clash = id_clash(paths)  # a hit's id must name one row of the collection
    if clash is not None:
        fail(clash)
    base = out.resolve().parent
    named = [os.path.relpath(p.resolve(), base) for p in parts]  # from the file's folder, as it reads them
    write_parts_file(out, named)
    rows = sum(m.rows for m in manifests)
    typer.echo(f"wrote {out}: {len(parts)} parts, {rows} rows")
