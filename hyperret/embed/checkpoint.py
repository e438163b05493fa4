"""Finding and safely opening model checkpoints.

A checkpoint is a local file, a local directory holding one, or a Hugging Face
repository id (``owner/name``) fetched through ``huggingface_hub`` (cached; it
fails cleanly offline). Loading never executes pickled code: PyTorch files go
through ``torch.load(weights_only=True)`` (memory-mapped when the file allows,
so only the tensors a caller touches are read), safetensors through
``safe_open``; any other format is refused.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DependencyError, first_line

#: File names looked for in a directory or a Hugging Face repository, in order.
MODEL_FILES = (
    "hysac_model.pth",
    "hysac_model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
BOUNDS_FILE = "hysac_bounds.json"
#: Wrappers a training script may put around the state dict.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


@dataclass(frozen=True)
class Located:
    """A checkpoint on local disk: the model file and the bounds file beside it (if any)."""

    spec: str  # what the user gave: a path or a Hugging Face repo id
    path: Path  # the model file
    bounds: Path | None  # hysac_bounds.json beside it, when present
    hub: bool  # fetched from the Hugging Face Hub


def locate(spec: str | Path) -> Located:
    """Resolve a path, directory or Hugging Face repo id to a local model file."""
    p = Path(spec).expanduser()
    if p.is_file():
        return Located(str(spec), p.resolve(), _beside(p.resolve().parent), hub=False)
    if p.is_dir():
        for name in MODEL_FILES:
            if (p / name).is_file():
                return Located(str(spec), (p / name).resolve(), _beside(p.resolve()), hub=False)
        raise CheckpointError(f"{p} holds none of the model files hyperret looks for ({', '.join(MODEL_FILES)})")
    s = str(spec)
    if p.exists() or s.count("/") != 1 or s.startswith((".", "/", "~")) or not all(s.split("/")):
        raise CheckpointError(f"model checkpoint {s} does not exist")
    return _from_hub(s)


def _beside(directory: Path) -> Path | None:
    b = directory / BOUNDS_FILE
    return b if b.is_file() else None


def _from_hub(repo: str) -> Located:
    """Download (or find in the local cache, also offline) the first model file the repo has."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DependencyError(f"{repo} is not a local file, and huggingface_hub is not installed to fetch it") from None
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would break the one-line error
    try:
        return _download(repo, hf_hub_download)
    finally:
        hub_log.setLevel(level)


def _download(repo: str, hf_hub_download: Any) -> Located:
    errors: list[str] = []
    for name in MODEL_FILES:
        try:
            path = Path(hf_hub_download(repo, name))
        except Exception as e:  # not in the repo, offline and not cached, unknown repo, auth
            errors.append(f"{type(e).__name__}")
            if type(e).__name__ != "EntryNotFoundError":
                break  # only "no such file in this repo" is worth trying the next name for
            continue
        try:
            bounds = Path(hf_hub_download(repo, BOUNDS_FILE))
        except Exception:
            bounds = None  # optional
        return Located(repo, path, bounds, hub=True)
    raise CheckpointError(f"cannot get a model file ({', '.join(MODEL_FILES[:2])}, ...) from the Hugging Face "
                          f"repo {repo} ({errors[-1] if errors else 'no answer'}; offline, or not cached); "
                          f"pass a local path to the checkpoint instead")


class TensorFile:
    """The tensors of a checkpoint by name, read on first access.

    ``keys()`` lists every name; ``get(name)`` returns a CPU tensor. The wrapper
    keys of training checkpoints (``model``, ``state_dict``) and DDP's ``module.``
    prefix are removed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        kind = sniff(self.path)
        self.kind = kind
        self._safe = None
        self._dict: dict[str, Any] = {}  # the torch state dict (safetensors files read through _safe)
        if kind == "safetensors":
            try:
                from safetensors import safe_open
            except ImportError:
                raise DependencyError("safetensors is not installed (pip install safetensors)") from None
            try:
                self._safe = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as e:
                raise CheckpointError(f"{self.path}: unreadable safetensors file ({first_line(e)})") from None
            names = list(self._safe.keys())
        else:
            self._dict = _torch_load(self.path, mmap=kind == "torch-zip")
            names = list(self._dict)
        prefix = "module." if names and all(n.startswith("module.") for n in names) else ""
        self._names = {n[len(prefix):]: n for n in names}

    def keys(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def get(self, name: str) -> Any:
        """The tensor called ``name`` (a ``torch.Tensor`` on the CPU)."""
        import torch

        raw = self._names[name]
        t = self._safe.get_tensor(raw) if self._safe is not None else self._dict[raw]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{self.path}: entry {name!r} is not a tensor")
        return t

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for n in self._names:
            if n.startswith(prefix):
                yield n, self.get(n)


def sniff(path: Path) -> str:
    """``torch-zip``, ``torch-legacy`` or ``safetensors``; anything else is a :class:`CheckpointError`."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"model checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    raise CheckpointError(f"{path} is not a PyTorch or safetensors checkpoint")


def _torch_load(path: Path, *, mmap: bool) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise DependencyError("the model needs torch: pip install 'hyperret[model]'") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as e:
        if mmap and "mmap" in str(e):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{path}: unreadable PyTorch checkpoint ({first_line(e)})") from None
    except Exception as e:  # UnpicklingError: the file wants to run code that weights_only forbids
        if type(e).__name__ == "UnpicklingError":
            raise CheckpointError(f"{path}: refused: it holds Python objects beyond tensors, which a safe "
                                  f"load (weights_only=True) will not execute") from None
        raise CheckpointError(f"{path}: unreadable PyTorch checkpoint ({first_line(e)})") from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj
