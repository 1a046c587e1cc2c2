"""Training targets: SSD matching of one image's ground truth to the anchors, and its encoded offsets.

A TensorFlow op usable inside ``tf.data`` maps. Boxes are normalised ``(ymin, xmin, ymax, xmax)`` and
anchors ``(cy, cx, h, w)`` (see :mod:`predictor.ssd.boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from predictor.ssd import boxes as box_ops


def match_anchors(
    gt_boxes: tf.Tensor,
    gt_labels: tf.Tensor,
    anchors: tf.Tensor,
    iou_threshold: float = 0.5,
    prior_scaling: Sequence[float] = box_ops.DEFAULT_PRIOR_SCALING,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """SSD matching of one image's ground truth to the anchors.

    An anchor is positive when its best IoU with a ground-truth box is ``>= iou_threshold``; in addition
    every ground-truth box gets its single best anchor, whatever the IoU (the forced match).

    Args:
      gt_boxes: float32 ``[G, 4]`` normalised ``(ymin, xmin, ymax, xmax)`` (G may be 0).
      gt_labels: int32 ``[G]`` class ids ``>= 1``.
      anchors: float32 ``[A, 4]`` ``(cy, cx, h, w)``.
    Returns:
      ``labels int32 [A]`` (0 = background), ``loc float32 [A, 4]`` encoded targets (0 for negatives),
      ``matched_iou float32 [A]``.
    """
    gt_boxes = tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4])
    gt_labels = tf.reshape(tf.cast(gt_labels, tf.int32), [-1])
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_anchors = tf.shape(anchors)[0]
    num_gt = tf.shape(gt_boxes)[0]

    def with_gt():
        iou = box_ops.iou_xyxy(gt_boxes, box_ops.anchors_to_corners(anchors))  # [G, A]
        best_gt = tf.argmax(iou, axis=0, output_type=tf.int32)  # [A]
        best_iou = tf.reduce_max(iou, axis=0)
        forced_anchor = tf.argmax(iou, axis=1, output_type=tf.int32)  # [G]
        best_gt = tf.tensor_scatter_nd_update(best_gt, forced_anchor[:, None], tf.range(num_gt))
        best_iou = tf.tensor_scatter_nd_update(best_iou, forced_anchor[:, None], tf.fill([num_gt], 2.0))
        positive = best_iou >= iou_threshold
        labels = tf.where(positive, tf.gather(gt_labels, best_gt), 0)
        loc = box_ops.encode(tf.gather(gt_boxes, best_gt), anchors, prior_scaling)
        loc = tf.where(positive[:, None], loc, 0.0)
        return labels, loc, tf.minimum(best_iou, 1.0)

    def without_gt():
        return tf.zeros([num_anchors], tf.int32), tf.zeros([num_anchors, 4]), tf.zeros([num_anchors])

    return tf.cond(num_gt > 0, with_gt, without_gt)
