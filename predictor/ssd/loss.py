"""The SSD multibox training loss: softmax cross-entropy with hard-negative mining plus smooth-L1 on
the encoded offsets of the positive anchors (targets from :mod:`predictor.ssd.matching`)."""

from __future__ import annotations

import tensorflow as tf


def smooth_l1(x: tf.Tensor) -> tf.Tensor:
    """Elementwise smooth-L1 (Huber with delta 1)."""
    ax = tf.abs(x)
    return tf.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def ssd_loss(
    labels: tf.Tensor,
    loc_targets: tf.Tensor,
    logits: tf.Tensor,
    loc: tf.Tensor,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 3,
    loc_weight: float = 1.0,
    pos_cls_weight: float = 1.0,
) -> dict[str, tf.Tensor]:
    """SSD multibox loss with hard-negative mining.

    Softmax cross-entropy over positives (each weighted ``pos_cls_weight``) plus the
    ``neg_pos_ratio * positives`` (at least ``min_negatives``) negatives of highest loss per image, plus
    smooth-L1 on the encoded offsets of positives, both divided by the number of positives in the batch.

    Args:
      labels: int32 ``[B, A]``; loc_targets: ``[B, A, 4]``; logits: ``[B, A, C]``; loc: ``[B, A, 4]``.
    Returns:
      dict with ``loss``, ``cls_loss``, ``loc_loss`` and ``num_positives`` scalars.
    """
    logits = tf.cast(logits, tf.float32)
    loc = tf.cast(loc, tf.float32)
    positive = labels > 0
    pos_f = tf.cast(positive, tf.float32)
    num_pos_per_image = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # [B]
    num_pos = tf.maximum(tf.reduce_sum(pos_f), 1.0)

    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # [B, A]
    neg_ce = tf.where(positive, -1.0, ce)  # positives never mined
    rank = tf.argsort(tf.argsort(neg_ce, axis=1, direction="DESCENDING"), axis=1)
    num_neg = tf.maximum(
        tf.cast(tf.cast(num_pos_per_image, tf.float32) * neg_pos_ratio, tf.int32), min_negatives
    )
    hard_negative = (~positive) & (rank < num_neg[:, None])
    cls_loss = tf.reduce_sum(ce * (pos_cls_weight * pos_f + tf.cast(hard_negative, tf.float32))) / num_pos
    loc_loss = tf.reduce_sum(smooth_l1(loc - loc_targets) * pos_f[..., None]) / num_pos
    return {
        "loss": cls_loss + loc_weight * loc_loss,
        "cls_loss": cls_loss,
        "loc_loss": loc_loss,
        "num_positives": num_pos,
    }
