"""The web page of ``hyperret serve`` in a real headless browser (Playwright driving Chromium).

A tiny HySAC built here embeds captions; the index holds them with safety bounds
calibrated so that the captions farther from the origin are unsafe. The test types
a query, switches policies and watches the grid change, then saves a screenshot to
``test-artifacts/serve-page.png``. It needs Chromium (Debian's ``chromium``, or one
Playwright installed); without one it is skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("peft")
sync_api = pytest.importorskip("playwright.sync_api")

sys.path.insert(0, str(Path(__file__).parent))
from test_serve import Running  # noqa: E402
from tiny_models import ARCH, TinyHySAC, save_hysac  # noqa: E402

import hyperret  # noqa: E402
from hyperret.geometry import lorentz  # noqa: E402
from hyperret.safety import calibrate  # noqa: E402
from hyperret.serve import Service  # noqa: E402

ARTIFACTS = Path(os.environ.get("HYPERRET_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
WORDS = ["red", "blue", "green", "small", "large", "old", "new", "bright", "dark", "quiet"]
THINGS = ["cat", "dog", "house", "car", "tree", "boat", "bird", "chair"]


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    from hyperret.embed.encoder import load_encoder

    d = tmp_path_factory.mktemp("page")
    save_hysac(TinyHySAC(seed=7), d / "hysac_model.pth")
    enc = load_encoder(d / "hysac_model.pth", ARCH)
    captions = [f"a {w} {t}" for w in WORDS for t in THINGS]
    x = enc.encode_text(captions)
    r = lorentz.radius(x, enc.curv)
    unsafe = r > np.median(r)  # the outer half is "unsafe" for this test
    bounds = calibrate(np.r_[r, r], np.array(["text"] * len(r) + ["image"] * len(r)), np.r_[unsafe, unsafe],
                       curv=enc.curv)
    with hyperret.Index.create(d / "captions", dim=x.shape[1], curv=enc.curv, bounds=bounds, modality="text") as ix:
        ix.add(x, metadata={"caption": captions})
        ix.commit()
    running = Running(Service([d / "captions"], model=str(d / "hysac_model.pth"), arch=ARCH))
    yield running, captions
    running.stop()


@pytest.mark.skipif(_browser() is None, reason="no Chromium on this machine (apt install chromium)")
def test_search_switch_policies_and_reveal(page_server):
    running, captions = page_server
    url = str(running.client.base_url)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#index option", state="attached")
        # a query the bounds call unsafe: the outer half holds the unsafe captions
        api = running.client.post("/classify", json={"text": captions, "modality": "text"}).json()
        query = captions[int(np.flatnonzero(api["unsafe"])[0])]
        page.fill("#text", query)
        page.fill("#k", "30")
        page.click("button[type=submit]")
        page.wait_for_selector(".hit")
        off = page.eval_on_selector_all(".hit", "els => els.map(e => [e.dataset.id, e.classList.contains('unsafe')])")
        assert len(off) == 30 and any(u for _, u in off), "the unfiltered grid shows unsafe (blurred) hits"
        blurred = page.query_selector(".hit.unsafe")
        assert page.evaluate("e => getComputedStyle(e.querySelector('.caption')).filter", blurred) != "none"
        blurred.click()
        assert "revealed" in (blurred.get_attribute("class") or "")
        assert "policy off" in page.inner_text("#plan")
        page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

        page.check("input[value=filter]")  # the switch searches again
        page.wait_for_function("() => document.querySelector('#plan').textContent.includes('policy filter')")
        filt = page.eval_on_selector_all(".hit", "els => els.map(e => [e.dataset.id, e.classList.contains('unsafe')])")
        assert filt and not any(u for _, u in filt) and filt != off

        page.check("input[value=redirect]")
        page.wait_for_function("() => document.querySelector('#plan').textContent.includes('policy redirect')")
        assert "moved from radius" in page.inner_text("#plan")

        page.check("input[value=block]")
        page.wait_for_function("() => document.querySelector('#plan').textContent.includes('policy block')")
        assert page.query_selector_all(".hit") == [] and "0 results" in page.inner_text("#status")
        page.screenshot(path=str(ARTIFACTS / "serve-page-block.png"), full_page=True)
        browser.close()
    assert not errors, errors



def test_image_upload_search(page_server):
    import io

    from PIL import Image

    running, _ = page_server
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, "PNG")
    r = running.client.post("/search/upload", files={"file": ("q.png", buf.getvalue(), "image/png")},
                            data={"k": "4", "policy": "filter"})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert len(res["hits"]) == 4 and res["plan"]["modality"] == "image" and res["plan"]["policy"] == "filter"
    assert not any(h["unsafe"] for h in res["hits"])
    bad = running.client.post("/search/upload", files={"file": ("q.png", b"not an image", "image/png")})
    assert bad.status_code == 400 and "uploaded image" in bad.json()["error"]
