"""Tiny HySAC-layout and open_clip checkpoints, built by the tests themselves (no downloads).

The HySAC one is what HySAC's training code saves: a module with ``visual`` and
``textual`` PEFT-LoRA-wrapped transformers CLIP towers (r=4 here, lora_alpha=1,
HySAC's targets, non-zero adapters), and the head scalars ``curv``,
``visual_alpha``, ``textual_alpha`` (log space) and ``logit_scale``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

WIDTH, HEADS, LAYERS, EMBED, IMAGE, PATCH = 32, 2, 2, 16, 28, 14
TARGETS = ["k_proj", "v_proj", "out_proj", "fc1", "fc2"]



def open_clip_arch(width: int, heads: int, layers: int, embed: int, image: int, patch: int) -> dict:
    """Tiny CLIP towers (QuickGELU, CLIP's 49,408-token vocabulary) as an open_clip config dict."""
    return {
        "embed_dim": embed,
        "quick_gelu": True,
        "vision_cfg": {"image_size": image, "layers": layers, "width": width, "patch_size": patch,
                       "head_width": width // heads},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads, "layers": layers},
    }


#: The same architecture as an open_clip config dict.
ARCH = open_clip_arch(WIDTH, HEADS, LAYERS, EMBED, IMAGE, PATCH)


def hf_configs():
    from transformers import CLIPTextConfig, CLIPVisionConfig

    common = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_attention_heads=HEADS,
                  num_hidden_layers=LAYERS, projection_dim=EMBED, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406,
                          pad_token_id=0, **common)
    vision = CLIPVisionConfig(image_size=IMAGE, patch_size=PATCH, num_channels=3, **common)
    return text, vision


class TinyHySAC(nn.Module):
    """HySAC's module layout around tiny towers."""

    def __init__(self, seed: int = 0, r: int = 4):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

        torch.manual_seed(seed)
        tcfg, vcfg = hf_configs()
        text = CLIPTextModelWithProjection(tcfg)
        vision = CLIPVisionModelWithProjection(vcfg)
        self.textual = get_peft_model(text, LoraConfig(r=r, lora_alpha=1, target_modules=TARGETS, lora_dropout=0.0))
        self.visual = get_peft_model(vision, LoraConfig(r=r, lora_alpha=1, target_modules=TARGETS + ["patch_embedding"],
                                                        lora_dropout=0.0))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "lora_" in name:  # PEFT starts B at zero: make every adapter count
                    p.copy_(torch.randn_like(p) * 0.2)
        self.curv = nn.Parameter(torch.tensor(math.log(0.7)))
        self.visual_alpha = nn.Parameter(torch.tensor(math.log(1.3)))
        self.textual_alpha = nn.Parameter(torch.tensor(math.log(0.8)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.register_buffer("pixel_mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]))
        self.register_buffer("pixel_std", torch.tensor([0.26862954, 0.26130258, 0.27577711]))
        self.eval()

    @torch.no_grad()
    def reference_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """transformers + PEFT (adapters unmerged) + HySAC's head: Lorentz space components."""
        feats = self.textual(input_ids=tokens).text_embeds
        return exp_map0(feats * self.textual_alpha.exp(), self.curv.exp())

    @torch.no_grad()
    def reference_image(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.visual(pixel_values=pixels).image_embeds
        return exp_map0(feats * self.visual_alpha.exp(), self.curv.exp())


def exp_map0(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """MERU's exponential map at the origin (float64 here)."""
    v = v.double()
    rc = c.double().sqrt()
    n = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.sinh(rc * n) * v / (rc * n)


def old_peft_layout(state: dict) -> dict:
    """The key layout of PEFT before 0.7: a wrapped layer's base weight at ``X.weight``."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


def save_hysac(model: TinyHySAC, path: Path, *, layout: str = "new", wrap: bool = False,
               fmt: str = "pth") -> Path:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if layout == "old":
        sd = old_peft_layout(sd)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
        return path
    torch.save({"model": sd} if wrap else sd, path)
    return path


def save_open_clip(path: Path, seed: int = 1) -> Path:
    """A random open_clip CLIP of :data:`ARCH`, saved as open_clip saves its weights."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(ARCH["embed_dim"], ARCH["vision_cfg"], ARCH["text_cfg"], quick_gelu=True).eval()
    torch.save(model.state_dict(), path)
    return path
