"""Sharded search on local Ray: three parts answer exactly what one index over all rows answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import hyperret  # noqa: E402
from hyperret.distributed import ShardedIndex, merge  # noqa: E402
from hyperret.errors import InvalidInputError  # noqa: E402
from hyperret.geometry import lorentz  # noqa: E402
from hyperret.testing.synthetic import make_points, make_queries  # noqa: E402

DIM = 16
CURV = 1.3


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from hyperret.safety import calibrate

    cal = make_points(3000, DIM, curv=CURV, seed=3, n_concepts=6)
    b = calibrate(lorentz.radius(cal.space, CURV), cal.modality, cal.unsafe, curv=CURV)
    pts = make_points(1500, DIM, curv=CURV, n_concepts=6, seed=2)
    img = pts.space[pts.modality == "image"]
    n = len(img)
    root = tmp_path_factory.mktemp("sharded")
    ids = np.arange(n) * 7 + 3
    meta = {"caption": [f"row {i}" for i in range(n)]}
    with hyperret.Index.create(root / "whole", dim=DIM, curv=CURV, bounds=b, modality="image") as ix:
        ix.add(img, ids=ids, metadata=meta)
        ix.commit()
    cuts = np.array_split(np.random.default_rng(0).permutation(n), 3)
    for j, sel in enumerate(cuts):
        with hyperret.Index.create(root / f"part{j}", dim=DIM, curv=CURV, bounds=b, modality="image") as ix:
            ix.add(img[sel], ids=ids[sel], metadata={"caption": [meta["caption"][i] for i in sel]})
            ix.commit()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sh = ShardedIndex.open([root / f"part{j}" for j in range(3)])
    yield root, sh, pts
    sh.close()
    ray.shutdown()


@pytest.mark.parametrize("policy", ["off", "redirect", "filter", "block", "outward"])
def test_three_parts_answer_as_one_index(parts, policy):
    root, sh, pts = parts
    whole = hyperret.Index.open(root / "whole")
    q = make_queries(pts, 12, seed=4)
    kw = {"policy": policy, "modality": "text", "recall": 1.0, "allow_unsafe": policy == "outward"}
    got, want = sh.search(q, 10, **kw), whole.search(q, 10, **kw)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.distances, want.distances, rtol=1e-6)
    np.testing.assert_array_equal(got.unsafe, want.unsafe)
    assert [p.action for p in got.plans] == [p.action for p in want.plans]
    assert [h["caption"] for h in got.to_list()[0]] == [h["caption"] for h in want.to_list()[0]]
    if policy == "filter":
        assert not got.unsafe[got.ids >= 0].any()


def test_merge_is_by_distance_then_id():
    a = {"ids": np.array([[5, 9]]), "distances": np.array([[0.5, 0.7]], np.float32), "unsafe": None,
         "meta": [[{"x": 1}, {"x": 2}]]}
    b = {"ids": np.array([[4, -1]]), "distances": np.array([[0.5, np.inf]], np.float32), "unsafe": None,
         "meta": [[{"x": 3}, {}]]}
    ids, dist, _, meta = merge([a, b], 1, 3)
    assert ids.tolist() == [[4, 5, 9]] and meta == [{"x": 3}, {"x": 1}, {"x": 2}]  # a tie goes to the lower id


def test_a_bad_predicate_reads_as_locally(parts):
    _, sh, pts = parts
    with pytest.raises(InvalidInputError) as e:
        sh.search(make_queries(pts, 2, seed=1), 3, where="caption >")
    assert "\n" not in str(e.value)


def test_parts_must_agree(parts, tmp_path):
    root, _, _ = parts
    with hyperret.Index.create(tmp_path / "other", dim=DIM, curv=2.0) as ix:
        ix.add(make_points(50, DIM, curv=2.0, seed=1).space)
        ix.commit()
    with pytest.raises(InvalidInputError, match="must agree"):
        ShardedIndex.open([root / "part0", tmp_path / "other"])


def test_dedup_on_ray_finds_the_local_groups(parts, tmp_path):
    from typer.testing import CliRunner

    from hyperret.cli import app

    root, _, _ = parts
    pts = make_points(800, DIM, curv=CURV, n_concepts=6, seed=9)
    near = pts.space[:200] + np.random.default_rng(2).normal(0, 1e-3, (200, DIM)).astype(np.float32)
    with hyperret.Index.create(tmp_path / "dups", dim=DIM, curv=CURV) as ix:
        ix.add(np.concatenate([pts.space, near, pts.space[200:260]]))  # near copies and exact copies
        ix.commit()
    ix = hyperret.Index.open(tmp_path / "dups")
    local = ix.dedup(radius=0.05)
    on_ray = ix.dedup(radius=0.05, ray=True)
    assert local.summary["groups"] >= 200 and on_ray.summary["groups"] == local.summary["groups"]
    assert local.groups.sort_by("id").equals(on_ray.groups.sort_by("id"))
    assert on_ray.summary["range_pass"]["checked"] == local.summary["range_pass"]["checked"]
    sent = on_ray.summary["ray"]  # each task's union-find forest, not its pairs, goes to the driver
    assert 0 < sent["edges_to_driver"] <= sent["pairs_confirmed"] and sent["tasks"] >= 2
    res = CliRunner().invoke(app, ["dedup", str(tmp_path / "dups"), "--radius", "0.05", "--ray", "--out",
                                   str(tmp_path / "g.parquet"), "--json", "-q"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("layout", ["folder", "row-groups", "folder-with-ids"])
def test_indexing_on_ray_gives_the_local_index(parts, tmp_path, layout):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from hyperret.cli import app

    pts = make_points(900, DIM, curv=CURV, n_concepts=6, seed=12)
    cols = {"embedding": list(pts.space), "caption": [f"c{i}" for i in range(900)], "modality": list(pts.modality)}
    if layout == "folder-with-ids":
        cols["id"] = np.arange(900) * 3 + 11
    table = pa.table(cols).replace_schema_metadata({b"hyperret.curv": repr(CURV).encode()})
    if layout == "row-groups":
        src = tmp_path / "rows.parquet"
        pq.write_table(table, src, row_group_size=100)  # 9 row groups: cut into parts
    else:
        src = tmp_path / "tables"
        src.mkdir()
        for j, s in enumerate(range(0, 900, 300)):
            pq.write_table(table.slice(s, 300), src / f"part-{j}.parquet")
    args = ["index", str(src), "--json", "-q"]
    for out, extra in (("local", []), ("ray", ["--ray"])):
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / out), *extra])
        assert res.exit_code == 0, res.output
    a, b = hyperret.Index.open(tmp_path / "local"), hyperret.Index.open(tmp_path / "ray")
    assert len(b) == 900 and b.manifest.version == a.manifest.version == 1  # one commit
    np.testing.assert_array_equal(a.ids(), b.ids())
    np.testing.assert_array_equal(a.vectors(a.ids()), b.vectors(b.ids()))
    assert a.get(a.ids()).to_pylist() == b.get(b.ids()).to_pylist()
    q = make_queries(pts, 5, seed=1)
    np.testing.assert_array_equal(a.search(q, 5, recall=1.0).ids, b.search(q, 5, recall=1.0).ids)


def test_a_bad_part_stops_the_job_and_leaves_no_index(parts, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from hyperret.cli import app

    src = tmp_path / "tables"
    src.mkdir()
    good = make_points(100, DIM, curv=CURV, seed=1).space
    meta = {b"hyperret.curv": repr(CURV).encode()}
    pq.write_table(pa.table({"embedding": list(good)}).replace_schema_metadata(meta), src / "a.parquet")
    bad = good.copy()
    bad[7, 3] = np.nan
    pq.write_table(pa.table({"embedding": list(bad)}).replace_schema_metadata(meta), src / "b.parquet")
    res = CliRunner().invoke(app, ["index", str(src), "--out", str(tmp_path / "ix"), "--ray", "-q"])
    assert res.exit_code == 2 and "NaN" in res.output and not (tmp_path / "ix").exists()
    error = [line for line in res.output.splitlines() if line.startswith("hyperret: error:")]
    assert len(error) == 1 and "b.parquet" in error[0] and "Traceback" not in res.output  # one line, as locally


def test_a_worker_killed_mid_job_is_retried(parts, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hyperret.distributed.indexing import index_on_ray
    from hyperret.storage.folders import open_source

    src = tmp_path / "tables"
    src.mkdir()
    x = make_points(300, DIM, curv=CURV, seed=4).space
    for j in range(3):
        t = pa.table({"embedding": list(x[j * 100 : (j + 1) * 100])})
        pq.write_table(t.replace_schema_metadata({b"hyperret.curv": repr(CURV).encode()}), src / f"p{j}.parquet")
    marker = tmp_path / "killed"
    with hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV) as ix:
        assert index_on_ray(ix, open_source(src), kill_once=str(marker)) == 300
        ix.commit()
    assert marker.exists()  # a worker did die; Ray ran its part again
    got = hyperret.Index.open(tmp_path / "ix")
    np.testing.assert_array_equal(got.ids(), np.arange(300))
    np.testing.assert_array_equal(got.vectors(np.arange(300)), x)


def test_a_driver_gone_before_its_commit_leaves_the_previous_version(parts, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hyperret.distributed.indexing import index_on_ray
    from hyperret.storage.folders import open_source

    x = make_points(200, DIM, curv=CURV, seed=6).space
    with hyperret.Index.create(tmp_path / "ix", dim=DIM, curv=CURV) as ix:
        ix.add(x[:50])
        ix.commit()
    src = tmp_path / "more"
    src.mkdir()
    t = pa.table({"embedding": list(x[50:])}).replace_schema_metadata({b"hyperret.curv": repr(CURV).encode()})
    pq.write_table(t, src / "p.parquet")
    w = hyperret.Index.open(tmp_path / "ix", writable=True)
    assert index_on_ray(w, open_source(src)) == 150  # the workers wrote their shards...
    shards = set((tmp_path / "ix" / "shards").iterdir())
    w._lock.release()  # ...and the driver dies here: no commit, no rollback, its lock left to go stale
    ix = hyperret.Index.open(tmp_path / "ix")
    assert ix.version == 1 and len(ix) == 50  # the previous version, whole
    with hyperret.Index.open(tmp_path / "ix", writable=True) as again:  # the next writer collects the orphans
        assert again.version == 1
    assert len(set((tmp_path / "ix" / "shards").iterdir())) < len(shards)


def test_a_parts_file_opens_the_parts_as_one_index(parts, tmp_path):
    from hyperret.distributed.parts import read_parts_file, write_parts_file

    root, _, pts = parts
    f = write_parts_file(root / "collection.json", [f"part{j}" for j in range(3)])  # relative to the file
    assert read_parts_file(f) == [root / f"part{j}" for j in range(3)]
    sh = ShardedIndex.open(f)
    whole = hyperret.Index.open(root / "whole")
    q = make_queries(pts, 6, seed=8)
    got, want = sh.search(q, 7, policy="filter", recall=1.0), whole.search(q, 7, policy="filter", recall=1.0)
    np.testing.assert_array_equal(got.ids, want.ids)
    info = sh.info()
    assert info["rows"] == len(whole) == len(sh) and len(info["parts"]) == 3 and info["path"] == str(f)
    assert got.snapshot.manifest.version == sh.version == 3  # each part at its version 1
    c, cw = sh.classify(pts.space[:20]), whole.classify(pts.space[:20])
    np.testing.assert_array_equal(c.unsafe, cw.unsafe)
    sh.close()
    for text, why in [("{not json", "not JSON"), ('{"format": "hyperret-parts", "parts": []}', "not a parts file"),
                      ('["part0"]', "not a parts file")]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InvalidInputError, match=why):
            ShardedIndex.open(tmp_path / "bad.json")


def test_serve_and_search_a_parts_file(parts, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from hyperret.cli import app
    from hyperret.distributed.parts import write_parts_file
    from hyperret.serve import Service, create_app

    root, _, pts = parts
    f = write_parts_file(tmp_path / "collection.json", [root / f"part{j}" for j in range(3)])
    whole = hyperret.Index.open(root / "whole")
    q = make_queries(pts, 3, seed=11)
    want = whole.search(q, 5, policy="redirect", recall=1.0)
    service = Service([f, root / "whole"], default_policy="redirect")
    with TestClient(create_app(service)) as client:
        listed = {i["name"]: i for i in client.get("/indexes").json()["indexes"]}
        assert listed["collection"]["rows"] == listed["whole"]["rows"] == len(whole)
        r = client.post("/search", json={"index": "collection", "vectors": q.tolist(), "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [[h["id"] for h in res["hits"]] for res in body["results"]] == want.ids.tolist()
        assert body["version"] == 3 and [res["plan"]["action"] for res in body["results"]] == \
            [p.action for p in want.plans]
        r = client.post("/classify", json={"index": "collection", "vectors": q.tolist()})
        assert r.status_code == 200 and len(r.json()["unsafe"]) == 3
        r = client.post("/search", json={"index": "collection", "vectors": q.tolist(), "k": 5, "dedup": 0.8})
        want_d = whole.search(q, 5, policy="redirect", recall=1.0, dedup=0.8)
        assert r.status_code == 200 and [[h["id"] for h in res["hits"]] for res in r.json()["results"]] == \
            want_d.ids.tolist()
        assert client.get("/indexes/collection").json()["sharded"] is True
    np.save(tmp_path / "q.npy", q)
    res = CliRunner().invoke(app, ["search", str(f), "--vectors", str(tmp_path / "q.npy"), "-k", "5",
                                   "--policy", "redirect", "--recall", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert [[h["id"] for h in json.loads(line)["hits"]] for line in res.output.splitlines()] == want.ids.tolist()
    res = CliRunner().invoke(app, ["search", str(f), "--vectors", str(tmp_path / "q.npy"), "--bounds", str(f)])
    assert res.exit_code != 0 and "parts file" in res.output


def test_a_tasks_forest_has_the_sets_of_its_pairs():
    from hyperret.dedup.unionfind import new_forest, roots, union_pairs
    from hyperret.distributed.dedup import forest_edges

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 400, 900), rng.integers(0, 400, 900)
    a = np.concatenate([a, np.full(30, 1000), np.arange(1001, 1031)])  # a clique-like group: 30 pairs, 30 edges
    b = np.concatenate([b, np.arange(1001, 1031), np.arange(1002, 1032)])
    ea, eb = forest_edges(a.astype(np.int64), b.astype(np.int64))
    assert len(ea) < len(a) and (eb < ea).all()  # each row to its set's smallest row
    want, got = new_forest(1100), new_forest(1100)
    union_pairs(want, a.astype(np.int64), b.astype(np.int64))
    union_pairs(got, ea, eb)
    np.testing.assert_array_equal(roots(got), roots(want))


def test_the_parts_command_writes_a_file_the_parts_open_from(parts, tmp_path):
    from typer.testing import CliRunner

    from hyperret.cli import app
    from hyperret.distributed.parts import read_parts_file

    root, _, _ = parts
    out = tmp_path / "sub" / "c.json"
    out.parent.mkdir()
    res = CliRunner().invoke(app, ["parts", str(out), *[str(root / f"part{j}") for j in range(3)]])
    assert res.exit_code == 0 and "3 parts" in res.output, res.output
    assert [p.resolve() for p in read_parts_file(out)] == [(root / f"part{j}").resolve() for j in range(3)]
    assert not any(p.startswith("/") for p in json.loads(out.read_text())["parts"])  # relative: movable together
    res = CliRunner().invoke(app, ["info", str(out), "--json", "--verify"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["rows"] == len(hyperret.Index.open(root / "whole")) and len(info["parts"]) == 3 and info["verified"]
    res = CliRunner().invoke(app, ["parts", str(out), str(root / "part0")])
    assert res.exit_code == 2 and "exists" in res.output
    with hyperret.Index.create(tmp_path / "odd", dim=DIM + 1, curv=CURV) as ix:
        ix.commit()
    res = CliRunner().invoke(app, ["parts", str(tmp_path / "d.json"), str(root / "part0"), str(tmp_path / "odd")])
    assert res.exit_code == 2 and "must agree" in res.output and not (tmp_path / "d.json").exists()

    # parts built apart must not share ids: a hit's id names one row of the collection
    b = hyperret.Bounds.from_dict(hyperret.Index.open(root / "part0").manifest.bounds)
    for name, first in (("a", 0), ("b", 0), ("c", 10**12)):
        with hyperret.Index.create(tmp_path / name, dim=DIM, curv=CURV, bounds=b, first_id=first) as ix:
            ix.add(make_points(30, DIM, curv=CURV, seed=len(name)).space)
            ix.commit()
    assert hyperret.Index.open(tmp_path / "c").ids().min() == 10**12
    res = CliRunner().invoke(app, ["parts", str(tmp_path / "e.json"), str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 2 and "both hold id 0 and 29 more" in res.output, res.output
    res = CliRunner().invoke(app, ["parts", str(tmp_path / "e.json"), str(tmp_path / "a"), str(tmp_path / "c")])
    assert res.exit_code == 0, res.output


def test_parts_on_the_gpu_answer_as_on_the_cpu(parts):
    """Each part's actor holds its rows on the device (Numba's CUDA simulator without a GPU)."""
    import os

    root, sh, pts = parts
    has_gpu = float(ray.cluster_resources().get("GPU", 0)) >= 1
    if not has_gpu:
        assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"  # the actors inherit it
        with pytest.raises(InvalidInputError, match="no GPU"):
            ShardedIndex.open([root / "part0"], device="cuda")
    gpu = ShardedIndex.open([root / f"part{j}" for j in range(3)], device="cuda", gpus_per_part=1 if has_gpu else 0)
    assert [i["device"] for i in gpu.part_info()] == ["cuda:0"] * 3  # every part's rows on the device
    assert [i["device"] for i in sh.part_info()] == ["cpu"] * 3
    q = make_queries(pts, 3, seed=21)
    for policy in ("redirect", "filter"):
        got, want = gpu.search(q, 5, policy=policy), sh.search(q, 5, policy=policy, recall=1.0)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.distances, want.distances, rtol=1e-5, atol=1e-6)
    gpu.close()


def test_an_actor_that_cannot_start_reads_as_one_line():
    from hyperret.distributed.remote import unwrap
    from hyperret.errors import IndexNotFoundError

    class Died(Exception):  # what Ray keeps of an actor whose constructor raised: the text only
        error_msg = ("The actor died because of an error raised in its creation task, ray::MapWorker.__init__()\n"
                     "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                     "hyperret.errors.IndexNotFoundError: no hyperret index at /shared/ix (no manifest.json)")

    got = unwrap(Died())
    assert isinstance(got, IndexNotFoundError) and "\n" not in str(got)
    assert str(got) == "a Ray worker could not start: no hyperret index at /shared/ix (no manifest.json)"
    other = Died()
    other.error_msg = "Traceback ...\nZeroDivisionError: division by zero"
    assert unwrap(other) is other  # not hyperret's: left as it is


@pytest.mark.parametrize("policy", ["off", "filter"])
def test_dedup_across_parts_is_the_single_index_collapse(parts, policy):
    root, sh, pts = parts
    whole = hyperret.Index.open(root / "whole")
    q = make_queries(pts, 8, seed=31)
    for radius in (0.3, 1.5):  # a wide radius collapses most hits: the parts' lists are widened
        got = sh.search(q, 10, policy=policy, recall=1.0, dedup=radius)
        want = whole.search(q, 10, policy=policy, recall=1.0, dedup=radius)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.distances, want.distances, rtol=1e-6)
        assert [p.collapsed for p in got.plans] == [p.collapsed for p in want.plans]
        assert [h["caption"] for h in got.to_list()[0]] == [h["caption"] for h in want.to_list()[0]]
    assert max(p.collapsed for p in got.plans) > 10  # more than one round of the parts was needed
    assert sh.manifest.dedup_radius is None  # no part applied a dedup: True means the default radius
    got, want = sh.search(q, 10, policy=policy, recall=1.0, dedup=True), whole.search(q, 10, policy=policy,
                                                                                       recall=1.0, dedup=True)
    np.testing.assert_array_equal(got.ids, want.ids)


def test_a_part_with_deleted_rows_counts_its_live_rows(tmp_path):
    from fastapi.testclient import TestClient

    from hyperret.distributed.parts import write_parts_file
    from hyperret.serve import Service, create_app

    for j in range(2):
        with hyperret.Index.create(tmp_path / f"p{j}", dim=DIM, curv=CURV, first_id=1000 * j) as ix:
            ix.add(make_points(40, DIM, curv=CURV, seed=j).space)
            ix.commit()
            if j:
                ix.delete(ix.ids()[:15])
                ix.commit()
    f = write_parts_file(tmp_path / "c.json", ["p0", "p1"])
    sh = ShardedIndex.open(f)
    assert len(sh) == sh.info()["rows"] == 65 and [p["rows"] for p in sh.info()["parts"]] == [40, 25]
    sh.close()
    with TestClient(create_app(Service([f, tmp_path / "p1"]))) as client:
        rows = {i["name"]: i["rows"] for i in client.get("/indexes").json()["indexes"]}
    assert rows == {"c": 65, "p1": 25}  # live rows: deleted ones counted out once
