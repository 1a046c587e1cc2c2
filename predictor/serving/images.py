"""Untrusted image bytes -> uint8 RGB arrays, with size caps checked before any pixel is decoded.

Accepted formats: JPEG, PNG, BMP, GIF (first frame) and WebP (when Pillow is built with it); nothing else
reaches a Pillow decoder (no EPS, TIFF, ICO ... plugins). EXIF orientation is applied; grayscale,
palette, RGBA/LA (alpha dropped), CMYK, YCbCr and 16/32-bit grayscale (scaled to 8 bit) become RGB.

Every failure caused by the bytes themselves raises :class:`~predictor.serving.errors.ImageError`
(an ``InvalidInput``, HTTP 400); the caller prefixes the instance that carried the image
(``instances[3]: ...``).

Public functions, one per stage of the server's per-image path (``bench/pipeline.py``,
``bench/raw_model.py`` and ``bench/draft_effect.py`` time them on purpose): :func:`decode_base64`,
:func:`decode_image` (full size), :func:`decode_image_reduced` (optionally at a reduced JPEG scale),
:func:`check_pixel_array` (client-sent ``UINT8`` pixels), with the caps in :class:`ImageLimits`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, features

from predictor.protocol import base64text
from predictor.protocol.errors import MalformedMessage
from predictor.serving.errors import ImageError
from predictor.serving.options import ServingOptions

#: Pillow format names tried when opening, in order (WebP only when compiled in).
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", *(("WEBP",) if features.check("webp") else ()))
#: Largest accepted image side in pixels (JPEG's own limit is 65535).
MAX_SIDE = 65_535
_ORIENTATION = 0x0112  # EXIF tag
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # orientations whose transposition swaps width and height
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class ImageLimits:
    """Caps on untrusted images (defaults: :class:`~predictor.serving.options.ServingOptions`).

    Attributes:
      max_bytes: largest encoded image in bytes (after base64 decoding).
      max_pixels: largest ``width * height`` accepted; checked from the header, before decoding.
      max_side: largest width or height.
    """

    max_bytes: int = ServingOptions.max_image_bytes
    max_pixels: int = ServingOptions.max_image_pixels
    max_side: int = MAX_SIDE


def decode_base64(text: str | bytes, max_bytes: int) -> bytes:
    """Base64 text -> bytes (:func:`predictor.protocol.base64text.decode_base64`: standard or URL-safe
    alphabet, optional padding, line breaks and ``data:image/...;base64,`` prefix tolerated); anything
    else raises :class:`ImageError`."""
    try:
        return base64text.decode_base64(text, max_bytes)
    except MalformedMessage as e:
        raise ImageError(str(e)) from None


class DecodedImage(NamedTuple):
    """A decoded image, possibly reduced while decoding.

    Attributes:
      pixels: uint8 ``[h, w, 3]`` RGB, EXIF-oriented; smaller than the original after a JPEG draft.
      original_hw: ``(H, W)`` of the full-size image as displayed (after EXIF orientation): the frame
        boxes are reported in.
    """

    pixels: np.ndarray
    original_hw: tuple[int, int]


def decode_image(data: bytes | bytearray | memoryview, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Encoded image -> uint8 ``[H, W, 3]`` RGB, EXIF-oriented (``H, W`` as displayed).

    The size in the header is checked against ``limits`` before any pixel data is decoded.
    Raises:
      ImageError: empty, too large, not one of :data:`FORMATS`, corrupt, truncated, or too many pixels.
    """
    return decode_image_reduced(data, limits, draft_size=None).pixels


def decode_image_reduced(
    data: bytes | bytearray | memoryview, limits: ImageLimits = ImageLimits(), *, draft_size: int | None
) -> DecodedImage:
    """:func:`decode_image` that may decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
    Pillow's ``Image.draft``) when both its sides are at least twice ``draft_size``.

    The reduced image keeps both sides ``>= draft_size``, so a resize to ``draft_size x draft_size``
    still only shrinks. Caps are checked on the full size from the header; ``original_hw`` is the full
    size as displayed, whatever the reduction. Other formats, and ``draft_size=None``, decode at full size.
    Raises:
      ImageError: as :func:`decode_image`.
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
        width, height = image.size
        try:
            if draft_size is not None and image.format == "JPEG":
                image.draft(None, (draft_size, draft_size))  # both sides stay >= draft_size
            swaps_sides = image.getexif().get(_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
            rgb = to_rgb_array(image)
        except MemoryError:
            raise
        except Exception as e:  # truncated data, corrupt blocks, bad EXIF, bombs found while loading
            raise ImageError(f"corrupt or truncated {image.format} image: {_describe(e)}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"decoded image has unusable shape {list(rgb.shape)}")
    return DecodedImage(rgb, (width, height) if swaps_sides else (height, width))


def check_pixel_array(pixels: np.ndarray, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Validate an already decoded image sent as a tensor: uint8 ``[H, W, 3]``, sides and pixel count
    within ``limits`` (the same caps as encoded images). Returns it unchanged.

    Raises:
      ImageError: wrong dtype, rank or channel count, a zero or too large side, too many pixels.
    """
    if pixels.dtype != np.uint8:
        raise ImageError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageError(f"expected an RGB image [H, W, 3], got shape {list(pixels.shape)}")
    _check_dimensions((pixels.shape[1], pixels.shape[0]), limits)
    return pixels


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
    """Loaded Pillow image of any mode -> uint8 ``[H, W, 3]`` (read-only); 16/32-bit gray is scaled to
    8 bit."""
    if image.mode == "RGB":
        return rgb_pixels(image)
    if image.mode in _HIGH_BIT_MODES:
        gray = np.asarray(image)
        if image.mode == "F":
            gray8 = np.clip(np.nan_to_num(gray), 0, 255).astype(np.uint8)
        else:
            gray8 = (np.clip(gray.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    return rgb_pixels(image.convert("RGB"))


#: What Pillow's private encoder API may raise where it is not as in Pillow 13 (rgb_pixels falls back).
_ENCODER_ERRORS = (AttributeError, TypeError, OSError, ValueError, SystemError)


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """Pillow RGB image -> read-only uint8 ``[H, W, 3]``, bit for bit ``np.asarray(image)`` with one
    copy of the image fewer: Pillow holds RGB as 4 bytes per pixel;
    ``np.asarray`` packs it to 3 in chunks (``Image.tobytes``) and then joins them; here the raw encoder
    that ``tobytes`` uses packs it in one chunk, which becomes the array's memory (what it saves:
    ``python -m bench.decode_copies``, bench/RESULTS.md "Served: wake-ups, copies and idle cores").
    Falls back to ``np.asarray`` for any other mode, an empty image, where that encoder is not there as
    in Pillow 13 (a private API), or where it does not finish in one chunk."""
    image.load()
    width, height = image.size
    if image.mode != "RGB" or width * height == 0:  # the encoder packs RGB's 4-byte pixels only
        return np.asarray(image)
    try:
        encoder = Image._getencoder("RGB", "raw", "RGB")
    except _ENCODER_ERRORS:
        return np.asarray(image)
    try:
        encoder.setimage(image.im, (0, 0, width, height))
        _, status, data = encoder.encode(width * height * 3)
    except _ENCODER_ERRORS:
        return np.asarray(image)
    finally:
        encoder.cleanup()
    if status != 1 or len(data) != width * height * 3:  # 1: the whole image in this chunk
        return np.asarray(image)
    return np.frombuffer(data, np.uint8).reshape(height, width, 3)


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__
