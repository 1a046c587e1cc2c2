"""SSD-style training augmentation: photometric distortion, zoom-out, random crop, horizontal flip, then
the WARP resize to the network's input.

All functions are TensorFlow ops usable inside ``tf.data`` maps. Boxes are normalised
``(ymin, xmin, ymax, xmax)`` (see :mod:`predictor.ssd.boxes`); randomness is stateless, from an explicit
``seed`` tensor ``int32/int64 [2]``, so a data pipeline is reproducible element by element.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from predictor.ssd.preprocess import resize_warp


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return list(tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n)))


def photometric_distort(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue (each with probability 1/2) on float 0..255 RGB."""
    s = _seeds(seed, 8)
    x = image / 255.0

    def maybe(i: int, fn, x):
        return tf.cond(tf.random.stateless_uniform([], s[i]) < 0.5, lambda: fn(x), lambda: x)

    x = maybe(0, lambda v: tf.image.stateless_random_brightness(v, 32.0 / 255.0, s[1]), x)
    x = maybe(2, lambda v: tf.image.stateless_random_contrast(v, 0.5, 1.5, s[3]), x)
    x = maybe(4, lambda v: tf.image.stateless_random_saturation(v, 0.5, 1.5, s[5]), x)
    x = maybe(6, lambda v: tf.image.stateless_random_hue(v, 0.05, s[7]), x)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def random_expand(
    image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, max_ratio: float, fill: Sequence[float]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Zoom out: place the image at a random spot of a canvas ``r`` times larger (r in [1, max_ratio])."""
    s = _seeds(seed, 3)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    ratio = tf.random.stateless_uniform([], s[0], 1.0, max_ratio)
    ch, cw = tf.math.floor(h * ratio), tf.math.floor(w * ratio)
    top = tf.math.floor(tf.random.stateless_uniform([], s[1], 0.0, 1.0) * (ch - h + 1.0))
    left = tf.math.floor(tf.random.stateless_uniform([], s[2], 0.0, 1.0) * (cw - w + 1.0))
    fill_t = tf.constant(fill, tf.float32)
    pad = [[tf.cast(top, tf.int32), tf.cast(ch - h - top, tf.int32)],
           [tf.cast(left, tf.int32), tf.cast(cw - w - left, tf.int32)], [0, 0]]  # fmt: skip
    # One pad of the whole image around the fill colour (zero after the subtraction).
    canvas = tf.pad(image - fill_t, pad) + fill_t
    scale = tf.stack([h / ch, w / cw, h / ch, w / cw])
    offset = tf.stack([top / ch, left / cw, top / ch, left / cw])
    return canvas, boxes * scale + offset


def random_crop(
    image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """SSD random crop: a patch covering at least a random fraction of some object (0.1 .. 0.9).

    Boxes whose centre falls outside the patch are dropped; the others are clipped to it.
    """
    s = _seeds(seed, 2)
    choices = tf.constant([0.1, 0.3, 0.5, 0.7, 0.9], tf.float32)
    min_cover = tf.gather(choices, tf.random.stateless_uniform([], s[0], 0, 5, dtype=tf.int32))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.reshape(boxes, [1, -1, 4]),
        seed=s[1],
        min_object_covered=min_cover,
        aspect_ratio_range=(0.5, 2.0),
        area_range=(0.3, 1.0),
        max_attempts=50,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    y0, x0 = tf.cast(begin[0], tf.float32) / h, tf.cast(begin[1], tf.float32) / w
    ch, cw = tf.cast(size[0], tf.float32) / h, tf.cast(size[1], tf.float32) / w
    cy = (boxes[:, 0] + boxes[:, 2]) / 2
    cx = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cy > y0) & (cy < y0 + ch) & (cx > x0) & (cx < x0 + cw)
    boxes = tf.boolean_mask(boxes, inside)
    labels = tf.boolean_mask(labels, inside)
    boxes = (boxes - tf.stack([y0, x0, y0, x0])) / tf.stack([ch, cw, ch, cw])
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    return crop, boxes, labels


def flip_horizontal(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror an image and its normalised boxes left-right."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.reverse(image, axis=[1]), tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def augment(
    image: tf.Tensor,
    boxes: tf.Tensor,
    labels: tf.Tensor,
    seed: tf.Tensor,
    input_size: int,
    means: Sequence[float],
    max_expand: float = 2.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """SSD training augmentation, then WARP resize to ``input_size``.

    Photometric distortion; zoom-out (p 0.5); random crop (p 0.7); horizontal flip (p 0.5).

    Args:
      image: uint8 ``[H, W, 3]`` RGB; boxes: normalised ``[G, 4]``; labels: int32 ``[G]``.
    Returns:
      float32 ``[S, S, 3]`` (0..255, means not subtracted), boxes ``[G', 4]``, labels ``[G']``.
    """
    s = _seeds(seed, 7)
    x = photometric_distort(tf.cast(image, tf.float32), s[0])
    x, boxes = tf.cond(
        tf.random.stateless_uniform([], s[1]) < 0.5,
        lambda: random_expand(x, boxes, s[2], max_expand, means),
        lambda: (x, boxes),
    )
    x, boxes, labels = tf.cond(
        tf.random.stateless_uniform([], s[3]) < 0.7,
        lambda: random_crop(x, boxes, labels, s[4]),
        lambda: (x, boxes, labels),
    )
    x, boxes = tf.cond(
        tf.random.stateless_uniform([], s[5]) < 0.5, lambda: flip_horizontal(x, boxes), lambda: (x, boxes)
    )
    keep = (boxes[:, 2] - boxes[:, 0] > 1e-3) & (boxes[:, 3] - boxes[:, 1] > 1e-3)
    return resize_warp(x, input_size), tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
