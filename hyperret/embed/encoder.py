"""Encoders: images and text in, float32 vectors out.

- :class:`HySACEncoder`: HySAC's checkpoint (Hugging Face CLIP + PEFT LoRA,
  merged on load) on open_clip towers; embeddings are the space components of
  Lorentz points, ``exp_map0(proj(pooled) * exp(alpha), curv)``.
- :class:`CLIPEncoder`: any open_clip (or transformers-format) CLIP checkpoint,
  L2-normalised features: the Euclidean (cosine) baseline.

Towers are built on first use: a text-only user never builds or reads the vision
tower, and the reverse. Inference runs under ``torch.inference_mode``, batched,
with autocast on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, InvalidInputError
from ..geometry import lorentz
from ..storage.fsutil import sha256_file
from . import checkpoint as ckpt
from . import convert, towers
from .images import ImageSkipped, decode, read_file, to_rgb

DEFAULT_ARCH = "ViT-L-14-quickgelu"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
HYSAC_SCALARS = ("curv", "visual_alpha", "textual_alpha")
#: Top-level entries of HySAC's state dict that the embeddings do not use: the contrastive
#: temperature and the training-time pixel statistics (preprocessing uses CLIP's own).
HYSAC_UNUSED = ("logit_scale", "pixel_mean", "pixel_std")


class Encoder:
    """What every encoder offers: ``encode_text``, ``encode_images``, ``encode_pixels``, ``describe``."""

    kind: str = ""
    geometry: str = ""  # "lorentz" or "cosine"

    def __init__(self, located: ckpt.Located, tensors: ckpt.TensorFile, arch: towers.Arch, device: str,
                 precision: str = "auto"):
        self.located = located
        self._tensors = tensors
        self.arch_name, self.config = towers.model_config(arch)
        self._arch = arch
        self.device = _device(device)
        if precision not in PRECISIONS:
            raise InvalidInputError(f"unknown precision {precision!r} (one of: {', '.join(PRECISIONS)})")
        self.precision = precision
        self._text: Any = None
        self._vision: Any = None
        self._tokenizer: Any = None
        self._preprocess: Any = None
        self._split: Any = None  # (pil -> uint8 transform, mean, std)
        self._norm: Any = None  # (mean, std) tensors on the device
        self._sha256: str | None = None

    # ---------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Dimension of the vectors returned."""
        return int(self.config["embed_dim"])

    @property
    def curv(self) -> float:
        raise NotImplementedError

    @property
    def arch_record(self) -> towers.Arch:
        """The architecture as an index records it: an open_clip name, else the whole config."""
        if isinstance(self._arch, str) and self.arch_name == self._arch and not self._arch.endswith(".json"):
            return self._arch
        return {"name": self.arch_name, **{k: v for k, v in self.config.items() if k != "name"}}

    @property
    def image_size(self) -> int:
        return towers.image_size(self.config)

    @property
    def preprocess(self) -> Any:
        """The eval transform: RGB PIL image -> ``(3, S, S)`` float tensor."""
        if self._preprocess is None:
            self._preprocess = towers.preprocess(self.config)
        return self._preprocess

    @property
    def pixel_transform(self) -> Any:
        """The cheap half of :attr:`preprocess` for worker processes: RGB PIL image -> ``(3, S, S)`` uint8 tensor
        (resize, centre crop); :meth:`encode_uint8` normalises on the model's device."""
        if self._split is None:
            self._split = towers.split_preprocess(self.config)
        return self._split[0]

    @property
    def loaded_towers(self) -> tuple[str, ...]:
        """Which towers have been built so far (``text``, ``vision``)."""
        return tuple(n for n, t in (("text", self._text), ("vision", self._vision)) if t is not None)

    # ------------------------------------------------------------- encoding
    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 256) -> np.ndarray:
        """Text -> ``(n, dim)`` float32 vectors."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("encode_text takes strings")
        if self._tokenizer is None:
            self._tokenizer = towers.tokenizer(self.arch_name, self.config)
        tower = self._text_tower()
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), batch_size):
            tokens = self._tokenizer(texts[i : i + batch_size])
            out.append(self._finish(self._forward(tower, tokens), "text"))
        return np.concatenate(out)

    def encode_images(self, images: Sequence[Any] | Any, batch_size: int = 32) -> np.ndarray:
        """Image paths or PIL images -> ``(n, dim)`` float32 vectors (EXIF orientation and modes handled)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), batch_size):
            pixels = [self.pixel_transform(self._rgb(im)) for im in images[i : i + batch_size]]
            out.append(self.encode_uint8(_stack(pixels)))
        return np.concatenate(out)

    def encode_uint8(self, pixels: Any) -> np.ndarray:
        """A batch from :attr:`pixel_transform`, ``(n, 3, S, S)`` uint8, -> ``(n, dim)`` float32 vectors.

        Moving uint8 (a quarter of the bytes) and normalising on the device is what
        keeps the indexing pipeline fed; the result equals :meth:`encode_pixels` of
        :attr:`preprocess`'s output.
        """
        import torch

        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._norm is None:
            _ = self.pixel_transform  # builds self._split
            _, mean, std = self._split
            self._norm = (torch.tensor(mean, device=self.device).view(1, 3, 1, 1),
                          torch.tensor(std, device=self.device).view(1, 3, 1, 1))
        with torch.inference_mode():
            x = pixels.to(self.device, non_blocking=True).float().div_(255.0)
            x = (x - self._norm[0]) / self._norm[1]
        return self.encode_pixels(x)

    def encode_pixels(self, pixels: Any) -> np.ndarray:
        """A preprocessed batch ``(n, 3, S, S)`` (torch tensor) -> ``(n, dim)`` float32 vectors."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._finish(self._forward(self._vision_tower(), pixels), "image")

    def _rgb(self, im: Any) -> Any:
        if isinstance(im, (str, Path)):
            try:
                data, _ = read_file(im)
                return decode(data, draft=2 * self.image_size).image
            except ImageSkipped as e:
                raise InvalidInputError(f"{im}: {e}") from None
        if hasattr(im, "mode") and hasattr(im, "convert"):
            return to_rgb(im)
        raise InvalidInputError(f"encode_images takes paths or PIL images, got {type(im).__name__}")

    def _forward(self, tower: Any, batch: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = batch.to(self.device, non_blocking=True)
            dtype = self._autocast_dtype()
            if dtype is None:
                feats = tower(batch)
            else:
                with torch.autocast(device_type=self.device.type, dtype=dtype):
                    feats = tower(batch)
            return feats.float().cpu().numpy()

    def _autocast_dtype(self) -> Any:
        import torch

        if self.precision == "fp32" or (self.precision == "auto" and self.device.type != "cuda"):
            return None
        if self.precision == "fp16":
            return torch.float16
        return torch.bfloat16

    def _finish(self, feats: np.ndarray, modality: str) -> np.ndarray:
        raise NotImplementedError

    # --------------------------------------------------------------- towers
    def _text_tower(self) -> Any:
        if self._text is None:
            t = towers.build_text(self.config)
            towers.load_tower(t, self._text_state(), "text", str(self.located.path))
            self._text = t.to(self.device)
        return self._text

    def _vision_tower(self) -> Any:
        if self._vision is None:
            v = towers.build_vision(self.config)
            towers.load_tower(v, self._vision_state(), "vision", str(self.located.path))
            self._vision = v.to(self.device)
        return self._vision

    def _text_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _vision_state(self) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------- identity
    def sha256(self) -> str:
        """SHA-256 of the checkpoint file (computed once)."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.located.path)
        return self._sha256

    def describe(self) -> dict[str, Any]:
        """What an index records about the model that built it."""
        return {
            "kind": self.kind,
            "checkpoint": self.located.spec if self.located.hub else str(self.located.path),
            "hub": self.located.hub,
            "file_bytes": self.located.path.stat().st_size,
            "file_sha256": self.sha256(),
            "arch": self.arch_record,
            "geometry": self.geometry,
            "dim": self.dim,
            "curv": self.curv,
        }


class HySACEncoder(Encoder):
    """HySAC (Hyperbolic Safety-Aware CLIP): images and text to Lorentz space components.

    >>> enc = HySACEncoder.from_checkpoint("hysac_model.pth")   # doctest: +SKIP
    >>> enc.encode_text(["a photo of a cat"]).shape               # doctest: +SKIP
    (1, 768)
    """

    kind = "hysac"
    geometry = "lorentz"

    def __init__(self, located: ckpt.Located, tensors: ckpt.TensorFile, arch: towers.Arch, device: str,
                 precision: str = "auto", lora_alpha: float = 1.0):
        super().__init__(located, tensors, arch, device, precision)
        self.lora_alpha = float(lora_alpha)
        self.config["quick_gelu"] = True  # HySAC is OpenAI CLIP ViT-L/14: QuickGELU, always
        where = str(located.path)
        head = {}
        for name in HYSAC_SCALARS:
            if name not in tensors:
                raise CheckpointError(f"{where}: not a HySAC checkpoint (no {name!r} scalar; for a plain "
                                      f"open_clip model use the Euclidean CLIPEncoder)")
            head[name] = float(tensors.get(name).float().reshape(-1)[0])
        self._curv = math.exp(head["curv"])
        self.visual_scale = math.exp(head["visual_alpha"])
        self.textual_scale = math.exp(head["textual_alpha"])
        self._text_prefix = _peft_prefix(tensors.keys(), "textual.", "text_model.", where)
        self._vision_prefix = _peft_prefix(tensors.keys(), "visual.", "vision_model.", where)
        towers_ = (self._text_prefix, self._vision_prefix)
        stray = [k for k in tensors.keys() if k not in HYSAC_SCALARS + HYSAC_UNUSED and not k.startswith(towers_)]
        if stray:
            raise CheckpointError(f"{where}: entries outside HySAC's layout ({', '.join(stray[:3])}"
                                  f"{' ...' if len(stray) > 3 else ''}); refusing to drop them, since they may "
                                  f"change the embeddings")
        self.bounds = None
        if located.bounds is not None:
            from ..safety.bounds import Bounds

            self.bounds = Bounds.load(located.bounds)

    @classmethod
    def from_checkpoint(cls, path: str | Path, arch: towers.Arch = DEFAULT_ARCH, device: str = "cpu", *,
                        lora_alpha: float = 1.0, precision: str = "auto") -> HySACEncoder:
        """Load ``hysac_model.pth`` (a path, a directory or the Hugging Face repo ``aimagelab/hysac``).

        ``arch``: the open_clip architecture (name, config dict or JSON path).
        ``lora_alpha``: the LoRA scale numerator (HySAC trained with 1; ``r`` comes
        from the shapes). ``precision``: ``auto`` (bf16 autocast on a GPU, fp32 on
        the CPU), ``fp32``, ``fp16`` or ``bf16``. A ``hysac_bounds.json`` beside the
        file becomes ``.bounds``.
        """
        located = ckpt.locate(path)
        return cls(located, ckpt.TensorFile(located.path), arch, device, precision, lora_alpha)

    @property
    def curv(self) -> float:
        """Curvature ``c`` of the hyperboloid (``exp`` of the stored log-curvature)."""
        return self._curv

    def _text_state(self) -> dict[str, Any]:
        hf = convert.merge_lora(self._tensors.keys(), self._tensors.get, self._text_prefix,
                                lora_alpha=self.lora_alpha, where=str(self.located.path))
        return convert.hf_text_to_open_clip(hf, str(self.located.path))

    def _vision_state(self) -> dict[str, Any]:
        hf = convert.merge_lora(self._tensors.keys(), self._tensors.get, self._vision_prefix,
                                lora_alpha=self.lora_alpha, where=str(self.located.path))
        return convert.hf_vision_to_open_clip(hf, str(self.located.path))

    def _finish(self, feats: np.ndarray, modality: str) -> np.ndarray:
        scale = self.textual_scale if modality == "text" else self.visual_scale
        return lorentz.exp_map0(feats.astype(np.float64) * scale, self._curv).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lora_alpha": self.lora_alpha}


class CLIPEncoder(Encoder):
    """A Euclidean CLIP (OpenAI CLIP, Safe-CLIP, any open_clip checkpoint): unit vectors, compared by cosine."""

    kind = "open_clip"
    geometry = "cosine"

    def __init__(self, located: ckpt.Located, tensors: ckpt.TensorFile, arch: towers.Arch, device: str,
                 precision: str = "auto"):
        super().__init__(located, tensors, arch, device, precision)
        keys = tensors.keys()
        self.layout = "hf" if any(k.startswith(("text_model.", "vision_model.")) for k in keys) else "open_clip"
        if self.layout == "open_clip" and not any(k.startswith("visual.") for k in keys):
            raise CheckpointError(f"{located.path}: neither an open_clip nor a transformers CLIP state dict")

    @classmethod
    def from_checkpoint(cls, path: str | Path, arch: towers.Arch = DEFAULT_ARCH, device: str = "cpu", *,
                        precision: str = "auto") -> CLIPEncoder:
        """Load an open_clip (``open_clip_pytorch_model.bin``) or transformers CLIP checkpoint."""
        located = ckpt.locate(path)
        return cls(located, ckpt.TensorFile(located.path), arch, device, precision)

    @property
    def curv(self) -> float:
        """The unit sphere sits on the hyperboloid of curvature 1 (see :mod:`hyperret.geometry.cosine`)."""
        return 1.0

    def _text_state(self) -> dict[str, Any]:
        t = self._tensors
        if self.layout == "hf":
            return convert.hf_text_to_open_clip({k: t.get(k) for k in t.keys()
                                                 if k.startswith(("text_model.", "text_projection"))})
        if any(k.startswith("text.") for k in t.keys()):  # open_clip CustomTextCLIP
            return {k[5:]: v for k, v in t.items("text.")}
        skip = ("visual.", "logit_scale", "logit_bias")
        return {k: t.get(k) for k in t.keys() if not k.startswith(skip)}

    def _vision_state(self) -> dict[str, Any]:
        t = self._tensors
        if self.layout == "hf":
            return convert.hf_vision_to_open_clip({k: t.get(k) for k in t.keys()
                                                   if k.startswith(("vision_model.", "visual_projection"))})
        return {k[7:]: v for k, v in t.items("visual.")}

    def _finish(self, feats: np.ndarray, modality: str) -> np.ndarray:
        f = feats.astype(np.float64)
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        return (f / np.maximum(norms, 1e-12)).astype(np.float32)


def load_encoder(spec: str | Path, arch: towers.Arch | None = None, device: str = "cpu", *,
                 kind: str = "auto", precision: str = "auto", lora_alpha: float = 1.0) -> Encoder:
    """The encoder for a checkpoint: HySAC when it has HySAC's head scalars, else Euclidean CLIP (``kind=auto``)."""
    if kind not in ("auto", "hysac", "open_clip"):
        raise InvalidInputError(f"unknown model kind {kind!r} (auto, hysac or open_clip)")
    located = ckpt.locate(spec)
    tensors = ckpt.TensorFile(located.path)
    if kind == "auto":
        kind = "hysac" if "curv" in tensors and any(k.startswith("textual.") for k in tensors.keys()) \
            else "open_clip"
    arch = DEFAULT_ARCH if arch is None else arch
    if kind == "hysac":
        return HySACEncoder(located, tensors, arch, device, precision, lora_alpha)
    return CLIPEncoder(located, tensors, arch, device, precision)


def _peft_prefix(keys: Sequence[str], top: str, marker: str, where: str) -> str:
    """The prefix before ``marker`` of the keys under ``top`` (e.g. ``textual.base_model.model.``)."""
    for k in keys:
        if k.startswith(top) and marker in k:
            return k[: k.index(marker)]
    raise CheckpointError(f"{where}: no {top}*{marker} weights (not HySAC's layout)")


def _device(device: str) -> Any:
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"unknown device {device!r} (cpu, cuda, cuda:N)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device cuda asked for, but torch sees no CUDA GPU here")
    return d


def _stack(pixels: list[Any]) -> Any:
    import torch

    return torch.stack(pixels)
