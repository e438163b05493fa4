"""open_clip towers, built one at a time from an architecture config.

A text-only user builds (and reads the weights of) the text tower alone, and the
reverse. The architecture is an open_clip model name (``ViT-L-14-quickgelu``), a
config dict (``{"embed_dim": .., "vision_cfg": {..}, "text_cfg": {..}}``) or the
path of such a JSON file (open_clip's ``open_clip_config.json`` works too).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DependencyError

Arch = str | dict[str, Any]


def open_clip_module() -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise DependencyError(f"the model needs open_clip_torch and torch ({e}); "
                              f"pip install 'hyperret[model]'") from None
    return open_clip


def model_config(arch: Arch) -> tuple[str, dict[str, Any]]:
    """``(name, config)`` of an architecture given by name, dict or JSON path."""
    if isinstance(arch, dict):
        cfg = copy.deepcopy(arch.get("model_cfg", arch))
        name = str(arch.get("name", "custom"))
    elif str(arch).endswith(".json") or Path(str(arch)).is_file():
        try:
            raw = json.loads(Path(arch).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"architecture file {arch}: unreadable ({e})") from None
        cfg, name = raw.get("model_cfg", raw), Path(arch).stem
    else:
        cfg = open_clip_module().get_model_config(str(arch))
        if cfg is None:
            names = open_clip_module().list_models()
            raise CheckpointError(f"unknown open_clip architecture {arch!r} "
                                  f"(e.g. {', '.join(n for n in names if n.startswith('ViT-L-14'))})")
        cfg, name = copy.deepcopy(cfg), str(arch)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise CheckpointError(f"architecture {name}: config lacks {key!r}")
    return name, cfg


def build_text(cfg: dict[str, Any]) -> Any:
    """An open_clip text tower (``TextTransformer``) with random weights, eval mode."""
    from open_clip.model import _build_text_tower

    return _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=bool(cfg.get("quick_gelu"))).eval()


def build_vision(cfg: dict[str, Any]) -> Any:
    """An open_clip vision tower with random weights, eval mode."""
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=bool(cfg.get("quick_gelu"))).eval()


def load_tower(tower: Any, state: dict[str, Any], what: str, where: str) -> Any:
    """Load ``state`` into ``tower`` strictly: a missing or unexpected key is a :class:`CheckpointError`."""
    own = tower.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        if bad:
            k = bad[0]
            parts.append(f"{k} is {tuple(state[k].shape)}, the architecture wants {tuple(own[k].shape)}")
        raise CheckpointError(f"{where}: the {what} tower does not fit the architecture ({'; '.join(parts)})")
    tower.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return tower


def tokenizer(name: str, cfg: dict[str, Any]) -> Any:
    """The architecture's tokenizer: open_clip's own for a named model, CLIP's BPE for a config."""
    oc = open_clip_module()
    if name in oc.list_models():
        return oc.get_tokenizer(name)
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(cfg["text_cfg"].get("context_length", 77)))


def preprocess(cfg: dict[str, Any]) -> Any:
    """The eval transform (resize, centre crop, to tensor, normalise) of the architecture."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.transform import image_transform

    pp = cfg.get("preprocess_cfg", {})
    size = cfg["vision_cfg"].get("image_size", 224)
    return image_transform(
        size, is_train=False,
        mean=pp.get("mean", OPENAI_DATASET_MEAN), std=pp.get("std", OPENAI_DATASET_STD),
        resize_mode=pp.get("resize_mode"), interpolation=pp.get("interpolation"),
    )


def split_preprocess(cfg: dict[str, Any]) -> tuple[Any, tuple[float, ...], tuple[float, ...]]:
    """``(pil_to_uint8, mean, std)``: the eval transform up to an ``(3, S, S)`` uint8 tensor, and the
    normalisation that follows (``(x / 255 - mean) / std``), to run on the model's device."""
    from torchvision import transforms as T

    full = preprocess(cfg)
    steps, mean, std = [], None, None
    for t in full.transforms:
        if isinstance(t, T.Normalize):
            mean, std = tuple(float(m) for m in t.mean), tuple(float(s) for s in t.std)
        elif "ToTensor" not in type(t).__name__:
            steps.append(t)
    if mean is None or std is None:
        raise CheckpointError("the architecture's preprocessing has no Normalize step")
    return T.Compose([*steps, T.PILToTensor()]), mean, std


def image_size(cfg: dict[str, Any]) -> int:
    s = cfg["vision_cfg"].get("image_size", 224)
    return int(max(s) if isinstance(s, (list, tuple)) else s)
