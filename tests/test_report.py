from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hyperret.errors import InvalidInputError
from hyperret.geometry import lorentz
from hyperret.safety.bounds import calibrate
from hyperret.testing.synthetic import make_points

pytest.importorskip("matplotlib")

from hyperret.safety.report import MAX_DISK_POINTS, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def labelled():
    pts = make_points(4000, 16, curv=1.0)
    r = lorentz.radius(pts.space, 1.0)
    bounds = calibrate(r, pts.modality, pts.unsafe, curv=1.0)
    return pts, r, bounds


def _check_png(path, min_w=600, min_h=300):
    from matplotlib.image import imread

    assert path.exists()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(str(path))
    h, w = img.shape[:2]
    assert min_w <= w <= 4000 and min_h <= h <= 3000
    colours = np.unique((img[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20
    return img


def test_report_four_classes(labelled, tmp_path):
    pts, r, bounds = labelled
    out = tmp_path / "sub" / "dir" / "report.png"
    summary = render_report(r, pts.cls, out, curv=1.0, bounds=bounds, sample=pts.space,
                            sample_letters=pts.cls, title="synthetic HySAC", seed=3)
    _check_png(out)
    assert summary["out"] == str(out)
    assert summary["counts"] == {c: int((pts.cls == c).sum()) for c in "SUVG"}
    assert sum(summary["counts"].values()) == len(r)
    for c in "SUVG":
        rc = r[pts.cls == c]
        s = summary["radius_by_class"][c]
        assert s["up_95"] == float(np.percentile(rc, 95))
        assert s["low_05"] == float(np.percentile(rc, 5))
        assert s["avg"] == pytest.approx(float(rc.mean()), rel=1e-12)
        # The same statistics calibrate() stored in the bounds.
        assert s["up_95"] == pytest.approx(bounds.classes[c]["up_95"], rel=1e-12)
    assert summary["thresholds"] == {m: bounds.thresholds[m].radius for m in ("text", "image")}
    assert summary["sampled"] == MAX_DISK_POINTS  # 4000 points subsampled


def test_report_without_bounds_or_sample(labelled, tmp_path):
    pts, r, _ = labelled
    out = tmp_path / "plain.png"
    summary = render_report(r, pts.cls, out, curv=1.0, bins=40)
    _check_png(out, min_w=400)
    assert summary["thresholds"] == {}
    assert summary["sampled"] == 0


def test_report_unlabelled(labelled, tmp_path):
    pts, r, bounds = labelled
    letters = pts.cls.astype(object)
    letters[::3] = "?"
    letters[1::7] = "x"  # any other label counts as unlabelled too
    letters = letters.astype(str)
    small = pts.space[:500]
    out = tmp_path / "unlabelled.png"
    summary = render_report(r, letters, out, curv=1.0, bounds=bounds, sample=small)  # no sample letters
    _check_png(out)
    unl = ~np.isin(letters, list("SUVG"))
    assert summary["counts"]["?"] == int(unl.sum())
    assert sum(summary["counts"].values()) == len(r)
    assert summary["radius_by_class"]["?"]["up_95"] == float(np.percentile(r[unl], 95))
    assert summary["sampled"] == 500


def test_subsample_is_seeded(labelled, tmp_path):
    pts, r, _ = labelled
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    render_report(r, pts.cls, a, curv=1.0, sample=pts.space, sample_letters=pts.cls, seed=7)
    render_report(r, pts.cls, b, curv=1.0, sample=pts.space, sample_letters=pts.cls, seed=7)
    assert a.read_bytes() == b.read_bytes()


def test_bad_input(labelled, tmp_path):
    pts, r, bounds = labelled
    out = tmp_path / "bad.png"
    with pytest.raises(InvalidInputError, match="letters"):
        render_report(r, pts.cls[:-1], out, curv=1.0)
    with pytest.raises(InvalidInputError, match="empty"):
        render_report(np.zeros(0), np.zeros(0, dtype=str), out, curv=1.0)
    bad = r.copy()
    bad[5] = np.nan
    with pytest.raises(InvalidInputError, match="non-finite"):
        render_report(bad, pts.cls, out, curv=1.0)
    with pytest.raises(InvalidInputError, match="sample"):
        render_report(r, pts.cls, out, curv=1.0, sample=pts.space[:, 0])
    with pytest.raises(InvalidInputError, match="sample_letters"):
        render_report(r, pts.cls, out, curv=1.0, sample=pts.space[:10], sample_letters=pts.cls[:9])
    with pytest.raises(InvalidInputError, match="curvature"):
        render_report(r, pts.cls, out, curv=2.0, bounds=bounds)  # bounds calibrated at 1.0
    assert not out.exists()


def test_import_does_not_load_matplotlib():
    code = "import sys, hyperret.safety.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
