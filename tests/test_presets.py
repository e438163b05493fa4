from __future__ import annotations

import numpy as np
import pytest

from hyperret import errors
from hyperret.geometry import lorentz
from hyperret.search.presets import DEFAULT_PRESET, Preset, list_presets, load_preset
from hyperret.search.proxies import PROXIES, pad
from hyperret.testing.synthetic import CLASSES, make_points


def test_shipped_presets_load():
    names = list_presets()
    assert {"exact", "fast", "compact"} <= set(names) and DEFAULT_PRESET in names
    for name in names:
        p = load_preset(name)
        assert p.name == name and p.candidates_for(10) >= 10
    assert load_preset(None).name == DEFAULT_PRESET
    assert load_preset(str(names["exact"])).factory == "Flat"


def test_bad_presets(tmp_path):
    with pytest.raises(errors.PresetError):
        load_preset("nope")
    (tmp_path / "x.toml").write_text('name = "x"\nfactory = "Flat"\nbogus = 1\n')
    with pytest.raises(errors.PresetError, match="unknown preset keys"):
        load_preset(str(tmp_path / "x.toml"))
    (tmp_path / "y.toml").write_text('proxy = "euclid"\n')
    with pytest.raises(errors.PresetError, match="unknown proxy"):
        load_preset(str(tmp_path / "y.toml"))
    (tmp_path / "z.toml").write_text("not = [toml")
    with pytest.raises(errors.PresetError):
        load_preset(str(tmp_path / "z.toml"))
    assert Preset.from_dict(load_preset("fast").to_dict()) == load_preset("fast")


@pytest.mark.parametrize("name", ["ip", "mips_l2"])
def test_inner_product_proxies_rank_exactly(name):
    """ip: dot = Lorentz inner product; mips_l2: L2 ranks like it. Both match the exact order."""
    curv = 0.5
    rng = np.random.default_rng(0)
    x = lorentz.exp_map0(rng.standard_normal((300, 6)), curv)
    q = lorentz.exp_map0(rng.standard_normal((5, 6)), curv)
    pr = PROXIES[name]
    st = pr.state_for(x, curv)
    db, qq = pr.database(x, curv, st).astype(np.float64), pr.query(q, curv, st).astype(np.float64)
    score = qq @ db.T if pr.metric == "ip" else -((qq[:, None] - db[None]) ** 2).sum(-1)
    exact = lorentz.pairwise_distance(q, x, curv)
    for i in range(5):
        np.testing.assert_array_equal(np.argsort(-score[i])[:10], np.argsort(exact[i])[:10])
    assert pad(db.astype(np.float32), db.shape[1] + 3)[:, -3:].sum() == 0


def test_synthetic_classes_have_separate_radius_peaks():
    for curv in (0.3, 1.0, 4.0):
        p = make_points(4000, 32, curv=curv, seed=1)
        r = lorentz.radius(p.space, curv)
        ranges = [(r[p.cls == c].min(), r[p.cls == c].max()) for c in CLASSES]
        for (_lo_a, hi_a), (lo_b, _hi_b) in zip(ranges, ranges[1:]):
            assert hi_a < lo_b  # S < V < U < G, no overlap
        assert set(p.modality[p.cls == "S"]) == {"text"} and p.unsafe[p.cls == "G"].all()
