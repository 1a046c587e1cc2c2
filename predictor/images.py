"""Untrusted image bytes -> uint8 RGB arrays, with size caps checked before any pixel is decoded.

Accepted formats: JPEG, PNG, BMP, GIF (first frame) and WebP (when Pillow is built with it); nothing else
reaches a Pillow decoder (no EPS, TIFF, ICO ... plugins). EXIF orientation is applied; grayscale,
palette, RGBA/LA (alpha dropped), CMYK, YCbCr and 16/32-bit grayscale (scaled to 8 bit) become RGB.

Every failure caused by the bytes themselves raises :class:`ImageError` (a ``kserve.errors.InvalidInput``,
HTTP 400); the caller prefixes the instance that carried the image (``instances[3]: ...``).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

import numpy as np
from kserve.errors import InvalidInput
from PIL import Image, ImageOps, features

#: Pillow format names tried when opening, in order (WebP only when compiled in).
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", *(("WEBP",) if features.check("webp") else ()))
#: Largest accepted image side in pixels (JPEG's own limit is 65535).
MAX_SIDE = 65_535
_WHITESPACE = re.compile(rb"[\t\n\r ]+")
_DATA_URI = re.compile(rb"^data:[\w.+/-]*(;[\w=.-]+)*;base64,", re.ASCII)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(InvalidInput):
    """The client's image bytes are unusable (400); ``reason`` says why, without the instance name."""


@dataclass(frozen=True)
class ImageLimits:
    """Caps on untrusted images.

    Attributes:
      max_bytes: largest encoded image in bytes (after base64 decoding).
      max_pixels: largest ``width * height`` accepted; checked from the header, before decoding.
      max_side: largest width or height.
    """

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = MAX_SIDE


def max_base64_chars(max_bytes: int) -> int:
    """Length of the base64 text of ``max_bytes`` bytes, plus slack for line breaks and a data URI."""
    return 4 * ((max_bytes + 2) // 3) + max_bytes // 38 + 256


def decode_base64(text: str | bytes, max_bytes: int) -> bytes:
    """Base64 text -> bytes: standard or URL-safe alphabet, optional padding, line breaks and
    ``data:image/...;base64,`` prefix tolerated; anything else raises :class:`ImageError`."""
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError as e:
            raise ImageError(f"invalid base64: non-ASCII character at position {e.start}") from None
    else:
        raw = bytes(text)
    if len(raw) > max_base64_chars(max_bytes):
        raise ImageError(
            f"encoded image is over {max_bytes} bytes ({len(raw)} base64 characters), "
            f"the limit is {max_bytes}"
        )
    raw = _DATA_URI.sub(b"", _WHITESPACE.sub(b"", raw), count=1)
    if not raw:
        raise ImageError("empty image (no base64 data)")
    if b"-" in raw or b"_" in raw:
        raw = raw.translate(bytes.maketrans(b"-_", b"+/"))
    missing = -len(raw) % 4
    if missing == 3:
        raise ImageError(f"invalid base64: {len(raw)} characters cannot encode whole bytes")
    try:
        data = base64.b64decode(raw + b"=" * missing, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"invalid base64: {e}") from None
    return data


def decode_image(data: bytes | bytearray | memoryview, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Encoded image -> uint8 ``[H, W, 3]`` RGB, EXIF-oriented (``H, W`` as displayed).

    The size in the header is checked against ``limits`` before any pixel data is decoded.
    Raises:
      ImageError: empty, too large, not one of :data:`FORMATS`, corrupt, truncated, or too many pixels.
    """
    size = len(data)
    if size == 0:
        raise ImageError("empty image (0 bytes)")
    if size > limits.max_bytes:
        raise ImageError(f"encoded image is {size} bytes, the limit is {limits.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError(f"image has too many pixels: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception as e:  # Pillow raises many types for garbage headers
        raise ImageError(f"not a decodable image ({', '.join(FORMATS)}): {_describe(e)}") from None
    with image:
        _check_dimensions(image.size, limits)
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
            rgb = to_rgb_array(image)
        except MemoryError:
            raise
        except Exception as e:  # truncated data, corrupt blocks, bad EXIF, bombs found while loading
            raise ImageError(f"corrupt or truncated {image.format} image: {_describe(e)}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"decoded image has unusable shape {list(rgb.shape)}")
    return rgb


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size {width}x{height}")
    if width > limits.max_side or height > limits.max_side:
        raise ImageError(f"image is {width}x{height}, a side is larger than {limits.max_side} pixels")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image has too many pixels: {width}x{height} = {width * height}, "
            f"the limit is {limits.max_pixels}"
        )


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Loaded Pillow image of any mode -> uint8 ``[H, W, 3]``; 16/32-bit gray is scaled to 8 bit."""
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode in _HIGH_BIT_MODES:
        gray = np.asarray(image)
        if image.mode == "F":
            gray8 = np.clip(np.nan_to_num(gray), 0, 255).astype(np.uint8)
        else:
            gray8 = (np.clip(gray.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__
