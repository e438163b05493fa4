"""Reading labelled and paired embedding files for calibration, classification and evaluation.

- A *labelled* file (Parquet or Arrow) has ``embedding`` (space components),
  ``modality`` (``text`` | ``image``) and ``unsafe`` (bool) columns; the curvature
  comes from ``--curv`` or the schema key ``hyperret.curv``.
- A *paired* set (ViSU-style quadruples) has four embedding columns, one row per
  quadruple: ``S``/``U``/``V``/``G``, ``safe_text``/``unsafe_text``/``safe_image``/
  ``unsafe_image``, or the names HySAC's recall code gives them (``encode_dataset``:
  ``all_text_safe_embeddings``, ``all_text_nsfw_embeddings``,
  ``all_visual_safe_embeddings``, ``all_visual_nsfw_embeddings``); as Parquet/Arrow, a
  ``.npz``, or that dict as HySAC's code returns it, saved with ``torch.save``
  (``.pt``/``.pth``, read with ``weights_only=True``; CUDA and half-precision tensors
  are fine). Such a file carries no curvature: pass ``--curv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DependencyError, InvalidInputError, MissingColumnError, SourceError, first_line
from ..storage.sources import CURV_KEY, Source, resolve_curv

PAIRED_NAMES = {"S": "safe_text", "U": "unsafe_text", "V": "safe_image", "G": "unsafe_image"}
#: The names of HySAC's ``recall_computation.encode_dataset`` / ``recalls.encode_dataset``.
REFERENCE_NAMES = {"S": "all_text_safe_embeddings", "U": "all_text_nsfw_embeddings",
                   "V": "all_visual_safe_embeddings", "G": "all_visual_nsfw_embeddings"}
TORCH_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class Labelled:
    """Embeddings with their labels (arrays of length ``n``)."""

    space: np.ndarray  # shape: (n, D) float32
    modality: np.ndarray  # shape: (n,) str, text | image
    unsafe: np.ndarray | None  # shape: (n,) bool; None when the file has no labels
    curv: float

    @property
    def letters(self) -> np.ndarray:
        """ViSU class letter per row (``?`` when unlabelled) -> ``(n,)`` str."""
        if self.unsafe is None:
            return np.full(len(self.modality), "?")
        safe = np.where(self.modality == "text", "S", "V")
        return np.where(self.unsafe, np.where(self.modality == "text", "U", "G"), safe)


def load_labelled(path: str | Path, curv: float | None = None, *, need_labels: bool = True,
                  modality: str | None = None) -> Labelled:
    """Read a labelled embedding file; ``modality`` fills in a missing ``modality`` column."""
    src = Source(path)
    cols = src.metadata_columns
    if "modality" not in cols and modality is None:
        raise MissingColumnError(f"{path} has no 'modality' column (text or image); or pass --modality")
    if need_labels and "unsafe" not in cols:
        raise MissingColumnError(f"{path} has no 'unsafe' column (bool)")
    c = resolve_curv(curv, src.curv, str(path))
    spaces, mods, uns = [], [], []
    for b in src.batches():
        spaces.append(b.vectors)
        n = len(b.vectors)
        meta = b.metadata  # present whenever the file has the columns named below
        if "modality" in cols and meta is not None:
            mods.append(np.array(meta.column("modality").to_pylist(), dtype=np.object_))
        else:
            mods.append(np.full(n, modality, dtype=object))
        if "unsafe" in cols and meta is not None:
            col = meta.column("unsafe")
            if col.null_count:
                raise InvalidInputError(f"{path}: null in the 'unsafe' column")
            if not (pa.types.is_boolean(col.type) or pa.types.is_integer(col.type)):
                raise InvalidInputError(f"{path}: column 'unsafe' must be bool, got {col.type}")
            uns.append(np.asarray(col.to_pylist(), dtype=bool))
    if not spaces or not sum(len(s) for s in spaces):
        raise InvalidInputError(f"{path} has no rows")
    mod = np.concatenate(mods)
    bad = sorted({str(m) for m in set(mod.tolist())} - {"text", "image"})
    if bad:
        raise InvalidInputError(f"{path}: unknown modality {bad[0]!r} (expected text or image)")
    space = np.concatenate(spaces)
    if not np.isfinite(space).all():
        raise InvalidInputError(f"{path}: non-finite values in 'embedding'")
    return Labelled(space=space, modality=mod.astype(str), unsafe=np.concatenate(uns) if uns else None, curv=c)


def load_paired(path: str | Path, curv: float | None = None) -> tuple[dict[str, np.ndarray], float]:
    """Read ViSU-style quadruples -> ``({"S","U","V","G"}: (n, D) float32, curv)``."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"paired file {path} does not exist")
    recorded = None
    if path.suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise SourceError(f"{path} is not a readable .npz file ({e})") from None
        arrays = {k: z[k] for k in z.files}
        if "curv" in arrays:
            recorded = float(arrays.pop("curv"))
    elif path.suffix in TORCH_SUFFIXES:
        arrays = _torch_arrays(path)
    else:
        table = _read_table(path)
        raw = (table.schema.metadata or {}).get(CURV_KEY)
        recorded = float(raw) if raw is not None else None
        arrays = {}
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
                arrays[name] = np.asarray(col.to_pylist(), dtype=np.float32)
    quads = {}
    for letter, long in PAIRED_NAMES.items():
        a = next((arrays[n] for n in (letter, long, REFERENCE_NAMES[letter]) if n in arrays), None)
        if a is None:
            raise MissingColumnError(f"{path} has no {letter!r} (or {long!r}, {REFERENCE_NAMES[letter]!r}) embeddings")
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 2:
            raise InvalidInputError(f"{path}: {letter} embeddings must be 2-D, got shape {a.shape}")
        quads[letter] = a
    shapes = {a.shape for a in quads.values()}
    if len(shapes) != 1:
        raise InvalidInputError(f"{path}: the four embedding sets differ in shape: {sorted(shapes)}")
    if not all(np.isfinite(a).all() for a in quads.values()):
        raise InvalidInputError(f"{path}: non-finite embedding values")
    if not quads["S"].shape[0]:
        raise InvalidInputError(f"{path} has no quadruples")
    return quads, resolve_curv(curv, recorded, str(path))


def _torch_arrays(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``'d dict (safe load: no code runs) -> float32 arrays by name."""
    try:
        import torch
    except ImportError:
        raise DependencyError(f"reading {path} needs torch (pip install 'hyperret[model]'), or save the four "
                              f"arrays as .npz") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (objects beyond tensors), truncated or foreign files
        raise SourceError(f"{path} is not a PyTorch file of tensors that loads safely ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{path} holds a {type(obj).__name__}, not a dict of embedding tensors")
    return {str(k): v.detach().float().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _read_table(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if head[:4] == b"PAR1":
            return pq.read_table(path)
        if head == b"ARROW1":
            return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        return pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{path} is not a readable Parquet, Arrow or .npz file ({str(e).splitlines()[0]})") from None
