"""Hugging Face CLIP (+ PEFT LoRA) state dicts to open_clip tower state dicts.

Two steps, each a pure function of tensors:

1. :func:`merge_lora` folds every LoRA adapter into its base weight,
   ``W + (alpha / r) * B @ A`` (a Conv2d adapter: ``A`` a conv with the base's
   kernel, ``B`` a 1x1 conv), with ``r`` read from the shapes, and strips the
   PEFT wrapper names. Both PEFT layouts are accepted: the base weight at
   ``X.weight`` (older PEFT) or ``X.base_layer.weight``.
2. :func:`hf_text_to_open_clip` / :func:`hf_vision_to_open_clip` rename the
   transformers CLIP keys to open_clip's: ``q/k/v_proj`` concatenate into
   ``attn.in_proj_*``, ``fc1/fc2`` become ``mlp.c_fc/c_proj``, projections are
   transposed (open_clip stores ``width x embed_dim``).

Every key is accounted for: a key the conversion neither maps nor knows to be
inert is a :class:`CheckpointError`, never silently dropped. Two keys need care:

- ``embeddings.position_ids`` (a buffer transformers 4.31 still saved) is inert
  when it holds ``0 .. L-1``, as transformers makes it; anything else is refused.
- ``embeddings.patch_embedding.bias``: PEFT 0.4.0 (the version HySAC pins)
  rebuilds a LoRA-wrapped ``Conv2d`` with its default ``bias=True`` and keeps
  that randomly initialised bias, so HySAC's own forward adds it to every patch
  token. open_clip's ``conv1`` has no bias; since the patch tokens get the
  positional embedding added right after the convolution, the bias is folded
  into the patch positions (``positional_embedding[1:] += bias``; row 0 is the
  class token's), which is the same forward up to float rounding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import CheckpointError

Getter = Callable[[str], Any]  # name -> torch.Tensor

_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?:(?P<adapter>[^.]+)\.)?weight$")


def merge_lora(names: Iterable[str], get: Getter, prefix: str, *, lora_alpha: float = 1.0,
               where: str = "checkpoint") -> dict[str, Any]:
    """Plain (adapter-free) state dict of the modules under ``prefix``, LoRA merged; keys lose ``prefix``."""
    names = [n for n in names if n.startswith(prefix)]
    if not names:
        raise CheckpointError(f"{where}: no weights under {prefix!r}")
    adapters: dict[str, dict[str, str]] = {}
    adapter_names: set[str] = set()
    plain: dict[str, str] = {}
    for n in names:
        key = n[len(prefix):]
        m = _LORA.match(key)
        if m:
            adapters.setdefault(m["module"], {})[m["ab"]] = n
            adapter_names.add(m["adapter"] or "")
        elif ".lora_" in key:  # embedding adapters, DoRA magnitudes: they change the forward
            raise CheckpointError(f"{where}: {n} is a kind of adapter hyperret does not merge (only LoRA A/B "
                                  f"matrices of Linear and Conv2d layers)")
        else:
            plain[key.replace(".base_layer.", ".")] = n
    if len(adapter_names) > 1:
        raise CheckpointError(f"{where}: several LoRA adapters ({', '.join(sorted(adapter_names))}); "
                              f"hyperret merges one")
    out: dict[str, Any] = {}
    for key, n in plain.items():
        out[key] = get(n)
    for module, ab in adapters.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{where}: LoRA adapter of {module} lacks its {'B' if 'A' in ab else 'A'} matrix")
        wkey = f"{module}.weight"
        if wkey not in out:
            raise CheckpointError(f"{where}: LoRA adapter of {module} has no base weight")
        w = out[wkey].float()
        a, b = get(ab["A"]).float(), get(ab["B"]).float()
        out[wkey] = (w + lora_delta(a, b, w.shape, lora_alpha, module, where)).contiguous()
    return out


def lora_delta(a: Any, b: Any, shape: Any, lora_alpha: float, module: str = "", where: str = "") -> Any:
    """``(alpha / r) * B @ A`` in the base weight's ``shape`` (Linear ``(out, in)`` or Conv2d ``(out, in, kh, kw)``)."""
    r = a.shape[0]
    if b.shape[0] != shape[0] or b.shape[1] != r or a.reshape(r, -1).shape[1] != _prod(shape[1:]):
        raise CheckpointError(f"{where}: LoRA shapes of {module} (A {tuple(a.shape)}, B {tuple(b.shape)}) "
                              f"do not fit its weight {tuple(shape)}")
    if b.dim() == 4 and tuple(b.shape[2:]) != (1, 1):
        raise CheckpointError(f"{where}: LoRA B of {module} is a {tuple(b.shape[2:])} conv; only 1x1 merges")
    delta = b.reshape(b.shape[0], r) @ a.reshape(r, -1)
    return (delta * (lora_alpha / r)).reshape(shape)


def _prod(xs: Iterable[int]) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _layers(hf: dict[str, Any], base: str) -> list[int]:
    pat = re.compile(rf"^{re.escape(base)}\.encoder\.layers\.(\d+)\.")
    return sorted({int(m[1]) for k in hf if (m := pat.match(k))})


#: Per-layer renames, transformers -> open_clip (``q/k/v_proj`` concatenate into ``attn.in_proj_*``).
_BLOCK_RENAMES = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                  ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
#: Every per-layer transformers key (under ``encoder.layers.N.``) that :func:`_blocks` maps.
_BLOCK_KEYS = tuple(f"{m}.{p}" for m in [f"self_attn.{x}_proj" for x in "qkv"] + [s for s, _ in _BLOCK_RENAMES]
                    for p in ("weight", "bias"))


def _blocks(hf: dict[str, Any], base: str, where: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for i in _layers(hf, base):
        s = f"{base}.encoder.layers.{i}."
        d = f"transformer.resblocks.{i}."
        try:
            out[d + "attn.in_proj_weight"] = torch.cat([hf[s + f"self_attn.{p}_proj.weight"] for p in "qkv"])
            out[d + "attn.in_proj_bias"] = torch.cat([hf[s + f"self_attn.{p}_proj.bias"] for p in "qkv"])
            for src, dst in _BLOCK_RENAMES:
                out[d + dst + ".weight"] = hf[s + src + ".weight"]
                out[d + dst + ".bias"] = hf[s + src + ".bias"]
        except KeyError as e:
            raise CheckpointError(f"{where}: layer {i} of {base} lacks {e.args[0]}") from None
    return out


#: Per tower: the transformers model prefix, open_clip key <- transformers key (under the prefix),
#: and the projection (transposed: open_clip stores it ``width x embed_dim``).
_TOWERS = {
    "text": ("text_model", {
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_final.weight": "final_layer_norm.weight",
        "ln_final.bias": "final_layer_norm.bias",
    }, ("text_projection", "text_projection.weight")),
    "vision": ("vision_model", {
        "class_embedding": "embeddings.class_embedding",
        "positional_embedding": "embeddings.position_embedding.weight",
        "conv1.weight": "embeddings.patch_embedding.weight",
        "ln_pre.weight": "pre_layrnorm.weight",
        "ln_pre.bias": "pre_layrnorm.bias",
        "ln_post.weight": "post_layernorm.weight",
        "ln_post.bias": "post_layernorm.bias",
    }, ("proj", "visual_projection.weight")),
}


def _to_open_clip(hf: dict[str, Any], tower: str, where: str) -> dict[str, Any]:
    base, keys, (proj_dst, proj_src) = _TOWERS[tower]
    try:
        out = {dst: hf[f"{base}.{src}"] for dst, src in keys.items()}
        out[proj_dst] = hf[proj_src].t().contiguous()
    except KeyError as e:
        raise CheckpointError(f"{where}: the {tower} tower lacks {e.args[0]}") from None
    out.update(_blocks(hf, base, where))
    used = {f"{base}.{src}" for src in keys.values()} | {proj_src}
    used |= {f"{base}.encoder.layers.{i}.{k}" for i in _layers(hf, base) for k in _BLOCK_KEYS}
    pos_ids = f"{base}.embeddings.position_ids"
    if pos_ids in hf:
        _check_position_ids(hf[pos_ids], pos_ids, where)
        used.add(pos_ids)
    bias = f"{base}.embeddings.patch_embedding.bias"
    if tower == "vision" and bias in hf:
        out["positional_embedding"] = fold_patch_bias(out["positional_embedding"], hf[bias], where)
        used.add(bias)
    unknown = sorted(set(hf) - used)
    if unknown:
        raise CheckpointError(f"{where}: the {tower} tower has weights hyperret does not know how to map "
                              f"({', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}); refusing to drop "
                              f"them, since they may change the embeddings")
    return out


def fold_patch_bias(pos: Any, bias: Any, where: str = "checkpoint") -> Any:
    """Positional embedding ``(1 + P, W)`` with a patch-embedding bias ``(W,)`` added to the ``P`` patch rows."""
    if tuple(bias.shape) != (pos.shape[1],):
        raise CheckpointError(f"{where}: patch_embedding.bias is {tuple(bias.shape)}, the tower's width is "
                              f"{pos.shape[1]}")
    out = pos.float().clone()
    out[1:] += bias.float()
    return out


def _check_position_ids(ids: Any, name: str, where: str) -> None:
    """transformers' ``position_ids`` buffer: inert only as ``0 .. L-1``."""
    import torch

    flat = ids.reshape(-1)
    if ids.dtype.is_floating_point or not torch.equal(flat.long(), torch.arange(flat.numel())):
        raise CheckpointError(f"{where}: {name} is not 0 .. {flat.numel() - 1}: such positions change the "
                              f"embeddings and open_clip's towers cannot reproduce them")


def hf_text_to_open_clip(hf: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """transformers ``CLIPTextModelWithProjection`` keys -> open_clip ``TextTransformer`` keys."""
    return _to_open_clip(hf, "text", where)


def hf_vision_to_open_clip(hf: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """transformers ``CLIPVisionModelWithProjection`` keys -> open_clip ``VisionTransformer`` keys."""
    return _to_open_clip(hf, "vision", where)
