"""Pre-processing identical to balancap's ``preprocess_for_eval`` with WARP resize.

uint8 RGB ``[H, W, 3]`` -> float32, bilinear resize to ``S x S`` ignoring aspect ratio with TF1 semantics
(``align_corners=False``, ``half_pixel_centers=False``), then subtract the RGB means (123, 117, 104).
Balancap subtracts before resizing; bilinear weights sum to one, so both orders agree up to float
rounding, and resizing first lets the serving layer resize images of any size in parallel and batch
the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def resize_warp(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear WARP resize with TF1 semantics.

    Args:
      image: ``[H, W, 3]`` or ``[N, H, W, 3]``, any real dtype.
      size: output side ``S``.
    Returns:
      float32 ``[S, S, 3]`` or ``[N, S, S, 3]`` (values in the input's range, means not subtracted).
    """
    image = tf.convert_to_tensor(image)
    batched = image.shape.rank == 4
    x = image if batched else image[None]
    if x.dtype not in (tf.float32, tf.float16, tf.float64, tf.uint8, tf.int32, tf.int64, tf.int16):
        x = tf.cast(x, tf.float32)
    y = tf.raw_ops.ResizeBilinear(images=x, size=[size, size], align_corners=False, half_pixel_centers=False)
    return y if batched else y[0]


def subtract_means(images: tf.Tensor, means: Sequence[float]) -> tf.Tensor:
    """``float32 [..., 3]`` RGB minus the per-channel means."""
    return tf.cast(images, tf.float32) - tf.constant(means, tf.float32)
