"""``hyperret index IMAGES`` and search by text or image, end to end on a tiny HySAC built here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("peft")
Image = pytest.importorskip("PIL.Image")

sys.path.insert(0, str(Path(__file__).parent))
from test_images import _jpeg, _png, exif_rotated_jpeg  # noqa: E402
from tiny_models import ARCH, TinyHySAC, save_hysac, save_open_clip  # noqa: E402

import hyperret  # noqa: E402
from hyperret.embed.encoder import HySACEncoder  # noqa: E402

HERE = Path(__file__).resolve().parent


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "hyperret.cli", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and p.returncode != 0:
        raise AssertionError(f"hyperret {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_hysac(TinyHySAC(seed=7), d / "hysac_model.pth")
    (d / "arch.json").write_text(json.dumps(ARCH))
    return d


def _photo(seed: int, w: int = 64, h: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """12 good images of every awkward kind, and 5 files that must be skipped with a reason."""
    d = tmp_path_factory.mktemp("images")
    (d / "sub" / "deeper").mkdir(parents=True)
    good = {
        "rotated.jpg": exif_rotated_jpeg(6),
        "alpha.png": _png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 4), dtype=np.uint8),
                                          "RGBA")),
        "cmyk.jpg": _jpeg(Image.new("CMYK", (30, 20), (0, 255, 255, 0))),
        "gray16.png": _png(Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)),
        "gray.png": _png(_photo(2).convert("L")),
        "palette.gif": _png(_photo(3).convert("P")),
    }
    for i in range(6):
        good[f"sub/deeper/photo{i}.jpg"] = _jpeg(_photo(10 + i, 50 + 10 * i, 40))
    bad = {
        "truncated.jpg": _jpeg(_photo(99, 200, 200))[:900],
        "notes.jpg": b"this is a text file named .jpg",
        "empty.png": b"",
        "sub/bomb.png": _png(Image.new("1", (14_000, 14_000))),
        "sub/readme.txt": b"not an image type",
    }
    for name, data in {**good, **bad}.items():
        (d / name).write_bytes(data)
    return d, sorted(good), sorted(bad)


def test_index_folder_then_search_by_text_and_image(model, collection, tmp_path):
    folder, good, bad = collection
    out = tmp_path / "ix"
    p = cli("index", str(folder), "--out", str(out), "--model", str(model / "hysac_model.pth"),
            "--arch", str(model / "arch.json"), "--workers", "1", "--batch-size", "4", "--json", "-q")
    s = json.loads(p.stdout)
    assert s["indexed"] == len(good) and s["skipped"] == len(bad) and s["rows"] == len(good)
    report = [json.loads(line) for line in Path(s["report"]).read_text().splitlines()]
    reasons = {Path(r["uri"]).name: r["reason"] for r in report}
    assert set(reasons) == {Path(b).name for b in bad}
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["notes.jpg"]
    assert "empty" in reasons["empty.png"] and "too large" in reasons["bomb.png"]
    assert "not an image file type" in reasons["readme.txt"]

    ix = hyperret.Index.open(out)
    assert ix.geometry == "lorentz" and ix.info()["producer"]["model"]["kind"] == "hysac"
    t = ix.get(ix.ids(), columns=["uri", "sha256", "width", "height"]).to_pylist()
    by_name = {Path(r["uri"]).name: r for r in t}
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (20, 40)  # displayed size
    assert (by_name["cmyk.jpg"]["width"], by_name["cmyk.jpg"]["height"]) == (30, 20)
    for r in t:
        assert r["sha256"] == hashlib.sha256(Path(r["uri"]).read_bytes()).hexdigest()

    # the stored vectors are the encoder's own embeddings of those files
    enc = HySACEncoder.from_checkpoint(model / "hysac_model.pth", arch=ARCH)
    uris = [r["uri"] for r in t]
    np.testing.assert_allclose(ix.vectors(ix.ids()), enc.encode_images(uris), atol=1e-4)

    # search by image (model from the manifest): the image itself comes first
    target = folder / "sub" / "deeper" / "photo3.jpg"
    p = cli("search", str(out), "--image", str(target), "-k", "3", "--json")
    hits = json.loads(p.stdout.splitlines()[0])["hits"]
    assert hits[0]["uri"] == str(target) and hits[0]["distance"] < 1e-3
    # search by text: the ranking is the encoder's text embedding against the stored rows
    p = cli("search", str(out), "a red square", "a photo", "-k", "4", "--json")
    recs = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["input"] for r in recs] == ["text: a red square", "text: a photo"]
    q = enc.encode_text(["a red square"])
    d = hyperret.geometry.lorentz.pairwise_distance(q.astype(np.float64), ix.vectors(ix.ids()).astype(np.float64),
                                           enc.curv)[0]
    want = [int(i) for i in ix.ids()[np.argsort(d)[:4]]]
    assert [h["id"] for h in recs[0]["hits"]] == want


def test_rerun_skips_what_is_indexed_and_a_new_image_is_added(model, collection, tmp_path):
    folder, good, _ = collection
    out = tmp_path / "ix"
    args = ["--out", str(out), "--model", str(model / "hysac_model.pth"), "--arch", str(model / "arch.json"),
            "--workers", "0", "--json", "-q"]
    cli("index", str(folder), *args)
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "new.jpg").write_bytes(_jpeg(_photo(500)))
    (extra / "copy.jpg").write_bytes((folder / "cmyk.jpg").read_bytes())  # same content, another name
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(folder / g) for g in good] + ["more/new.jpg", "more/copy.jpg", "# x", ""]))
    s = json.loads(cli("index", str(listing), *args, "--sync-commits").stdout)
    assert not s["background_commits"] and s["commit_wait_seconds"] >= s["write_seconds"] > 0  # all waited for
    assert s["resumed"] and s["indexed"] == 1 and s["already_indexed"] == len(good)
    assert s["skipped_by_reason"] == {"duplicate": 1} and s["rows"] == len(good) + 1


def test_killed_run_resumes(model, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:03d}.jpg").write_bytes(_jpeg(_photo(1000 + i, 40, 30)))
    out = tmp_path / "ix"
    # a writer that SIGKILLs itself after 28 files (chunks of 8 handed to the writer thread, then mid-chunk),
    # once the writer has committed at least one chunk (it may be in the middle of the next commit)
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(HERE)!r})
        from tiny_models import ARCH
        import hyperret
        from hyperret.embed.encoder import HySACEncoder
        from hyperret.embed.indexer import index_images
        enc = HySACEncoder.from_checkpoint({str(model / "hysac_model.pth")!r}, arch=ARCH)
        done = [0]
        def progress(n):
            done[0] += n
            if done[0] >= 28:
                deadline = time.monotonic() + 60
                while len(hyperret.Index.open({str(out)!r})) == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
                os.kill(os.getpid(), signal.SIGKILL)
        index_images({str(folder)!r}, {str(out)!r}, enc, batch_size=4, workers=0, commit_every=5,
                     progress=progress)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    ix = hyperret.Index.open(out)
    kept = len(ix)
    assert 0 < kept < 40 and kept % 4 == 0  # whole committed chunks only
    ix.verify()
    ix.close()
    s = json.loads(cli("index", str(folder), "--out", str(out), "--model", str(model / "hysac_model.pth"),
                       "--arch", str(model / "arch.json"), "--workers", "1", "--json", "-q").stdout)
    assert s["already_indexed"] == kept and s["indexed"] == 40 - kept and s["rows"] == 40
    ix = hyperret.Index.open(out)
    shas = ix.get(ix.ids(), columns=["sha256"]).column("sha256").to_pylist()
    assert len(set(shas)) == 40


def test_model_mismatch_and_bad_input_are_one_line_errors(model, collection, tmp_path):
    folder, _, _ = collection
    out = tmp_path / "ix"
    cli("index", str(folder), "--out", str(out), "--model", str(model / "hysac_model.pth"),
        "--arch", str(model / "arch.json"), "--workers", "0", "-q")
    other = tmp_path / "other.pth"
    save_hysac(TinyHySAC(seed=8), other)
    for args in (["search", str(out), "a cat", "--model", str(other)],
                 ["index", str(folder), "--out", str(out), "--model", str(other), "--arch", str(model / "arch.json")]):
        p = cli(*args, check=False)
        assert p.returncode == 2 and "model mismatch" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    for args, msg in ((["index", str(folder), "--out", str(tmp_path / "x")], "needs --model"),
                      (["index", str(folder), "--out", str(tmp_path / "y"), "--model", str(tmp_path / "no.pth")],
                       "does not exist"),
                      (["search", str(out)], "nothing to search for"),
                      (["search", str(out), "cat", "--image", str(folder / "notes.jpg")], "not an image")):
        p = cli(*args, check=False)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(hyperret.Index.open(out)) > 0  # nothing lost


def test_euclidean_baseline_side_by_side(model, collection, tmp_path):
    folder, good, _ = collection
    oc = save_open_clip(tmp_path / "open_clip_pytorch_model.bin")
    out = tmp_path / "cos"
    s = json.loads(cli("index", str(folder), "--out", str(out), "--model", str(oc), "--arch",
                       str(model / "arch.json"), "--workers", "0", "--json", "-q").stdout)
    assert s["rows"] == len(good)
    ix = hyperret.Index.open(out)
    assert ix.geometry == "cosine" and ix.info()["producer"]["model"]["kind"] == "open_clip"
    v = ix.vectors(ix.ids())
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    p = cli("search", str(out), "a cat", "-k", "3", "--json")
    hits = json.loads(p.stdout)["hits"]
    from hyperret.embed.encoder import CLIPEncoder

    q = CLIPEncoder.from_checkpoint(oc, arch=ARCH).encode_text(["a cat"])[0]
    cos = v @ q
    assert [h["id"] for h in hits] == [int(i) for i in ix.ids()[np.argsort(-cos)[:3]]]
    np.testing.assert_allclose([h["distance"] for h in hits], 1 - np.sort(cos)[::-1][:3], atol=1e-5)
    p = cli("search", str(out), "a cat", "--policy", "redirect", check=False)
    assert p.returncode == 2 and "hyperbolic" in p.stderr


def test_minimal_bounds_beside_the_checkpoint_do_not_block_indexing(model, collection, tmp_path):
    """HySAC's redirect needs only S and V up_95; such a file beside the checkpoint cannot label rows."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "hysac_model.pth").write_bytes((model / "hysac_model.pth").read_bytes())
    (d / "hysac_bounds.json").write_text(json.dumps({"S": {"up_95": 0.9}, "V": {"up_95": 1.1}}))
    photos = collection[0] / "sub" / "deeper"
    p = cli("index", str(photos), "--out", str(tmp_path / "ix"), "--model", str(d / "hysac_model.pth"),
            "--arch", str(model / "arch.json"), "--workers", "0")
    assert "cannot label images (it needs V and G)" in p.stdout
    ix = hyperret.Index.open(tmp_path / "ix")
    assert len(ix) == 6 and ix.bounds is None
    explicit = cli("index", str(photos), "--out", str(tmp_path / "ix2"), "--model",
                   str(d / "hysac_model.pth"), "--arch", str(model / "arch.json"), "--workers", "0",
                   "--bounds", str(d / "hysac_bounds.json"), check=False)
    assert explicit.returncode != 0 and "labelling image rows needs both classes V and G" in explicit.stderr
    assert len(explicit.stderr.strip().splitlines()) == 1


def test_worker_tasks_split_the_first_batch_then_grow_to_the_chunk():
    from hyperret.embed.indexer import _Tasks

    t = _Tasks(6000, 256, 256, 15)
    sizes = [len(x) for x in t]
    assert sizes[:15] == [18] * 15 and sizes[15:30] == [36] * 15  # the first model batch over all workers
    assert sizes[:-1] == sorted(sizes[:-1]) and sizes[60:-1] == [256] * (len(sizes) - 61) and len(sizes) == len(t)
    assert [i for x in t for i in x] == list(range(6000))
    assert [len(x) for x in _Tasks(600, 64, 64, 1)] == [64] * 9 + [24]  # one worker: whole chunks
    assert [len(x) for x in _Tasks(7, 256, 256, 15)] == [7]


def test_regroup_cuts_exact_model_batches_in_order():
    from hyperret.embed.indexer import Item, _regroup

    rng = np.random.default_rng(5)
    chunks, n = [], 0
    for size in (3, 9, 2, 17, 5, 1, 11):  # worker tasks; some files skipped (not decoded)
        items = [Item(uri=str(n + i), decoded=bool(rng.random() < 0.7)) for i in range(size)]
        n += size
        rows = [int(it.uri) for it in items if it.decoded]
        px = torch.tensor(rows, dtype=torch.uint8).view(-1, 1, 1, 1) if rows else None
        chunks.append((items, px))
    batches = list(_regroup(iter(chunks), 4))
    assert [int(it.uri) for items, _ in batches for it in items] == list(range(n))  # every file once, in order
    for k, (items, px) in enumerate(batches):
        decoded = [int(it.uri) for it in items if it.decoded]
        assert len(decoded) == 4 or k == len(batches) - 1
        assert (px.view(-1).tolist() if px is not None else []) == decoded  # pixels row j = j-th decoded file
        assert k == len(batches) - 1 or items[-1].decoded  # a batch ends at its last decoded image
