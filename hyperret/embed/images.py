"""Decoding image files to RGB, with a reason for every file that cannot be.

Pure Pillow and NumPy (no torch): EXIF orientation applied; CMYK, palette,
alpha (composited on white), grayscale and 16-bit images converted to 8-bit RGB;
multi-frame files give their first frame. Empty, unrecognised, truncated and
oversized (decompression-bomb) files raise :class:`ImageSkipped` with a reason.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line

#: Default pixel limit (width x height) before decoding: 178,956,970 is twice
#: Pillow's own warning level; larger files are skipped as decompression bombs.
MAX_PIXELS = 178_956_970
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm",
    ".pbm", ".pnm", ".tga", ".ico",
})
_SWAPS = {5, 6, 7, 8}  # EXIF orientations that exchange width and height
_ORIENTATION = 0x0112


class ImageSkipped(Exception):
    """A file that is not indexed; ``str(e)`` is the reason."""


@dataclass(frozen=True)
class Decoded:
    image: Any  # PIL.Image.Image, mode RGB, orientation applied (possibly reduced by JPEG draft)
    width: int  # displayed size of the full-resolution image (after EXIF orientation)
    height: int


def pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        from ..errors import DependencyError

        raise DependencyError("image support needs pillow: pip install 'hyperret[model]'") from None
    return Image


def read_file(path: str | Path) -> tuple[bytes, str]:
    """``(content, hex sha256)`` of a file; an unreadable or empty one is :class:`ImageSkipped`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageSkipped("missing: no such file") from None
    except IsADirectoryError:
        raise ImageSkipped("a directory, not a file") from None
    except OSError as e:
        raise ImageSkipped(f"unreadable: {e.strerror or e}") from None
    if not data:
        raise ImageSkipped("empty file (0 bytes)")
    return data, hashlib.sha256(data).hexdigest()


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> Decoded:
    """Decode ``data`` to an 8-bit RGB image; ``draft``: let JPEG decode at a reduced scale no smaller than this."""
    Image = pil()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise ImageSkipped("not an image (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageSkipped(f"too large: over {max_pixels:,} pixels (decompression bomb?)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageSkipped(f"corrupt header: {first_line(e)}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageSkipped(f"too large: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}")
    if w < 1 or h < 1:
        raise ImageSkipped(f"degenerate size {w}x{h}")
    try:
        orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:
        orientation = 1
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageSkipped(f"truncated or corrupt: {first_line(e)}") from None
    try:
        if orientation != 1:
            from PIL import ImageOps

            img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img)
    except (OSError, ValueError) as e:
        raise ImageSkipped(f"cannot convert mode {img.mode}: {first_line(e)}") from None
    if orientation in _SWAPS:
        w, h = h, w
    return Decoded(rgb, w, h)


def to_rgb(img: Any) -> Any:
    """An 8-bit RGB copy of any Pillow image: alpha composited on white, high bit depths scaled down."""
    Image = pil()
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return to_rgb(img)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        if mode == "F" and top <= 1.0:
            scale = 255.0
        elif top > 255.0:
            scale = 255.0 / 65535.0  # 16-bit samples
        else:
            scale = 1.0
        a8 = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV
