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
    prometheus.DECODE_SECONDS.observe(time.perf_counter() - start)
    return resized, original_hw
