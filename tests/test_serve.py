"""hyperret serve: the real server (uvicorn) on a free loopback port, spoken to over HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from typer.testing import CliRunner

import hyperret
from hyperret.cli import app as cli_app
from hyperret.geometry import lorentz
from hyperret.serve import APIKeys, Limits, Service, add_key, create_app
from hyperret.testing.synthetic import make_points, make_queries

DIM = 16
CURV = 1.3


class Running:
    """A uvicorn server in a thread, on an ephemeral loopback port."""

    def __init__(self, service: Service):
        self.server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=0,
                                                    log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def data():
    from hyperret.safety import calibrate

    cal = make_points(3000, DIM, curv=CURV, seed=3, n_concepts=6)
    bounds = calibrate(lorentz.radius(cal.space, CURV), cal.modality, cal.unsafe, curv=CURV)
    pts = make_points(1200, DIM, curv=CURV, n_concepts=6, seed=2)
    return pts, bounds


@pytest.fixture(scope="module")
def served(tmp_path_factory, data):
    pts, bounds = data
    root = tmp_path_factory.mktemp("serve")
    img = pts.space[pts.modality == "image"]
    with hyperret.Index.create(root / "photos", dim=DIM, curv=CURV, bounds=bounds, modality="image") as ix:
        ix.add(img, metadata={"caption": [f"photo {i}" for i in range(len(img))], "width": np.arange(len(img))})
        ix.commit()
    keyfile = root / "keys.txt"
    plain, unsafe = add_key(keyfile, "reader", ["search"]), add_key(keyfile, "auditor", ["search", "unsafe"])
    open_srv = Running(Service([root / "photos"], limits=Limits(max_k=50, max_body_bytes=64 << 10),
                               refresh_seconds=0.0))
    keyed = Running(Service([root / "photos"], keys=APIKeys.load(keyfile), default_policy="filter"))
    yield {"root": root, "open": open_srv.client, "keyed": keyed.client, "plain": plain, "unsafe": unsafe,
           "img": img}
    open_srv.stop()
    keyed.stop()


def test_search_matches_the_library(served):
    ix = hyperret.Index.open(served["root"] / "photos")
    q = served["img"][:3] + 0.01
    r = served["open"].post("/search", json={"vectors": q.tolist(), "k": 5, "modality": "image"})
    assert r.status_code == 200, r.text
    body = r.json()
    want = ix.search(q, 5, modality="image")
    assert [[h["id"] for h in res["hits"]] for res in body["results"]] == want.ids.tolist()
    hit = body["results"][0]["hits"][0]
    assert set(hit) >= {"id", "distance", "unsafe", "caption", "width"} and body["index"] == "photos"
    np.testing.assert_allclose([h["distance"] for h in body["results"][0]["hits"]], want.distances[0], rtol=1e-6)
    assert body["results"][0]["plan"]["policy"] == "off" and "explain" in body["results"][0]


def test_policies_and_the_default_policy(served):
    q = served["img"][:8]
    r = served["open"].post("/search", json={"vectors": q.tolist(), "k": 10, "policy": "filter",
                                             "modality": "image"})
    assert r.status_code == 200 and not any(h["unsafe"] for res in r.json()["results"] for h in res["hits"])
    keyed = served["keyed"].post("/search", json={"vectors": q.tolist(), "k": 10, "modality": "image"},
                                 headers={"X-API-Key": served["plain"]})
    assert keyed.status_code == 200
    res = keyed.json()["results"]
    assert all(x["plan"]["policy"] == "filter" for x in res)  # the index's default, set by the server
    assert not any(h["unsafe"] for x in res for h in x["hits"])


def test_unsafe_content_needs_a_key_with_permission(served):
    body = {"vectors": served["img"][:1].tolist(), "k": 3, "policy": "outward", "allow_unsafe": True,
            "modality": "image"}
    no_keys = served["open"].post("/search", json=body)
    assert no_keys.status_code == 403 and "no keys configured" in no_keys.json()["error"]
    assert served["keyed"].post("/search", json=body).status_code == 401
    assert served["keyed"].post("/search", json=body, headers={"X-API-Key": "made-up"}).status_code == 401
    plain = served["keyed"].post("/search", json=body, headers={"X-API-Key": served["plain"]})
    assert plain.status_code == 403 and "lacks the 'unsafe' permission" in plain.json()["error"]
    ok = served["keyed"].post("/search", json=body, headers={"X-API-Key": served["unsafe"]})
    assert ok.status_code == 200 and ok.json()["results"][0]["plan"]["policy"] == "outward"
    assert served["keyed"].get("/indexes").status_code == 401  # with keys, every API call needs one
    hidden = served["keyed"].post("/search", json={**body, "index": "secret"})
    assert hidden.status_code == 401 and "photos" not in hidden.text  # no key: nothing about the indexes
    assert served["keyed"].get("/healthz").status_code == 200


@pytest.mark.parametrize("send, status, message", [
    ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422, ""),
    ({"json": {"vectors": [[0.1] * (DIM + 1)]}}, 400, "dimension"),
    ({"content": b'{"vectors": [[NaN' + b", 0.1" * (DIM - 1) + b"]]}",
      "headers": {"Content-Type": "application/json"}}, 400, "finite"),
    ({"json": {"vectors": [[0.1] * DIM], "k": 51}}, 400, "limit of 50"),
    ({"json": {"vectors": [[0.1] * DIM], "k": 0}}, 422, "k"),
    ({"json": {"vectors": [[0.1] * DIM], "index": "nope"}}, 404, "no index named"),
    ({"json": {"vectors": [[0.1] * DIM], "bogus": 1}}, 422, "bogus"),
    ({"json": {"text": "a cat"}}, 400, "need a model"),
    ({"json": {"image": "%%%"}}, 400, "base64"),
    ({"json": {"vectors": [[0.1] * DIM], "where": "width >"}}, 400, ""),
    ({"json": {"vectors": [[0.1] * DIM], "policy": "sideways"}}, 400, "sideways"),
    ({"json": {}}, 400, "exactly one"),
    ({"content": b"x" * (65 << 10), "headers": {"Content-Type": "application/json"}}, 413, "over"),
])
def test_bad_requests_get_a_json_4xx(served, send, status, message):
    r = served["open"].post("/search", **send)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_indexes_classify_metrics_and_the_page(served):
    c = served["open"]
    listing = c.get("/indexes").json()["indexes"]
    assert listing[0]["name"] == "photos" and listing[0]["bounds"] and listing[0]["rows"] == len(served["img"])
    assert c.get("/indexes/photos").json()["rows"] == len(served["img"])
    assert c.get("/indexes/other").status_code == 404
    v = served["img"][:4]
    got = c.post("/classify", json={"vectors": v.tolist()}).json()
    want = hyperret.Index.open(served["root"] / "photos").classify(v, modality="image")
    assert got["unsafe"] == want.unsafe.tolist()
    assert c.get("/healthz").json()["ok"]
    page = c.get("/")
    assert page.status_code == 200 and "<title>hyperret</title>" in page.text
    assert c.get("/static/app.js").status_code == 200
    assert c.get("/docs").status_code == 200 and "/search" in c.get("/openapi.json").json()["paths"]
    metrics = c.get("/metrics").text
    assert 'hyperret_requests_total{endpoint="/search",status="200"}' in metrics
    assert 'hyperret_index_version{index="photos"}' in metrics and "hyperret_request_seconds_bucket" in metrics


def test_the_server_follows_new_commits(served, data):
    pts, _ = data
    c = served["open"]
    before = c.post("/search", json={"vectors": served["img"][:1].tolist(), "k": 1}).json()["version"]
    with hyperret.Index.open(served["root"] / "photos", writable=True) as w:
        w.add(make_queries(pts, 5, seed=4), metadata={"caption": ["new"] * 5, "width": [0] * 5})
        w.commit()
    after = c.post("/search", json={"vectors": served["img"][:1].tolist(), "k": 1}).json()
    assert after["version"] == before + 1
    assert c.get("/indexes").json()["indexes"][0]["rows"] == len(served["img"]) + 5


def test_key_command_and_key_file_errors(tmp_path):
    f = tmp_path / "keys"
    res = CliRunner().invoke(cli_app, ["key", "ops", "--file", str(f), "--unsafe"])
    assert res.exit_code == 0
    key = res.stdout.strip()
    entry = APIKeys.load(f).check(key)
    assert entry is not None and entry.name == "ops" and "unsafe" in entry.permissions and key not in f.read_text()
    again = CliRunner().invoke(cli_app, ["key", "ops", "--file", str(f)])
    assert again.exit_code == 2 and "already has" in again.output
    f.write_text("broken line\n")
    with pytest.raises(hyperret.errors.InvalidInputError, match="line 1"):
        APIKeys.load(f)
    bad = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_time_limit_and_worker_factory(served, monkeypatch):
    root = served["root"]
    slow = Running(Service([root / "photos"], limits=Limits(timeout_seconds=1e-9)))
    try:
        r = slow.client.post("/search", json={"vectors": served["img"][:1].tolist(), "k": 3})
        assert r.status_code == 503 and "longer than" in r.json()["error"]
    finally:
        slow.stop()
    from hyperret.serve import CONFIG_ENV, app_from_env

    monkeypatch.setenv(CONFIG_ENV, json.dumps({"paths": [str(root / "photos")], "default_policy": "filter",
                                               "api_key_file": None, "limits": {"max_k": 7}}))
    app = app_from_env()  # what each process of --workers N builds
    assert any(getattr(r, "path", None) == "/search" for r in app.routes)


def test_oversize_upload_and_dedup_over_http(served):
    c = served["open"]  # a 64 KB body limit
    big = c.post("/search/upload", files={"file": ("big.png", b"\x89PNG" + b"0" * (70 << 10), "image/png")})
    assert big.status_code == 413 and "over" in big.json()["error"]
    q = served["img"][:2]
    plain = c.post("/search", json={"vectors": q.tolist(), "k": 5}).json()
    collapsed = c.post("/search", json={"vectors": q.tolist(), "k": 5, "dedup": 10.0}).json()
    assert all(len(r["hits"]) >= 1 for r in collapsed["results"])
    # a radius of 10 collapses these hits: fewer distinct rows come back, and the plan counts them
    assert sum(r["plan"]["collapsed"] for r in collapsed["results"]) > 0
    assert [len(r["hits"]) for r in collapsed["results"]] <= [len(r["hits"]) for r in plain["results"]]
