"""The safety commands: ``calibrate``, ``classify``, ``explain``, ``eval``, ``report``."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, handle_errors
from .inputs import load_vectors
from .render import dump, print_rows, write_table


@app.command("calibrate")
@handle_errors
def calibrate_cmd(
    labelled: Path = typer.Argument(..., help="Parquet/Arrow file: embedding, modality (text|image), unsafe (bool)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bounds JSON to write."),
    curv: float | None = typer.Option(None, "--curv", help="Curvature; else the schema key hyperret.curv."),
    criterion: str = typer.Option("balanced", "--criterion", help="balanced, safe-fpr:X or unsafe-recall:X."),
    as_json: bool = typer.Option(False, "--json", help="Print the bounds as JSON."),
) -> None:
    """Calibrate safety bounds (per-class radius statistics, per-modality thresholds) from labelled embeddings."""
    from ..geometry import lorentz
    from ..safety.bounds import calibrate
    from ..safety.labelled import load_labelled

    data = load_labelled(labelled, curv)
    if data.unsafe is None:  # pragma: no cover - load_labelled needs the labels by default
        raise AssertionError("labelled file without labels")
    b = calibrate(lorentz.radius(data.space, data.curv), data.modality, data.unsafe, curv=data.curv,
                  criterion=criterion, source=str(labelled))
    b.save(out)
    if as_json:
        dump(b.to_dict())
        return
    for letter, st in b.classes.items():
        typer.echo(f"class {letter}: n={int(st['count'])} low_05={st['low_05']:.4f} avg={st['avg']:.4f} "
                   f"up_95={st['up_95']:.4f}")
    for m, t in b.thresholds.items():
        typer.echo(f"{m} threshold {t.radius:.4f} ({t.criterion}): balanced accuracy {t.balanced_accuracy:.4f}, "
                   f"unsafe flagged {t.tpr:.4f}, safe flagged {t.fpr:.4f}")
    typer.echo(f"wrote {out}")


@app.command("classify")
@handle_errors
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

    from ..errors import InvalidInputError
    from ..index import Index
    from ..safety.bounds import Bounds
    from ..safety.classify import classify
    from ..safety.labelled import load_labelled

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
        write_table(table, out)
    if as_json:
        for rec in table.to_pylist():
            dump(rec)
    elif out is None:
        print_rows(table)
    n_unsafe = int(res.unsafe.sum())
    if not as_json:
        typer.echo(f"{n_unsafe} of {len(res)} unsafe" + (f"; wrote {out}" if out is not None else ""), err=True)


@app.command("explain")
@handle_errors
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

    from ..errors import InvalidInputError
    from ..index import Index
    from ..safety.explain import explain_path

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
        point = np.asarray(load_vectors(vectors), dtype=np.float32)
        if point.ndim == 2 and point.shape[0] == 1:
            point = point[0]
        if point.ndim != 1:
            raise InvalidInputError(f"--vectors must hold one vector, got shape {point.shape}")
    walk = explain_path(point, caps, steps=steps, column=column)
    if as_json:
        dump(walk)
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
@handle_errors
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
    from ..safety.bounds import Bounds
    from ..safety.evaluate import evaluate, markdown
    from ..safety.labelled import load_paired

    quads, c = load_paired(paired, curv)
    b = Bounds.load(bounds) if bounds is not None else None
    report = evaluate(quads, c, bounds=b, redirect_mode=redirect_mode)
    md = markdown(report)
    if out is not None:
        from ..storage.fsutil import atomic_write_bytes

        atomic_write_bytes(out, (md + "\n").encode())
    if as_json:
        dump(report)
    else:
        typer.echo(md)


@app.command("report")
@handle_errors
def report_cmd(
    source: Path = typer.Argument(..., help="An index directory, or a labelled embedding file."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write."),
    bounds: Path | None = typer.Option(None, "--bounds", help="Bounds JSON (default: the index's)."),
    curv: float | None = typer.Option(None, "--curv", help="Curvature of a labelled file."),
    sample: int = typer.Option(2000, "--sample", min=1, help="Points in the Poincaré-disk view."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Plot the distance-to-origin histogram per class with the thresholds, and a Poincaré-disk view."""
    from ..safety.report import report_from

    summary = report_from(source, out, bounds=bounds, curv=curv, sample=sample)
    if as_json:
        dump(summary)
    else:
        typer.echo(f"wrote {summary['out']} ({', '.join(f'{k}: {v}' for k, v in summary['counts'].items())})")
