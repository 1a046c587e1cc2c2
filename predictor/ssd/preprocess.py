"""Pre-processing identical to balancap's ``preprocess_for_eval`` with WARP resize.

uint8 RGB ``[H, W, 3]`` -> float32, bilinear resize to ``S x S`` ignoring aspect ratio with TF1 semantics
(``align_corners=False``, ``half_pixel_centers=False``), then subtract the RGB means (123, 117, 104).
Balancap subtracts before resizing; bilinear weights sum to one, so both orders agree up to float
rounding, and resizing first lets the serving layer resize images of any size in parallel and batch
the results.

Two implementations of the same arithmetic, bit for bit: TensorFlow's ``ResizeBilinear`` kernel
(:func:`resize_warp`) and :func:`resize_warp_numpy`. :func:`resize_warp_uint8` (the server's, via
``Detector.resize``) picks the cheaper one for the image's size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
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


#: Largest source (``H * W``) that :func:`resize_warp_uint8` resizes with TensorFlow's kernel. It costs
#: 2.0-3.4x less CPU than :func:`resize_warp_numpy` up to 1080p (0.6-1.4 ms against 2.1-2.7, over the two
#: runs in bench/RESULTS.md), but TensorFlow copies its whole input first (an eager tensor never shares a
#: NumPy buffer; past the server's 8 MiB mmap threshold that copy also page-faults), which makes it 2.7x
#: slower at 12 MP (the first run); 2048x1536 (3.1 MP) is still cheaper with the kernel, 2560x1440
#: (3.7 MP) no longer (``python -m bench.prepare_paths``).
TF_RESIZE_MAX_PIXELS = 3_200_000


def resize_warp_uint8(image: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`resize_warp` of one uint8 ``[H, W, C]`` image to float32 ``[S, S, C]``, bit-identical to
    :func:`resize_warp_numpy`, at the least CPU: TensorFlow's fused CPU kernel (one eager op, run in the
    calling thread, which holds the GIL only to enter and leave it; on the CPU even where a GPU is
    visible) up to :data:`TF_RESIZE_MAX_PIXELS` source pixels, NumPy beyond (it reads only the
    ``4 * S * S`` source pixels it needs).

    Args:
      image: uint8 ``[H, W, C]``.
      size: output side ``S``.
      out: optional float32 ``[S, S, C]`` to write into (e.g. a row of a batch buffer).
    Returns:
      float32 ``[S, S, C]`` (``out`` when given).
    """
    h, w, _ = image.shape
    if h * w > TF_RESIZE_MAX_PIXELS:
        return resize_warp_numpy(image, size, out)
    with tf.device("/CPU:0"):  # a GPU's kernel may fuse the multiply-adds: not the same bits
        resized = tf.raw_ops.ResizeBilinear(
            images=image[None], size=[size, size], align_corners=False, half_pixel_centers=False
        ).numpy()[0]  # a view of the result, no slice op
    if out is None:
        return resized
    out[...] = resized
    return out


def subtract_means(images: tf.Tensor, means: Sequence[float]) -> tf.Tensor:
    """``float32 [..., 3]`` RGB minus the per-channel means."""
    return tf.cast(images, tf.float32) - tf.constant(means, tf.float32)


@functools.lru_cache(maxsize=256)
def _warp_taps(in_size: int, out_size: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF1 bilinear taps along one axis (``align_corners=False``, ``half_pixel_centers=False``).

    Source coordinate ``x = i * in / out`` (float32, as TensorFlow computes it). Returns ``(taps,
    columns, weight)``: int ``[2 * out]`` lower then upper indices, the same as byte columns of a
    ``[.., in * channels]`` row (``[2 * out * channels]``), and the float32 ``[out]`` weight of the upper.
    """
    scale = np.float32(in_size / out_size)
    x = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(x).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    taps = np.concatenate([lower, upper])
    columns = (taps[:, None] * channels + np.arange(channels)).ravel()
    weight = (x - lower).astype(np.float32)
    for cached in (taps, columns, weight):
        cached.flags.writeable = False  # shared by every call with these sizes
    return taps, columns, weight


def resize_warp_numpy(image: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`resize_warp` in NumPy for one uint8 image, reading only the ``4 * S * S`` pixels it needs.

    No float copy of the source is made: the taps are gathered from the uint8 image in one
    ``[2S, 2S, C]`` block and only that block is converted to float32. Same arithmetic, in the same
    order, as TensorFlow's kernel (equal to the last bit in the tests).

    Args:
      image: uint8 ``[H, W, C]``.
      size: output side ``S``.
      out: optional float32 ``[S, S, C]`` to write into (e.g. a row of a batch buffer).
    Returns:
      float32 ``[S, S, C]`` (``out`` when given).
    """
    h, w, c = image.shape
    rows, _, wy = _warp_taps(h, size, c)
    _, columns, wx = _warp_taps(w, size, c)
    pixel_rows = np.ascontiguousarray(image).reshape(h, w * c)
    block = pixel_rows[rows][:, columns].astype(np.float32).reshape(2, size, 2, size, c)
    wx3 = wx[None, :, None]
    top, top_right = block[0, :, 0], block[0, :, 1]  # views: top-left, top-right taps
    bottom, bottom_right = block[1, :, 0], block[1, :, 1]
    top_right -= top
    top_right *= wx3
    top += top_right  # top-left + (top-right - top-left) * x_lerp
    bottom_right -= bottom
    bottom_right *= wx3
    bottom += bottom_right
    if out is None:
        out = np.empty((size, size, c), np.float32)
    np.subtract(bottom, top, out=out)
    out *= wy[:, None, None]
    out += top  # top + (bottom - top) * y_lerp
    return out
