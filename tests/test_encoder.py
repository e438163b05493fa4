"""HySAC and open_clip encoders against transformers + PEFT references, on tiny models built here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import ARCH, TinyHySAC, save_hysac, save_open_clip  # noqa: E402

from hyperret.embed import checkpoint as ckpt  # noqa: E402
from hyperret.embed.encoder import CLIPEncoder, HySACEncoder, load_encoder  # noqa: E402
from hyperret.errors import CheckpointError  # noqa: E402

TEXTS = ["a photo of a cat", "a dog on a skateboard", "", "an extremely long caption " * 30]
TOL = 1e-4
#: hysac_bounds.json's layout: per ViSU class letter, radius statistics
BOUNDS = {c: {"up_95": u, "low_05": lo, "avg": (u + lo) / 2}
          for c, u, lo in (("S", 0.5, 0.2), ("U", 1.0, 0.6), ("V", 0.7, 0.3), ("G", 1.3, 0.8))}


@pytest.fixture(scope="module")
def hysac():
    return TinyHySAC(seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, hysac):
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "new": save_hysac(hysac, d / "new.pth"),
        "old": save_hysac(hysac, d / "old.pth", layout="old"),
        "wrapped": save_hysac(hysac, d / "wrapped.pth", layout="old", wrap=True),
        "safetensors": save_hysac(hysac, d / "model.safetensors", fmt="safetensors"),
    }


def _tokens(texts):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()(texts)


def test_fixture_is_hysac_layout(files):
    keys = ckpt.TensorFile(files["new"]).keys()
    assert "curv" in keys and "visual_alpha" in keys and "textual_alpha" in keys
    assert any(k.endswith("k_proj.base_layer.weight") for k in keys)  # PEFT >= 0.7
    assert any("patch_embedding.lora_A.default.weight" in k for k in keys)
    old = ckpt.TensorFile(files["old"]).keys()
    assert not any("base_layer" in k for k in old) and any(k.endswith("k_proj.lora_B.default.weight") for k in old)


@pytest.mark.parametrize("layout", ["new", "old", "wrapped", "safetensors"])
def test_text_matches_transformers_peft(hysac, files, layout):
    enc = HySACEncoder.from_checkpoint(files[layout], arch=ARCH)
    got = enc.encode_text(TEXTS)
    ref = hysac.reference_text(_tokens(TEXTS)).numpy()
    assert got.shape == (len(TEXTS), ARCH["embed_dim"]) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    assert enc.curv == pytest.approx(0.7, rel=1e-6)
    assert enc.loaded_towers == ("text",)  # a text user never builds the vision tower


@pytest.mark.parametrize("layout", ["new", "old", "wrapped", "safetensors"])
def test_images_match_transformers_peft(hysac, files, layout):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    enc = HySACEncoder.from_checkpoint(files[layout], arch=ARCH)
    got = enc.encode_images(imgs)
    pixels = torch.stack([enc.preprocess(im) for im in imgs])
    ref = hysac.reference_image(pixels).numpy()
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    assert enc.loaded_towers == ("vision",)


def test_uint8_path_equals_float_preprocessing(files):
    """Workers ship uint8 crops and the device normalises: the same embedding as open_clip's transform."""
    from PIL import Image

    rng = np.random.default_rng(4)
    imgs = [Image.fromarray(rng.integers(0, 255, (33 + i, 61, 3), dtype=np.uint8)) for i in range(3)]
    enc = HySACEncoder.from_checkpoint(files["new"], arch=ARCH)
    u8 = torch.stack([enc.pixel_transform(im) for im in imgs])
    assert u8.dtype == torch.uint8 and tuple(u8.shape) == (3, 3, 28, 28)
    ref = enc.encode_pixels(torch.stack([enc.preprocess(im) for im in imgs]))
    np.testing.assert_allclose(enc.encode_uint8(u8), ref, atol=1e-5, rtol=1e-6)


def test_lora_really_merged(hysac, files):
    """Dropping the adapters changes the embedding: the match above is not vacuous."""
    from hyperret.embed.checkpoint import TensorFile

    sd = {k: v for k, v in torch.load(files["new"], weights_only=True).items() if ".lora_" not in k}
    buf = files["new"].parent / "no_lora.pth"
    torch.save(sd, buf)
    assert not any(".lora_" in k for k in TensorFile(buf).keys())
    plain = HySACEncoder.from_checkpoint(buf, arch=ARCH).encode_text(TEXTS[:2])
    ref = hysac.reference_text(_tokens(TEXTS[:2])).numpy()
    assert np.abs(plain - ref).max() > 100 * TOL


def test_lora_alpha_scales_the_delta(hysac, files):
    a1 = HySACEncoder.from_checkpoint(files["new"], arch=ARCH).encode_text(TEXTS[:1])
    a2 = HySACEncoder.from_checkpoint(files["new"], arch=ARCH, lora_alpha=2.0).encode_text(TEXTS[:1])
    assert np.abs(a1 - a2).max() > 100 * TOL


def test_embeddings_lie_on_the_hyperboloid(files):
    from hyperret.geometry import lorentz

    enc = HySACEncoder.from_checkpoint(files["new"], arch=ARCH)
    x = enc.encode_text(TEXTS)
    v = lorentz.log_map0(x.astype(np.float64), enc.curv)
    np.testing.assert_allclose(lorentz.exp_map0(v, enc.curv), x, rtol=1e-5, atol=1e-6)
    assert np.isfinite(x).all()


def test_arch_as_json_file_and_name_mismatch(tmp_path, files):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(ARCH))
    a = HySACEncoder.from_checkpoint(files["new"], arch=str(p)).encode_text(TEXTS[:1])
    b = HySACEncoder.from_checkpoint(files["new"], arch=ARCH).encode_text(TEXTS[:1])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="does not fit the architecture"):
        HySACEncoder.from_checkpoint(files["new"], arch="ViT-B-32-quickgelu").encode_text(["x"])


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    torch.save({"curv": torch.tensor(0.0), "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        HySACEncoder.from_checkpoint(p, arch=ARCH)


@pytest.mark.parametrize("content,match", [
    (b"", "not a PyTorch or safetensors"),
    (b"hello world, not weights", "not a PyTorch or safetensors"),
])
def test_other_formats_are_refused(tmp_path, content, match):
    p = tmp_path / "m.pth"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        HySACEncoder.from_checkpoint(p, arch=ARCH)


def test_missing_checkpoint_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        HySACEncoder.from_checkpoint(tmp_path / "nope.pth", arch=ARCH)
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="Hugging Face"):
        HySACEncoder.from_checkpoint("aimagelab/hysac-does-not-exist", arch=ARCH)


def test_open_clip_file_is_not_hysac(tmp_path):
    p = save_open_clip(tmp_path / "oc.pth")
    with pytest.raises(CheckpointError, match="not a HySAC checkpoint"):
        HySACEncoder.from_checkpoint(p, arch=ARCH)
    assert isinstance(load_encoder(p, ARCH), CLIPEncoder)


def test_bounds_file_beside_the_checkpoint(tmp_path, hysac):
    save_hysac(hysac, tmp_path / "hysac_model.pth")
    (tmp_path / "hysac_bounds.json").write_text(json.dumps(BOUNDS))
    enc = HySACEncoder.from_checkpoint(tmp_path, arch=ARCH)  # a folder holding the official file names
    assert enc.bounds is not None and enc.bounds.stat("V", "up_95") == pytest.approx(0.7)


def test_euclidean_open_clip_matches_open_clip(tmp_path):
    import open_clip
    from open_clip.model import CLIP

    p = save_open_clip(tmp_path / "oc.pth", seed=5)
    model = CLIP(ARCH["embed_dim"], ARCH["vision_cfg"], ARCH["text_cfg"], quick_gelu=True).eval()
    model.load_state_dict(torch.load(p, weights_only=True))
    enc = CLIPEncoder.from_checkpoint(p, arch=ARCH)
    tok = open_clip.tokenizer.SimpleTokenizer()(TEXTS)
    with torch.no_grad():
        ref = model.encode_text(tok, normalize=True).numpy()
        pix = torch.randn(2, 3, 28, 28)
        refi = model.encode_image(pix, normalize=True).numpy()
    np.testing.assert_allclose(enc.encode_text(TEXTS), ref, atol=1e-5)
    np.testing.assert_allclose(enc.encode_pixels(pix), refi, atol=1e-5)
    assert enc.geometry == "cosine" and enc.curv == 1.0


def test_euclidean_hf_layout(tmp_path, hysac):
    """A plain transformers CLIP state dict (no PEFT, no head) loads as a Euclidean model."""
    import copy

    m = copy.deepcopy(hysac)
    text = m.textual.merge_and_unload()
    sd = {k: v for k, v in text.state_dict().items()}
    vision = m.visual.merge_and_unload()
    sd.update(vision.state_dict())
    p = tmp_path / "hf_clip.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    enc = CLIPEncoder.from_checkpoint(p, arch=ARCH)
    with torch.no_grad():
        ref = text(input_ids=_tokens(TEXTS[:2])).text_embeds
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(enc.encode_text(TEXTS[:2]), ref, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("bf16", 0.1), ("fp16", 0.02)])
def test_cuda_matches_cpu(files, precision, tol):
    cpu = HySACEncoder.from_checkpoint(files["new"], arch=ARCH)
    gpu = HySACEncoder.from_checkpoint(files["new"], arch=ARCH, device="cuda", precision=precision)
    np.testing.assert_allclose(gpu.encode_text(TEXTS), cpu.encode_text(TEXTS), atol=tol, rtol=tol)
    pix = torch.randn(4, 3, 28, 28)
    a, b = gpu.encode_pixels(pix), cpu.encode_pixels(pix)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


def test_hub_repo_id_from_the_local_cache_offline(tmp_path, monkeypatch, hysac):
    """`aimagelab/hysac` resolves through huggingface_hub's cache (here filled by hand), offline."""
    cache = tmp_path / "hub"
    snap = cache / "models--aimagelab--hysac" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (cache / "models--aimagelab--hysac" / "refs").mkdir()
    (cache / "models--aimagelab--hysac" / "refs" / "main").write_text("0" * 40)
    save_hysac(hysac, snap / "hysac_model.pth")
    (snap / "hysac_bounds.json").write_text(json.dumps(BOUNDS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    located = ckpt.locate("aimagelab/hysac")
    assert located.hub and located.path.name == "hysac_model.pth" and located.bounds is not None
    enc = HySACEncoder.from_checkpoint("aimagelab/hysac", arch=ARCH)
    assert enc.describe()["checkpoint"] == "aimagelab/hysac"
    np.testing.assert_allclose(enc.encode_text(TEXTS[:1]), hysac.reference_text(_tokens(TEXTS[:1])).numpy(),
                               atol=TOL)
