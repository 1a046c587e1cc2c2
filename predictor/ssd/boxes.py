"""Box formats and the SSD box coding — the one module that owns these conventions.

Conventions used everywhere in this project:

* **Anchors** are ``float32 [A, 4]`` in ``(cy, cx, h, w)`` order, normalised to the network input
  (0..1 spans the input; centres of the last cells may exceed 1.0, anchors are never clipped).
* **Network box regression** is ``[..., A, 4]`` in ``(t_x, t_y, t_w, t_h)`` order (Caffe/SSD order, as the
  balancap checkpoint's ``conv_loc`` channels are laid out).
* **Normalised boxes** (model internals, training targets) are ``(ymin, xmin, ymax, xmax)`` in 0..1 of the
  image. With the WARP resize used by the pre-processing this frame is the same for the network input and
  the original image.
* **Pixel boxes** (everything the API returns, datasets, COCO conversion) are ``(xmin, ymin, xmax, ymax)``
  in pixels of the original image, with ``0 <= xmin < xmax <= W`` and ``0 <= ymin < ymax <= H``.

Decoding with prior scaling ``(s_x, s_y, s_w, s_h) = (0.1, 0.1, 0.2, 0.2)``::

    cx = x_a + t_x * w_a * s_x      w = w_a * exp(t_w * s_w)
    cy = y_a + t_y * h_a * s_y      h = h_a * exp(t_h * s_h)

Encoding is its exact inverse. Functions take and return TensorFlow tensors; they also accept numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

PriorScaling = Sequence[float]
DEFAULT_PRIOR_SCALING: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
# exp() argument cap when decoding: exp(4.135) ~ 62.5x the anchor side; keeps garbage logits finite.
_MAX_LOG_SCALE = 4.135


def decode(
    loc: tf.Tensor, anchors: tf.Tensor, prior_scaling: PriorScaling = DEFAULT_PRIOR_SCALING
) -> tf.Tensor:
    """Decode regression offsets into normalised boxes.

    Args:
      loc: ``[..., A, 4]`` offsets ``(t_x, t_y, t_w, t_h)``.
      anchors: ``[A, 4]`` anchors ``(cy, cx, h, w)``.
    Returns:
      ``[..., A, 4]`` boxes ``(ymin, xmin, ymax, xmax)``, normalised.
    """
    loc = tf.convert_to_tensor(loc, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    ya, xa, ha, wa = tf.unstack(anchors, axis=-1)
    tx, ty, tw, th = tf.unstack(loc, axis=-1)
    sx, sy, sw, sh = prior_scaling
    cx = xa + tx * wa * sx
    cy = ya + ty * ha * sy
    w = wa * tf.exp(tf.minimum(tw * sw, _MAX_LOG_SCALE))
    h = ha * tf.exp(tf.minimum(th * sh, _MAX_LOG_SCALE))
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def encode(
    boxes: tf.Tensor, anchors: tf.Tensor, prior_scaling: PriorScaling = DEFAULT_PRIOR_SCALING
) -> tf.Tensor:
    """Encode normalised boxes relative to anchors (inverse of :func:`decode`).

    Args:
      boxes: ``[..., A, 4]`` ``(ymin, xmin, ymax, xmax)``, normalised, non-degenerate.
      anchors: ``[A, 4]`` ``(cy, cx, h, w)``.
    Returns:
      ``[..., A, 4]`` offsets ``(t_x, t_y, t_w, t_h)``.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    ya, xa, ha, wa = tf.unstack(anchors, axis=-1)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    sx, sy, sw, sh = prior_scaling
    h = tf.maximum(ymax - ymin, 1e-8)
    w = tf.maximum(xmax - xmin, 1e-8)
    cy = (ymin + ymax) / 2
    cx = (xmin + xmax) / 2
    return tf.stack(
        [(cx - xa) / wa / sx, (cy - ya) / ha / sy, tf.math.log(w / wa) / sw, tf.math.log(h / ha) / sh],
        axis=-1,
    )


def anchors_to_corners(anchors: tf.Tensor) -> tf.Tensor:
    """``[A, 4]`` anchors ``(cy, cx, h, w)`` -> ``[A, 4]`` normalised ``(ymin, xmin, ymax, xmax)``."""
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    cy, cx, h, w = tf.unstack(anchors, axis=-1)
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def normalized_to_pixels(boxes: tf.Tensor, image_hw: tf.Tensor) -> tf.Tensor:
    """Normalised ``(ymin, xmin, ymax, xmax)`` -> pixel ``(xmin, ymin, xmax, ymax)``, clipped to the image.

    Args:
      boxes: ``[B, N, 4]`` normalised boxes.
      image_hw: ``[B, 2]`` original image ``(height, width)`` in pixels.
    Returns:
      ``[B, N, 4]`` pixel boxes clipped to ``[0, W] x [0, H]`` (may be degenerate after clipping).
    """
    image_hw = tf.cast(image_hw, tf.float32)
    h = image_hw[:, None, 0]
    w = image_hw[:, None, 1]
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack(
        [
            tf.clip_by_value(xmin * w, 0.0, w),
            tf.clip_by_value(ymin * h, 0.0, h),
            tf.clip_by_value(xmax * w, 0.0, w),
            tf.clip_by_value(ymax * h, 0.0, h),
        ],
        axis=-1,
    )


def pixels_to_normalized(boxes_xyxy: tf.Tensor, image_hw: tf.Tensor) -> tf.Tensor:
    """Pixel ``(xmin, ymin, xmax, ymax)`` ``[..., N, 4]`` of an image ``(h, w)`` -> normalised yxyx."""
    boxes_xyxy = tf.convert_to_tensor(boxes_xyxy, tf.float32)
    image_hw = tf.cast(image_hw, tf.float32)
    h, w = image_hw[..., 0, None], image_hw[..., 1, None]
    xmin, ymin, xmax, ymax = tf.unstack(boxes_xyxy, axis=-1)
    return tf.stack([ymin / h, xmin / w, ymax / h, xmax / w], axis=-1)


def iou_xyxy(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU of ``[..., N, 4]`` and ``[..., M, 4]`` corner boxes -> ``[..., N, M]``.

    Works for any corner order as long as both inputs use the same one ((y1, x1, y2, x2) too).
    Boxes with zero area have IoU 0 with everything. Each coordinate is broadcast on its own
    (``[..., N, 1]`` against ``[..., 1, M]``): Eigen broadcasts a trailing pair of coordinates 3-4x
    slower; the arithmetic, and so every bit of the result, is the same.
    """
    a = tf.convert_to_tensor(a, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    ax1, ay1, ax2, ay2 = tf.unstack(a, num=4, axis=-1)  # [..., N] each
    bx1, by1, bx2, by2 = tf.unstack(b, num=4, axis=-1)  # [..., M] each

    def col(t: tf.Tensor) -> tf.Tensor:
        return t[..., :, None]

    def row(t: tf.Tensor) -> tf.Tensor:
        return t[..., None, :]

    inter_w = tf.maximum(tf.minimum(col(ax2), row(bx2)) - tf.maximum(col(ax1), row(bx1)), 0.0)
    inter_h = tf.maximum(tf.minimum(col(ay2), row(by2)) - tf.maximum(col(ay1), row(by1)), 0.0)
    inter = inter_w * inter_h
    area_a = tf.maximum(ax2 - ax1, 0.0) * tf.maximum(ay2 - ay1, 0.0)
    area_b = tf.maximum(bx2 - bx1, 0.0) * tf.maximum(by2 - by1, 0.0)
    union = col(area_a) + row(area_b) - inter
    return tf.where(union > 0, inter / tf.maximum(union, 1e-12), 0.0)
