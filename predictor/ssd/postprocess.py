"""Batched SSD post-processing inside the TensorFlow graph (no Python loop per image or per box).

For every image of the batch, in one graph:

1. softmax over classes; decode boxes (:func:`predictor.ssd.boxes.decode`);
2. convert to pixel ``(xmin, ymin, xmax, ymax)`` of the *original* image and clip to it;
3. keep every (anchor, class >= 1) pair whose score is ``> score_threshold``, whose class is allowed by
   the image's class mask and whose clipped box has positive width and height (this removes the
   zero-size boxes of the tutorial); the mask filters *before* top-k, so excluded classes never take
   candidate slots from the requested ones;
4. keep the ``top_k`` best pairs over all classes;
5. greedy per-class NMS: a box is dropped when a kept, higher-scoring box *of the same class* overlaps it
   with IoU ``>= nms_threshold`` (balancap's rule; the threshold may differ per image);
6. return at most ``max_detections`` per image, sorted by descending score, zero-padded, with
   ``num_detections``.

Greedy NMS is computed as the fixed point of ``keep[j] = not any_i<j(keep[i] and suppresses[i, j])``
over the score-sorted candidates: that recursion has exactly one solution (the greedy one), and iterating
it from "keep all" reaches it in at most ``top_k`` steps (usually a handful): :func:`greedy_nms` returns
how many (tests hold it to the bound on known inputs, so a loop that runs to its cap is caught).

Sizing: a trained model passes a few dozen candidates per image, not ``top_k``. So steps 4-6 run on
``K`` candidates, the smallest of :data:`CANDIDATE_SLOTS` that holds every candidate that passed the
score threshold and class mask in every image of the batch; only those ``K`` boxes are decoded and
tested for positive size (step 3's box test, after top-k instead of before: every candidate is in the
list, so the valid ones and their order are the same). When an image has more than the largest slot,
every anchor is decoded, tested and the ``top_k`` best kept, as the steps read. The branch is a
``tf.switch_case`` on the count: shapes stay static (XLA) and only the chosen branch runs. ``tf.math.top_k``
is stable (equal scores keep the lower index whatever ``K``), so the detections are those of the
``top_k`` path, at ``(K / top_k)^2`` of its IoU matrix and NMS loop and ``K / A`` of its decoding.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from predictor.ssd import boxes as box_ops

#: Candidate counts (below ``top_k``) that post-processing sizes its top-k, decoding and IoU matrix to
#: when every image of the batch has at most that many candidates (the module docstring's "Sizing").
CANDIDATE_SLOTS = (32, 128)


class BatchedDetections(NamedTuple):
    """The in-graph output for a whole batch: tensors padded to ``D`` rows per image (one image's
    trimmed numpy detections: :class:`predictor.ssd.detector.ImageDetections`).

    Attributes:
      boxes: float32 ``[B, D, 4]`` pixel ``(xmin, ymin, xmax, ymax)``; zero rows past ``num_detections``.
      scores: float32 ``[B, D]``, descending within the valid rows; 0 past them.
      classes: int32 ``[B, D]`` class ids ``>= 1``; 0 past the valid rows.
      num_detections: int32 ``[B]``.
    """

    boxes: tf.Tensor
    scores: tf.Tensor
    classes: tf.Tensor
    num_detections: tf.Tensor


class NmsResult(NamedTuple):
    """What :func:`greedy_nms` computes.

    Attributes:
      keep: bool ``[B, K]``, the kept candidates.
      iterations: int32 scalar, how many times the loop body ran: one more than the steps to the fixed
        point (the last run finds nothing changed), so at most ``1 +`` the longest chain of suppressions
        ``i0 -> i1 -> ...`` among the valid candidates (candidate ``j`` is final once every candidate that
        may suppress it is), and at most ``K``. One count for the batch: the loop runs until no image
        changes.
    """

    keep: tf.Tensor
    iterations: tf.Tensor


def greedy_nms(suppresses: tf.Tensor, valid: tf.Tensor) -> NmsResult:
    """Greedy NMS over score-sorted candidates, and the loop's iteration count.

    Args:
      suppresses: bool ``[B, K, K]``; ``[b, i, j]`` is True when candidate ``i`` would suppress ``j``
        (only meaningful for ``i < j``; the rest is ignored).
      valid: bool ``[B, K]`` candidates taking part.
    Returns:
      the kept candidates and the number of iterations (:class:`NmsResult`).
    """
    k = tf.shape(suppresses)[-1]
    upper = tf.linalg.band_part(tf.ones([k, k], tf.bool), 0, -1) & ~tf.eye(k, dtype=tf.bool)
    m = tf.cast(suppresses & upper[None] & valid[:, :, None] & valid[:, None, :], tf.float32)

    def body(keep: tf.Tensor, _changed: tf.Tensor, iterations: tf.Tensor):
        hit = tf.einsum("bi,bij->bj", tf.cast(keep, tf.float32), m) > 0
        new_keep = valid & ~hit
        return new_keep, tf.reduce_any(new_keep != keep), iterations + 1

    keep, _, iterations = tf.while_loop(
        lambda _keep, changed, _iterations: changed,
        body,
        (valid, tf.constant(True), tf.constant(0)),
        maximum_iterations=k + 1,
    )
    return NmsResult(keep, iterations)


def greedy_nms_mask(suppresses: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """The kept candidates of :func:`greedy_nms`: bool ``[B, K]`` (arguments as there)."""
    return greedy_nms(suppresses, valid).keep


def postprocess(
    loc: tf.Tensor,
    logits: tf.Tensor,
    anchors: tf.Tensor,
    image_hw: tf.Tensor,
    score_threshold: tf.Tensor,
    max_detections_per_image: tf.Tensor | None = None,
    *,
    prior_scaling=box_ops.DEFAULT_PRIOR_SCALING,
    nms_threshold: tf.Tensor | float = 0.45,
    class_mask: tf.Tensor | None = None,
    top_k: int = 400,
    max_detections: int = 200,
    candidate_slots: tuple[int, ...] | None = None,
) -> BatchedDetections:
    """Network outputs -> final detections in original-image pixels.

    Args:
      loc: float ``[B, A, 4]`` regression ``(t_x, t_y, t_w, t_h)``.
      logits: float ``[B, A, C]`` class logits, class 0 = background.
      anchors: float32 ``[A, 4]`` ``(cy, cx, h, w)``.
      image_hw: ``[B, 2]`` original ``(height, width)`` in pixels.
      score_threshold: float32 ``[B]`` (or scalar) minimum score, strict ``>``.
      max_detections_per_image: optional int32 ``[B]`` per-image caps ``<= max_detections``.
      nms_threshold: float32 ``[B]`` (or scalar) IoU at or above which same-class boxes are suppressed.
      class_mask: optional bool ``[B, C]`` indexed by class id (column 0, background, is ignored): only
        classes marked True may be detected in that image; None allows every class.
      top_k: candidates kept before NMS.
      max_detections: static output width ``D``.
      candidate_slots: the candidate counts to size to (those ``< top_k`` are used); default
        :data:`CANDIDATE_SLOTS`. ``()``: always decode every anchor and compute the ``top_k x top_k``
        IoU matrix (the cost before sizing; ``bench/postprocess_variants.py`` measures both).
    """
    loc = tf.cast(loc, tf.float32)
    logits = tf.cast(logits, tf.float32)
    batch = tf.shape(logits)[0]
    num_fg = logits.shape[-1] - 1
    score_threshold = tf.broadcast_to(tf.cast(score_threshold, tf.float32), [batch])
    nms_threshold = tf.broadcast_to(tf.cast(nms_threshold, tf.float32), [batch])

    scores = tf.nn.softmax(logits, axis=-1)[:, :, 1:]  # [B, A, C-1]
    passed = scores > score_threshold[:, None, None]
    if class_mask is not None:
        passed &= tf.cast(class_mask, tf.bool)[:, None, 1:]  # [B, 1, C-1]
    flat = tf.reshape(tf.where(passed, scores, 0.0), [batch, -1])  # [B, A*(C-1)], 0: not a candidate

    k = min(top_k, int(logits.shape[1]) * num_fg) if logits.shape[1] is not None else top_k
    slots = CANDIDATE_SLOTS if candidate_slots is None else candidate_slots
    sizes = sorted({s for s in slots if s < k})
    caps = None if max_detections_per_image is None else tf.cast(max_detections_per_image, tf.int32)
    geometry = (loc, anchors, image_hw, prior_scaling)

    def branch(size: int | None):
        def run() -> tuple:
            if size is None:  # more candidates than the largest size: decode every anchor
                cand = _candidates_decoded_first(flat, *geometry, num_fg, k)
            else:
                cand = _candidates_decoded_after(flat, *geometry, num_fg, size)
            return tuple(_nms_select(*cand, nms_threshold, caps, max_detections))

        return run

    if not sizes:
        return BatchedDetections(*branch(None)())
    # the most candidates any image of the batch has -> the smallest size that holds them all
    count = tf.reduce_max(tf.reduce_sum(tf.cast(flat > 0, tf.int32), axis=1))
    index = tf.reduce_sum(tf.cast(count > tf.constant(sizes, tf.int32), tf.int32))
    return BatchedDetections(*tf.switch_case(index, [branch(s) for s in sizes] + [branch(None)]))


class _Candidates(NamedTuple):
    """``K`` candidates per image, by descending score: float32 ``scores [B, K]``, int32 ``classes
    [B, K]`` (``>= 1``), float32 pixel ``boxes [B, K, 4]`` and bool ``valid [B, K]``."""

    scores: tf.Tensor
    classes: tf.Tensor
    boxes: tf.Tensor
    valid: tf.Tensor


def _pixel_boxes(loc, anchors, image_hw, prior_scaling) -> tuple[tf.Tensor, tf.Tensor]:
    """Decoded, clipped pixel boxes ``[B, N, 4]`` and whether each has positive width and height."""
    boxes = box_ops.normalized_to_pixels(box_ops.decode(loc, anchors, prior_scaling), image_hw)
    return boxes, (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def _candidates_decoded_first(
    flat, loc, anchors, image_hw, prior_scaling, num_fg: int, k: int
) -> _Candidates:
    """Step 3's box test on every anchor, then the ``k`` best candidates (any number passed).

    Args:
      flat: float32 ``[B, A*(C-1)]`` scores that passed the threshold and class mask (anchor-major,
        class-minor), 0 elsewhere.
    """
    boxes, positive = _pixel_boxes(loc, anchors, image_hw, prior_scaling)
    flat = tf.where(tf.repeat(positive, num_fg, axis=1), flat, 0.0)
    scores, idx = tf.math.top_k(flat, k=k, sorted=True)  # stable: ties keep the lower index
    cand_boxes = tf.gather(boxes, idx // num_fg, batch_dims=1)
    return _Candidates(scores, idx % num_fg + 1, cand_boxes, scores > 0)


def _candidates_decoded_after(
    flat, loc, anchors, image_hw, prior_scaling, num_fg: int, k: int
) -> _Candidates:
    """The ``k`` best candidates, then step 3's box test on them alone: the same candidates as
    :func:`_candidates_decoded_first` when no image has more than ``k`` candidates (every one is in the
    list, and the order of the valid ones does not depend on the others), at ``k / A`` of the decoding."""
    scores, idx = tf.math.top_k(flat, k=k, sorted=True)  # stable: ties keep the lower index
    anchor = idx // num_fg
    gathered = (tf.gather(loc, anchor, batch_dims=1), tf.gather(anchors, anchor))  # [B, K, 4] each
    boxes, positive = _pixel_boxes(*gathered, image_hw, prior_scaling)
    return _Candidates(scores, idx % num_fg + 1, boxes, (scores > 0) & positive)


def _nms_select(
    cand_scores: tf.Tensor,
    cand_classes: tf.Tensor,
    cand_boxes: tf.Tensor,
    cand_valid: tf.Tensor,
    nms_threshold: tf.Tensor,
    caps: tf.Tensor | None,
    max_detections: int,
) -> BatchedDetections:
    """Steps 5-6 of the module docstring on ``K`` candidates (:class:`_Candidates`).

    Args:
      nms_threshold: float32 ``[B]``.
      caps: optional int32 ``[B]`` per-image caps.
    """
    k = int(cand_scores.shape[-1])
    same_class = tf.equal(cand_classes[:, :, None], cand_classes[:, None, :])
    overlaps = box_ops.iou_xyxy(cand_boxes, cand_boxes) >= nms_threshold[:, None, None]
    suppresses = same_class & overlaps
    keep = greedy_nms_mask(suppresses, cand_valid)

    d = min(max_detections, k)
    kept_scores = tf.where(keep, cand_scores, 0.0)
    out_scores, order = tf.math.top_k(kept_scores, k=d, sorted=True)
    valid = out_scores > 0
    if caps is not None:
        valid &= tf.range(d)[None, :] < caps[:, None]
    out_boxes = tf.where(valid[..., None], tf.gather(cand_boxes, order, batch_dims=1), 0.0)
    out_classes = tf.where(valid, tf.gather(cand_classes, order, batch_dims=1), 0)
    out_scores = tf.where(valid, out_scores, 0.0)
    if d < max_detections:  # keep the advertised static width
        pad = [[0, 0], [0, max_detections - d]]
        out_boxes = tf.pad(out_boxes, [*pad, [0, 0]])
        out_scores = tf.pad(out_scores, pad)
        out_classes = tf.pad(out_classes, pad)
    return BatchedDetections(
        boxes=out_boxes,
        scores=out_scores,
        classes=tf.cast(out_classes, tf.int32),
        num_detections=tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    )
