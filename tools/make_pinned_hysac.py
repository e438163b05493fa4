"""Build tests/fixtures/hysac_pinned/: a tiny HySAC checkpoint written by the versions HySAC pins.

HySAC's requirements pin transformers 4.31.0 and peft 0.4.0. That PEFT rebuilds the
LoRA-wrapped patch-embedding ``Conv2d`` with ``bias=True`` and keeps its random bias,
which HySAC's forward then uses. This tool writes a checkpoint the way HySAC's code
does under those versions, and the embeddings that HySAC's own forward (transformers
+ PEFT, adapters unmerged, HySAC's float32 head) computes for fixed inputs, so the
tests can hold hyperret's open_clip towers to them.

    python tools/make_pinned_hysac.py            # creates .venv-hysac-pinned/ once, then builds the fixture

Two stages: this interpreter (hyperret's dev environment) writes the inputs (texts,
their open_clip token ids, preprocessed pixels); a virtual environment of its own
(transformers==4.31.0, peft==0.4.0, accelerate==0.21.0, numpy<2 and ``--torch``,
default the torch on this machine's wheel cache) builds the model and the reference.
Files written to ``--out``: ``hysac_model.pth`` (HySAC's state dict, as
``torch.save(model.state_dict())``), ``arch.json`` (the same towers as an open_clip
config), ``reference.npz`` (texts, tokens, pixels, text and image embeddings, curv)
and ``versions.json`` (what wrote them).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = ["transformers==4.31.0", "peft==0.4.0", "accelerate==0.21.0", "numpy<2"]
#: Tiny towers: width 16 keeps the 49,408-token embedding table (CLIP's BPE vocabulary) at 3 MB.
WIDTH, HEADS, LAYERS, EMBED, IMAGE, PATCH, RANK = 16, 2, 2, 8, 28, 14, 4
TARGETS = ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"]  # HySAC's LoraConfig
TEXTS = ["a photo of a cat", "a dog on a skateboard", "", "an extremely long caption " * 30]


def write_inputs(out: Path) -> None:
    """Stage 1 (hyperret's environment): token ids from open_clip's tokenizer, preprocessed pixels."""
    import numpy as np
    from open_clip.tokenizer import SimpleTokenizer
    from PIL import Image

    from hyperret.embed.towers import preprocess

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import open_clip_arch

    arch = open_clip_arch(WIDTH, HEADS, LAYERS, EMBED, IMAGE, PATCH)
    rng = np.random.default_rng(11)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 9 * i, 52, 3), dtype=np.uint8)) for i in range(5)]
    pp = preprocess(arch)
    pixels = np.stack([pp(im).numpy() for im in images]).astype(np.float32)
    tokens = SimpleTokenizer()(TEXTS).numpy().astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arch.json").write_text(json.dumps(arch, indent=1) + "\n")
    np.savez(out / "inputs.npz", texts=np.array(TEXTS), tokens=tokens, pixels=pixels)


def build_reference(out: Path) -> None:
    """Stage 2 (the pinned environment): HySAC's model, its checkpoint and its embeddings."""
    import numpy as np
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(5)
    common = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_attention_heads=HEADS,
                  num_hidden_layers=LAYERS, projection_dim=EMBED, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **common))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=IMAGE, patch_size=PATCH, **common))
    # HySAC.from_pretrained's LoraConfig (r=16 there), one get_peft_model per tower
    cfg = LoraConfig(r=RANK, lora_alpha=1, target_modules=TARGETS, lora_dropout=0.1, bias="none")

    class HySAC(nn.Module):  # HySAC's attribute layout: CLIPBaseline, then HySAC's scalars
        def __init__(self) -> None:
            super().__init__()
            self.visual = get_peft_model(vision, cfg)
            self.textual = get_peft_model(text, cfg)
            self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
            self.register_buffer("pixel_mean", torch.tensor((0.485, 0.456, 0.406)).view(-1, 1, 1))
            self.register_buffer("pixel_std", torch.tensor((0.229, 0.224, 0.225)).view(-1, 1, 1))
            self.curv = nn.Parameter(torch.tensor(math.log(0.7)))
            self.visual_alpha = nn.Parameter(torch.tensor(math.log(1.3)))
            self.textual_alpha = nn.Parameter(torch.tensor(math.log(0.8)))

    model = HySAC().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # PEFT starts B at zero: make every adapter count
                p.copy_(torch.randn_like(p) * 0.2)
    sd = model.state_dict()
    bias = "visual.base_model.model.vision_model.embeddings.patch_embedding.bias"
    if bias not in sd:
        raise SystemExit(f"this PEFT ({peft.__version__}) did not write {bias}: not the pinned behaviour")
    torch.save(sd, out / "hysac_model.pth")

    inputs = np.load(out / "inputs.npz")
    c = model.curv.exp()
    with torch.no_grad():  # HySAC.encode_text / encode_image with project=True, float32 as HySAC runs them
        t = model.textual(input_ids=torch.from_numpy(inputs["tokens"])).text_embeds
        t = exp_map0(t * model.textual_alpha.exp(), c)
        v = model.visual(pixel_values=torch.from_numpy(inputs["pixels"])).image_embeds
        v = exp_map0(v * model.visual_alpha.exp(), c)
    np.savez(out / "reference.npz", texts=inputs["texts"], tokens=inputs["tokens"], pixels=inputs["pixels"],
             text=t.numpy(), image=v.numpy(), curv=np.float64(c.item()))
    (out / "inputs.npz").unlink()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "python": sys.version.split()[0], "lora_rank": RANK, "keys": len(sd),
                "patch_embedding_bias_abs_max": float(sd[bias].abs().max())}
    (out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")


def exp_map0(x, curv, eps: float = 1e-8):  # type: ignore[no-untyped-def]
    """HySAC's ``lorentz.exp_map0`` (MERU's), transcribed: float32, its clamps."""
    import torch

    rc_xnorm = curv**0.5 * torch.norm(x, dim=-1, keepdim=True)
    sinh_input = torch.clamp(rc_xnorm, min=eps, max=math.asinh(2**15))
    return torch.sinh(sinh_input) * x / torch.clamp(rc_xnorm, min=eps)


def ensure_venv(venv: Path, torch_spec: str) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch_spec, *PINS], check=True)
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "hysac_pinned")
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-hysac-pinned")
    ap.add_argument("--torch", dest="torch_spec", default="torch==2.13.0",
                    help="torch for the pinned environment (HySAC pins 2.0.1; any torch runs these versions' CLIP)")
    ap.add_argument("--stage", choices=["all", "reference"], default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "reference":
        build_reference(args.out)
        return
    write_inputs(args.out)
    python = ensure_venv(args.venv, args.torch_spec)
    subprocess.run([str(python), __file__, "--stage", "reference", "--out", str(args.out)], check=True)
    print(f"wrote {args.out}: {', '.join(sorted(p.name for p in args.out.iterdir()))}")


if __name__ == "__main__":
    main()
