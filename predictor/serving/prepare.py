"""Decode thread work: one request payload -> the model's input row and the frame its boxes are in.

Encoded images are decoded (optionally at a reduced JPEG scale, see
:func:`predictor.serving.images.decode_image_reduced`), ``UINT8`` tensors are only validated; both are then
resized to the network's ``S x S`` from their uint8 pixels. The original ``(H, W)`` travels with the row
so boxes come back in pixels of the image the client sent, whatever size was decoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from predictor.serving import codecs, prometheus
from predictor.serving.errors import InvalidInput
from predictor.serving.images import ImageLimits, check_pixel_array, decode_image_reduced

#: ``resize(uint8 [H, W, 3]) -> float32 [S, S, 3]`` (``Detector.resize``).
Resize = Callable[[np.ndarray], np.ndarray]

#: Weight of the newest image in :data:`DECODE_TIME`'s moving average (about the last 50 images count).
DECODE_EWMA_ALPHA = 0.02


class DecodeTime:
    """Moving average of one image's decode + resize seconds (every image :func:`prepare_payload`
    prepares), for the decode pool's share of the replica's capacity."""

    def __init__(self, alpha: float = DECODE_EWMA_ALPHA) -> None:
        self.alpha = alpha
        self.seconds: float | None = None  # None until an image was prepared

    def observe(self, seconds: float) -> None:
        # Decode threads race here: a lost update drops one sample of a moving average, nothing more.
        last = self.seconds
        self.seconds = seconds if last is None else last + self.alpha * (seconds - last)


#: The process's decode times (the server has one decode pool).
DECODE_TIME = DecodeTime()


def capacity_images_per_second(
    model_rate: float | None, decode_threads: int, decode_s: float | None
) -> float | None:
    """A replica's images per second: the smaller of what its model does (``model_rate``: the efficient
    bucket's warm-up rate; None before the warm-up) and what its decode pool does (``decode_threads`` /
    mean seconds per image; not counted before an image was prepared). On a GPU node the two run side by
    side on different hardware, so the slower one bounds the replica; on a CPU node they share the cores
    and the replica does less than either (the 70 % target's headroom). None before the warm-up."""
    if model_rate is None:
        return None
    if not decode_s or decode_s <= 0:
        return model_rate
    return min(model_rate, decode_threads / decode_s)


def prepare_payload(
    payload: codecs.ImagePayload | codecs.PixelPayload,
    limits: ImageLimits,
    resize: Resize,
    draft_size: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Payload -> (float32 ``[S, S, 3]`` resized image, original ``(H, W)``).

    Args:
      draft_size: decode JPEGs at least twice this size per side at 1/2, 1/4 or 1/8 scale (None: never).
    Raises:
      InvalidInput: ``"<field>: <problem>"`` for anything wrong with the client's image.
    """
    start = time.perf_counter()
    try:
        if isinstance(payload, codecs.PixelPayload):
            pixels = check_pixel_array(payload.pixels, limits)
            original_hw = (pixels.shape[0], pixels.shape[1])
        else:
            data = codecs.payload_bytes(payload, limits.max_bytes)
            pixels, original_hw = decode_image_reduced(data, limits, draft_size=draft_size)
    except InvalidInput as e:
        raise InvalidInput(f"{payload.field}: {e.reason}") from None
    resized = resize(pixels)
    seconds = time.perf_counter() - start
    prometheus.DECODE_SECONDS.observe(seconds)
    DECODE_TIME.observe(seconds)
    return resized, original_hw
