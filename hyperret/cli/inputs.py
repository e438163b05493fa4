"""Reading what a command is given: query vectors, architectures, per-query lists, embedded queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .app import fail


def load_vectors(path: Path) -> Any:
    import numpy as np

    from ..errors import SourceError

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SourceError(f"query file {path} does not exist") from None
    except (ValueError, OSError) as e:
        raise SourceError(f"{path} is not a readable .npy file ({e})") from None


def parse_arch(arch: str | None) -> Any:
    """An ``--arch`` value: a name, a JSON file, or inline JSON."""
    if arch is not None and arch.lstrip().startswith("{"):
        try:
            return json.loads(arch)
        except ValueError as e:
            fail(f"--arch is not valid JSON ({e})")
    return arch


def listed(value: str) -> str | list[str]:
    """``a`` stays a string; ``a,b,c`` becomes a list (one entry per query)."""
    return [v.strip() for v in value.split(",")] if "," in value else value.strip()


def target_value(value: str | None) -> str | float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def embed_queries(ix: Any, texts: list[str], images: list[Path], *, model: str | None, arch: str | None,
                   device: str) -> tuple[Any, list[str]]:
    """Embed text and image queries with the index's model (or a checked ``model``): ``(vectors, modalities)``."""
    import numpy as np

    from ..embed.encoder import load_encoder
    from ..embed.runs import check_model
    from ..errors import ModelMismatchError

    recorded = ix.manifest.producer.get("model")
    arch_ = parse_arch(arch) if arch else (recorded or {}).get("arch")
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
