"""A HySAC checkpoint written by the versions HySAC pins (transformers 4.31.0 + peft 0.4.0).

The fixture (``tests/fixtures/hysac_pinned``, made by ``tools/make_pinned_hysac.py`` in a
virtual environment of those versions) holds the tiny model's state dict and the
embeddings HySAC's own forward computed. That PEFT leaves a random, used bias on the
LoRA-wrapped patch embedding; hyperret must fold it in, and must refuse, never drop, a
key it cannot map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from hyperret.embed import towers  # noqa: E402
from hyperret.embed.encoder import HySACEncoder  # noqa: E402
from hyperret.errors import CheckpointError  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "hysac_pinned"
BIAS = "visual.base_model.model.vision_model.embeddings.patch_embedding.bias"
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE / "reference.npz"))


@pytest.fixture(scope="module")
def arch():
    return json.loads((FIXTURE / "arch.json").read_text())


@pytest.fixture(scope="module")
def state():
    return torch.load(FIXTURE / "hysac_model.pth", weights_only=True)


def _encoder(arch, path=FIXTURE / "hysac_model.pth"):
    return HySACEncoder.from_checkpoint(path, arch=arch)


def _save(tmp_path, sd):
    p = tmp_path / "hysac_model.pth"
    torch.save(sd, p)
    return p


def test_fixture_was_written_by_the_pinned_versions(state):
    v = json.loads((FIXTURE / "versions.json").read_text())
    assert (v["transformers"], v["peft"]) == ("4.31.0", "0.4.0")
    assert BIAS in state and state[BIAS].abs().max() > 1e-3  # the untrained bias HySAC's forward uses
    assert not any("base_layer" in k for k in state)  # the PEFT layout before 0.7


def test_text_matches_the_pinned_reference(ref, arch):
    enc = _encoder(arch)
    tokens = towers.tokenizer(enc.arch_name, enc.config)(list(ref["texts"]))
    assert np.array_equal(tokens.numpy(), ref["tokens"])  # the reference saw the tokens hyperret makes
    got = enc.encode_text(list(ref["texts"]))
    np.testing.assert_allclose(got, ref["text"], atol=TOL, rtol=0)
    assert enc.curv == pytest.approx(float(ref["curv"]), rel=1e-6)


def test_images_match_the_pinned_reference(ref, arch):
    got = _encoder(arch).encode_pixels(torch.from_numpy(ref["pixels"]))
    np.testing.assert_allclose(got, ref["image"], atol=TOL, rtol=0)


def test_the_bias_matters(tmp_path, ref, arch, state):
    """Without the bias the images move far past the tolerance: the match above is not vacuous."""
    sd = {k: v for k, v in state.items() if k != BIAS}
    got = _encoder(arch, _save(tmp_path, sd)).encode_pixels(torch.from_numpy(ref["pixels"]))
    assert np.abs(got - ref["image"]).max() > 100 * TOL


def test_a_bias_of_the_wrong_width_is_refused(tmp_path, arch, state):
    sd = dict(state)
    sd[BIAS] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="patch_embedding.bias"):
        _encoder(arch, _save(tmp_path, sd)).encode_pixels(torch.zeros(1, 3, 28, 28))


@pytest.mark.parametrize("key,tower", [
    ("visual.base_model.model.vision_model.encoder.layers.0.mlp.fc3.weight", "vision"),
    ("textual.base_model.model.text_model.embeddings.extra_bias", "text"),
])
def test_an_unknown_tower_key_is_an_error(tmp_path, arch, state, key, tower):
    sd = dict(state)
    sd[key] = torch.ones(4)
    enc = _encoder(arch, _save(tmp_path, sd))
    with pytest.raises(CheckpointError, match="does not know how to map"):
        if tower == "vision":
            enc.encode_pixels(torch.zeros(1, 3, 28, 28))
        else:
            enc.encode_text(["x"])


def test_a_stray_top_level_key_is_an_error(tmp_path, arch, state):
    sd = dict(state)
    sd["visual_bias"] = torch.ones(8)
    with pytest.raises(CheckpointError, match="outside HySAC's layout.*visual_bias"):
        _encoder(arch, _save(tmp_path, sd))


def test_an_adapter_that_is_not_lora_ab_is_an_error(tmp_path, arch, state):
    sd = dict(state)
    sd["textual.base_model.model.text_model.embeddings.token_embedding.lora_embedding_A.default"] = torch.ones(4, 9)
    with pytest.raises(CheckpointError, match="does not merge"):
        _encoder(arch, _save(tmp_path, sd)).encode_text(["x"])


def test_position_ids_buffer_only_as_a_range(tmp_path, ref, arch, state):
    """transformers < 4.31 saved ``position_ids``: inert as 0..L-1, refused otherwise."""
    key = "textual.base_model.model.text_model.embeddings.position_ids"
    sd = dict(state)
    sd[key] = torch.arange(77).unsqueeze(0)
    got = _encoder(arch, _save(tmp_path, sd)).encode_text(list(ref["texts"]))
    np.testing.assert_allclose(got, ref["text"], atol=TOL, rtol=0)
    sd[key] = torch.arange(77).flip(0).unsqueeze(0)
    with pytest.raises(CheckpointError, match="position_ids"):
        _encoder(arch, _save(tmp_path, sd)).encode_text(["x"])
