"""Decoding one image or mask with bounded memory: any mode to RGB, masks as class ids, resizing.

Used by `hcli data prepare` (one row at a time) and by the prepare benchmark's baseline. Failures
raise `RowError` with a short reason; the caller records it and moves on to the next row.
"""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image

from hcli.classes import IGNORE_INDEX, NUM_CLASSES

__all__ = [
    "MAX_PIXELS",
    "VALID_LABELS",
    "RowError",
    "open_image",
    "target_size",
    "decode_rgb",
    "decode_mask",
    "class_pixels",
]

# The largest ARTeFACT image has ~133 megapixels and the dataset card raises PIL's limit to
# 243,748,701; we raise it deliberately to 300 MP and refuse anything larger ourselves, since a
# bigger one is more likely a corrupt header than an artwork.
MAX_PIXELS = 300_000_000
VALID_LABELS: tuple[int, ...] = (*range(NUM_CLASSES), IGNORE_INDEX)
_VALID = np.zeros(256, bool)
_VALID[list(VALID_LABELS)] = True


class RowError(ValueError):
    """A row that cannot be used; the message is the reason recorded in the manifest."""


def open_image(data: bytes | BinaryIO | None, what: str) -> Image.Image:
    """Open (header only, lazily decoded) and check the pixel count before anything is decoded.

    `data` is encoded bytes or a seekable file-like object over them (e.g. a pyarrow
    BufferReader, which avoids copying a large encoded image out of arrow's memory).
    """
    if data is None or (isinstance(data, bytes | bytearray) and not data):
        raise RowError(f"{what} has no bytes")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fp = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
            im = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RowError(f"{what} is larger than {MAX_PIXELS // 10**6} megapixels") from None
    except Exception as exc:  # PIL raises many types for bad bytes
        raise RowError(f"{what} is not a decodable image ({type(exc).__name__})") from None
    return im


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the long side at most `max_side`, aspect kept, rounded."""
    long_side = max(width, height)
    if long_side <= max_side:
        return width, height
    scale = max_side / long_side
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's convert() clips high-bit-depth grey at 255; scale into 8 bits instead
        a = np.asarray(im)
        top = float(a.max()) if a.size else 0.0
        if top > 255:
            a = a.astype(np.float32) * (255.0 / (65535.0 if top <= 65535 else top))
        g = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, 2))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")  # RGBA/LA drop alpha, CMYK/YCbCr/L/1/P convert


def decode_rgb(
    data: bytes | BinaryIO | Image.Image | None, max_side: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image to (H, W, 3) uint8 with the long side ≤ max_side; return it and (H, W).

    JPEGs are decoded at a reduced scale where possible (`Image.draft`), other formats are reduced
    by an integer factor straight after decoding (`Image.reduce`, a box filter), so peak memory
    is one decoded copy; the final resize uses a box (area) filter.
    """
    im = data if isinstance(data, Image.Image) else open_image(data, "image")
    w, h = im.size
    tw, th = target_size(w, h, max_side)
    try:
        if (tw, th) != (w, h):
            im.draft(None, (tw, th))  # JPEG only: DCT scaling, keeps size ≥ the target
        im.load()
        factor = min(im.size[0] // tw, im.size[1] // th)
        if factor >= 2 and im.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
            im = im.reduce(factor)
        im = _to_rgb(im)
        if im.size != (tw, th):
            im = im.resize((tw, th), Image.Resampling.BOX)
        arr = np.asarray(im)
    except RowError:
        raise
    except Exception as exc:  # truncated streams, broken chunks, unsupported modes
        raise RowError(f"image cannot be decoded ({type(exc).__name__}: {exc})") from None
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise RowError(f"image mode {im.mode} could not be converted to RGB")
    return arr, (h, w)


_MASK_MODES = ("L", "P", "1", "I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_mask(
    data: bytes | BinaryIO | Image.Image | None, size: tuple[int, int] | None = None
) -> tuple[list[int], np.ndarray]:
    """Decode a one-channel label mask: (class pixel counts at full size, (H, W) uint8 ids).

    With `size` (width, height) the mask is resized with nearest-neighbour first. For 'L' and 'P'
    masks the full-size counts come from PIL's histogram and the full-size mask never becomes a
    numpy array, so a 100-MP mask costs one decoded copy.
    """
    im = data if isinstance(data, Image.Image) else open_image(data, "annotation")
    if im.mode not in _MASK_MODES:
        raise RowError(
            f"annotation has mode {im.mode} ({len(im.getbands())} channels); "
            "expected one channel of class ids"
        )
    try:
        im.load()
    except Exception as exc:
        raise RowError(f"annotation cannot be decoded ({type(exc).__name__}: {exc})") from None
    if im.mode in ("L", "P"):  # 'P' pixels are palette indices: those are the ids
        counts = _valid_counts(np.asarray(im.histogram()[:256]))
    else:
        im = Image.fromarray(_ids_array(im))
        counts = _valid_counts(np.asarray(im.histogram()))
    if size is not None and im.size != size:
        im = im.resize(size, Image.Resampling.NEAREST)
    return counts, np.asarray(im)


def _ids_array(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise RowError(f"annotation holds label {hi if hi > 255 else lo}; allowed 0..15, 255")
        a = a.astype(np.uint8)
    return a


def class_pixels(mask: np.ndarray) -> list[int]:
    """17 counts: ids 0..15, then 255. Raises RowError on any other label."""
    counts = np.zeros(256, np.int64)
    flat = mask.reshape(-1)
    step = 1 << 22  # bincount widens to int64: count in slices to bound that copy
    for i in range(0, flat.size, step):
        counts += np.bincount(flat[i : i + step], minlength=256)
    return _valid_counts(counts)


def _valid_counts(counts: np.ndarray) -> list[int]:
    bad = np.flatnonzero((counts > 0) & ~_VALID)
    if bad.size:
        raise RowError(
            f"annotation holds label(s) {', '.join(map(str, bad[:5]))}; allowed 0..15 and 255"
        )
    return [int(counts[i]) for i in VALID_LABELS]
