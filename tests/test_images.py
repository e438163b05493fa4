"""Image decoding: real files of every awkward kind, made here."""

from __future__ import annotations

import io

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from hyperret.embed.images import ImageSkipped, decode, read_file  # noqa: E402


def _jpeg(img, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def halves(w=40, h=20) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return _jpeg(halves(), exif=ex.tobytes())


def test_exif_orientation_is_applied():
    d = decode(exif_rotated_jpeg(6))  # 6: the camera was turned; display rotated 90 degrees clockwise
    assert (d.width, d.height) == (20, 40) and d.image.size == (20, 40)
    a = np.asarray(d.image).astype(int)
    assert a[2, 10, 0] > 200 and a[2, 10, 2] < 60  # top of the displayed image: the red (left) half
    assert a[-3, 10, 2] > 200 and a[-3, 10, 0] < 60
    plain = decode(_jpeg(halves()))
    assert (plain.width, plain.height) == (40, 20)


def test_png_alpha_is_composited_on_white():
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (0, 0, 0, 0)  # transparent black
    a[:, 4:] = (0, 128, 0, 255)  # opaque green
    d = decode(_png(Image.fromarray(a, "RGBA")))
    rgb = np.asarray(d.image)
    assert d.image.mode == "RGB"
    assert (rgb[:, :4] == 255).all() and (rgb[:, 4:] == (0, 128, 0)).all()


def test_cmyk_jpeg():
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    d = decode(_jpeg(img))
    r, g, b = np.asarray(d.image).reshape(-1, 3).mean(0)
    assert d.image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped():
    a = np.full((10, 10), 32768, np.uint16)
    a[:, 5:] = 65535
    d = decode(_png(Image.fromarray(a)))
    rgb = np.asarray(d.image).astype(int)
    assert abs(rgb[0, 0, 0] - 128) <= 1 and rgb[0, 9, 0] == 255


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1"])
def test_other_modes_become_rgb(mode):
    img = Image.new("RGB", (12, 12), (10, 200, 30)).convert(mode)
    d = decode(_png(img))
    assert d.image.mode == "RGB" and d.image.size == (12, 12)


def test_palette_with_transparency():
    img = Image.new("P", (6, 6), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    assert (np.asarray(decode(buf.getvalue()).image) == 255).all()  # fully transparent -> white


def test_truncated_jpeg_is_skipped():
    data = _jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageSkipped, match="truncated"):
        decode(data[: len(data) // 2])


def test_text_file_and_empty_file(tmp_path):
    with pytest.raises(ImageSkipped, match="not an image"):
        decode(b"just some text, named .jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageSkipped, match="empty file"):
        read_file(tmp_path / "empty.png")
    with pytest.raises(ImageSkipped, match="missing"):
        read_file(tmp_path / "nope.png")


def test_decompression_bomb_is_skipped_before_decoding():
    bomb = _png(Image.new("1", (14_000, 14_000)))  # 196M pixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageSkipped, match="too large"):
        decode(bomb)
    with pytest.raises(ImageSkipped, match="exceeds the limit of 100"):
        decode(_png(halves()), max_pixels=100)


def test_jpeg_draft_keeps_the_full_size_metadata():
    big = Image.fromarray(np.random.default_rng(1).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    d = decode(_jpeg(big), draft=100)
    assert (d.width, d.height) == (1600, 1200)
    assert min(d.image.size) >= 100 and d.image.size[0] < 1600  # decoded at a reduced DCT scale
