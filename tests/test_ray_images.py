"""``hyperret index IMAGES --ray``: decoder and embedder actors on local Ray build the local index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("peft")
Image = pytest.importorskip("PIL.Image")

sys.path.insert(0, str(Path(__file__).parent))
from test_images import _jpeg, _png  # noqa: E402
from tiny_models import ARCH, TinyHySAC, save_hysac  # noqa: E402

import hyperret  # noqa: E402
from hyperret.distributed.images import ModelSpec, index_images_on_ray  # noqa: E402
from hyperret.embed.encoder import HySACEncoder  # noqa: E402
from hyperret.embed.indexer import index_images  # noqa: E402

HERE = Path(__file__).resolve().parent


def _photo(seed: int, w: int = 40, h: int = 30) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny HySAC, a folder of 22 good images (one content twice) and 3 bad files, and local Ray."""
    root = tmp_path_factory.mktemp("rayimg")
    save_hysac(TinyHySAC(seed=7), root / "hysac_model.pth")
    (root / "arch.json").write_text(json.dumps(ARCH))
    folder = root / "images"
    (folder / "b").mkdir(parents=True)
    for i in range(20):
        (folder / ("b" if i % 3 else "") / f"p{i:02d}.jpg").write_bytes(_jpeg(_photo(100 + i, 30 + i, 30)))
    (folder / "a_copy.jpg").write_bytes((folder / "b" / "p07.jpg").read_bytes())  # listed before its twin
    (folder / "gray.png").write_bytes(_png(_photo(5).convert("L")))
    (folder / "truncated.jpg").write_bytes(_jpeg(_photo(9, 200, 200))[:900])
    (folder / "notes.jpg").write_bytes(b"not an image")
    (folder / "readme.txt").write_bytes(b"not an image type")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield root, folder
    ray.shutdown()


def _local(setup, tmp_path, first_id: int | None = None) -> tuple[hyperret.Index, dict]:
    root, folder = setup
    enc = HySACEncoder.from_checkpoint(root / "hysac_model.pth", arch=ARCH)
    s = index_images(folder, tmp_path / "local", enc, batch_size=4, workers=0, commit_every=8, first_id=first_id)
    return hyperret.Index.open(tmp_path / "local"), s.to_dict()


def _same_index(got: hyperret.Index, want: hyperret.Index) -> None:
    ids = np.sort(want.ids())
    np.testing.assert_array_equal(np.sort(got.ids()), ids)
    np.testing.assert_allclose(got.vectors(ids), want.vectors(ids), rtol=1e-5, atol=1e-5)  # batch sizes differ
    cols = ["uri", "sha256", "width", "height"]
    assert got.get(ids, columns=cols).to_pylist() == want.get(ids, columns=cols).to_pylist()


def _reasons(summary: dict) -> dict[str, str]:
    return {Path(r["uri"]).name: r["reason"] for r in map(json.loads, Path(summary["report"]).read_text().splitlines())}


def test_images_on_ray_give_the_local_index(setup, tmp_path):
    root, folder = setup
    want, ws = _local(setup, tmp_path)
    spec = ModelSpec(str(root / "hysac_model.pth"), ARCH)
    s = index_images_on_ray(folder, tmp_path / "ray", spec, batch_size=3, shard_rows=5, commit_every=8).to_dict()
    got = hyperret.Index.open(tmp_path / "ray")
    _same_index(got, want)
    for key in ("listed", "indexed", "skipped", "skipped_by_reason", "rows"):
        assert s[key] == ws[key], key
    assert s["indexed"] == 21 and s["skipped_by_reason"]["duplicate"] == 1 and s["commits"] >= 2
    assert _reasons(s) == _reasons(ws)  # the same files, for the same reasons
    assert "same content as" in _reasons(s)["p07.jpg"]  # the file listed first keeps the content
    # the run's shards were all adopted (no file is left that no version names), then compacted into one
    from hyperret.storage.versions import referenced_files

    named = referenced_files(tmp_path / "ray", [got.manifest])
    assert {f"shards/{p.name}" for p in (tmp_path / "ray" / "shards").iterdir()} <= named
    assert s["compacted"] and len(got.manifest.shards) == 1

    # a re-run on Ray holds everything already: no new rows, no new version
    again = index_images_on_ray(folder, tmp_path / "ray", spec, batch_size=3, shard_rows=5)
    assert again.resumed and again.already_indexed == 21 and again.indexed == 0
    assert again.version == s["version"] and again.rows == 21


def test_a_worker_killed_mid_job_is_restarted_and_its_batch_run_again(setup, tmp_path):
    root, folder = setup
    want, _ = _local(setup, tmp_path, first_id=10**12)  # a part of a collection: its ids from 10**12
    marker = tmp_path / "killed"
    spec = ModelSpec(str(root / "hysac_model.pth"), ARCH)
    index_images_on_ray(folder, tmp_path / "ray", spec, batch_size=4, shard_rows=6, kill_once=str(marker),
                        first_id=10**12)
    assert marker.exists()  # an embedder did die
    got = hyperret.Index.open(tmp_path / "ray")
    _same_index(got, want)
    assert got.ids().min() >= 10**12
    again = index_images_on_ray(folder, tmp_path / "ray", spec, first_id=10**12)  # the same command resumes
    assert again.indexed == 0 and again.already_indexed == 21
    with pytest.raises(hyperret.errors.InvalidInputError, match="--first-id is for a new index"):
        index_images_on_ray(folder, tmp_path / "ray", spec, first_id=2 * 10**12)


def test_a_killed_driver_keeps_its_commits_and_a_rerun_resumes(setup, tmp_path):
    import shutil

    root, folder = setup
    out = tmp_path / "ray"
    # a driver that SIGKILLs itself, its Ray workers still running, once a chunk is committed
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(HERE)!r})
        from tiny_models import ARCH
        import hyperret
        from hyperret.distributed.images import ModelSpec, index_images_on_ray
        def progress(n):
            if len(hyperret.Index.open({str(out)!r})):
                os.kill(os.getpid(), signal.SIGKILL)
        index_images_on_ray({str(folder)!r}, {str(out)!r}, ModelSpec({str(root / "hysac_model.pth")!r}, ARCH),
                            batch_size=2, shard_rows=2, commit_every=2, progress=progress)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "RAY_ADDRESS": "", "PYTHONWARNINGS": "ignore"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    ix = hyperret.Index.open(out)
    kept = len(ix)
    assert 0 < kept < 21
    ix.verify()
    ix.close()
    # the local indexer resumes a copy of what the killed driver left; Ray must resume it the same way
    shutil.copytree(out, tmp_path / "local")
    enc = HySACEncoder.from_checkpoint(root / "hysac_model.pth", arch=ARCH)
    index_images(folder, tmp_path / "local", enc, batch_size=4, workers=0)
    s = index_images_on_ray(folder, out, ModelSpec(str(root / "hysac_model.pth"), ARCH), batch_size=4)
    assert s.resumed and s.already_indexed == kept and s.indexed == 21 - kept
    _same_index(hyperret.Index.open(out), hyperret.Index.open(tmp_path / "local"))


def test_duplicates_arriving_out_of_order_keep_the_first_file_in_the_listing(tmp_path):
    from hyperret.distributed.images import _Triage
    from hyperret.embed.runs import Report, RunSummary

    rep = Report(tmp_path / "r.jsonl")
    t = _Triage({"old": "/x/old.jpg"}, RunSummary(path="ix"), rep)

    def rows(*r):
        return {k: np.array(v, dtype=np.int64 if k == "id" else object)
                for k, v in zip(("uri", "id", "sha256", "reason"), zip(*r))}

    assert t.rows(rows(("/y/late.jpg", 9, "s1", ""), ("/y/new.jpg", 5, "s2", ""))) == 2
    assert t.rows(rows(("/a/early.jpg", 3, "s1", ""), ("/x/old.jpg", 4, "old", "already indexed"),
                       ("/z/again.jpg", 7, "s2", ""), ("/z/copy.jpg", 8, "old", "already indexed"))) == 0
    rep.close()
    assert sorted(t.drop) == [7, 9] and t.kept["s1"] == ("/a/early.jpg", 3)
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {(x["uri"], x["reason"]) for x in lines} == {
        ("/y/late.jpg", "duplicate: same content as /a/early.jpg"),
        ("/z/again.jpg", "duplicate: same content as /y/new.jpg"),
        ("/z/copy.jpg", "duplicate: same content as /x/old.jpg")}
    assert t.summary.already_indexed == 1 and t.reasons == {"duplicate": 3}


def test_images_on_ray_from_the_cli(setup, tmp_path):
    root, folder = setup
    p = subprocess.run([sys.executable, "-m", "hyperret.cli", "index", str(folder), "--out", str(tmp_path / "ix"),
                        "--model", str(root / "hysac_model.pth"), "--arch", str(root / "arch.json"), "--ray",
                        "--ray-decoders", "1", "--shard-rows", "8", "--json", "-q"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "RAY_ADDRESS": "", "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(p.stdout)
    assert s["indexed"] == 21 and s["rows"] == 21 and s["skipped"] == 4
    for flags, why in [(["--ray-address", "ray://nowhere:1"], "--ray-address goes with --ray"),
                       (["--ray", "--workers", "3"], "--workers and --sync-commits are for local runs")]:
        bad = subprocess.run([sys.executable, "-m", "hyperret.cli", "index", str(folder), "--out",
                              str(tmp_path / "b"), "--model", str(root / "hysac_model.pth"), *flags],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and why in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "b").exists()
