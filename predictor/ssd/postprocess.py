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

Sizing: a trained model passes a few dozen candidates per image, not ``top_k``, from a few dozen of the
``A`` anchors. So, with exactly the detections of the steps as read:

* **Which anchors to score.** A class's softmax score is at most ``sigmoid(l_c - l_0)`` (its logit
  against the background's alone), so step 3's threshold is first tested on that bound for each
  anchor's best allowed class (a max over classes, no softmax), with a slack for float rounding
  (:func:`_may_pass`). When no image has more than :data:`CANDIDATE_ANCHORS` such anchors (or than
  a larger tier of :func:`anchor_tiers`: 1024 for 8,732 anchors), steps 1 and 3 run on that many
  anchors, those that may pass first; ``tf.nn.softmax`` computes each row on its own, so their
  scores and threshold decisions are those of the softmax over every anchor (bit for bit on the CPU:
  the tests compare the detections with ``candidate_slots=()``'s exactly), and their (anchor, class)
  pairs keep the anchor-major order. Otherwise every anchor is scored.
* **How many candidates.** Steps 4-6 run on ``K`` candidates, the smallest of :data:`CANDIDATE_SLOTS`
  that holds every candidate that passed the score threshold and class mask in every image of the
  batch; only those ``K`` boxes are decoded and tested for positive size (step 3's box test, after
  top-k instead of before: every candidate is in the list, so the valid ones and their order are the
  same). When an image has more than the largest slot, the scored anchors are decoded, tested and the
  ``top_k`` best kept, as the steps read: on the anchors that may pass (every candidate is among their
  pairs, the others score 0), or on every anchor when those were too many to score alone (then exactly
  ``candidate_slots=()``'s computation, after the bound).

Each choice is a ``tf.switch_case`` on the counts (first the tier or "score every anchor", from the
bound's count alone; then, on the scored anchors, one over the slots and "decode the scored
anchors"): shapes stay static (XLA) and only the chosen branch runs, so a batch that cannot use the
slots pays the bound and two counts more than ``candidate_slots=()``, no gather or second top-k.
``tf.math.top_k`` is stable (equal scores keep the lower index whatever ``K``), so the detections are
those of the ``top_k`` path, at ``(K / top_k)^2`` of its IoU matrix and NMS loop, ``K / A`` of its
decoding and ``CANDIDATE_ANCHORS / A`` of its softmax (``candidate_slots=()`` turns sizing off: the ONNX
export's path). ``bench/postprocess_variants.py`` times it against the code before each step
(bench/RESULTS.md, "Post-processing variants"). :func:`postprocess_with_path` also returns which branch
ran (:class:`PostprocessPath`, a constant in each branch), so tests and the benchmark see the path an
input takes; :func:`postprocess`, the serving graph, computes no such output.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import tensorflow as tf

from predictor.ssd import boxes as box_ops

#: Candidate counts (below ``top_k``) that post-processing sizes its top-k, decoding and IoU matrix to
#: when every image of the batch has at most that many candidates (the module docstring's "Sizing").
CANDIDATE_SLOTS = (32, 64, 96, 128)

#: How many anchors post-processing scores exactly when no image has more that may pass the threshold
#: (the module docstring's "Sizing"); more than the largest slot, so several classes of one anchor fit.
CANDIDATE_ANCHORS = 256

#: When more anchors than :data:`CANDIDATE_ANCHORS` may pass, the next tiers of anchors scored alone are
#: this factor apart (:func:`anchor_tiers`; the module docstring's "Sizing") ...
ANCHOR_TIER_FACTOR = 4

#: ... and a tier past the first holds at most ``1 / TIER_ANCHOR_SHARE`` of the anchors (256 and 1024 of
#: SSD300's 8,732): a tier of 4096 cost as much as scoring every anchor (bench/RESULTS.md, 2026-12-07 21:05).
TIER_ANCHOR_SHARE = 8

#: Slack on the score bound that picks the anchors to score (:func:`_may_pass`).
MAY_PASS_SLACK = 1e-5


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


class PostprocessPath(NamedTuple):
    """Which branch of :func:`postprocess` ran for a batch (module docstring, "Sizing"): scalars,
    returned by :func:`postprocess_with_path` (the serving graph does not compute them).

    Attributes:
      every_anchor: bool, every anchor scored (an image had more anchors that may pass than the largest
        tier of :func:`anchor_tiers`, or sizing is off); False: only a tier holding them scored.
      scored: int32, the anchors per image whose softmax was computed: a tier or ``A``.
      candidates: int32 ``K``, the candidates per image of the IoU matrix and NMS: a slot or ``top_k``.
      decoded: int32, boxes decoded per image: ``K`` (after top-k) or every scored anchor (before it).
    """

    every_anchor: tf.Tensor
    scored: tf.Tensor
    candidates: tf.Tensor
    decoded: tf.Tensor


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
    """Network outputs -> final detections in original-image pixels: the serving graph (no branch
    report computed; :func:`postprocess_with_path` adds it).

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
        :data:`CANDIDATE_SLOTS`. ``()``: always score and decode every anchor and compute the
        ``top_k x top_k`` IoU matrix (the cost before sizing, the ONNX export's path;
        ``bench/postprocess_variants.py`` measures both).
    """
    return _postprocess(
        loc,
        logits,
        anchors,
        image_hw,
        score_threshold,
        max_detections_per_image,
        prior_scaling=prior_scaling,
        nms_threshold=nms_threshold,
        class_mask=class_mask,
        top_k=top_k,
        max_detections=max_detections,
        candidate_slots=candidate_slots,
        with_path=False,
    )[0]


def postprocess_with_path(*args, **kwargs) -> tuple[BatchedDetections, PostprocessPath]:
    """:func:`postprocess` (the same arguments) and the branch it ran (:class:`PostprocessPath`): for
    tests and benchmarks, which see which path an input takes; the detections are those of
    :func:`postprocess`."""
    return _postprocess(*args, with_path=True, **kwargs)


def _postprocess(
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
    with_path: bool = False,
) -> tuple[BatchedDetections, PostprocessPath | None]:
    """:func:`postprocess`, and (``with_path``) the branch that ran; without it the graph computes no
    report (each branch returns its detections alone)."""
    loc = tf.cast(loc, tf.float32)
    logits = tf.cast(logits, tf.float32)
    batch = tf.shape(logits)[0]
    num_fg = logits.shape[-1] - 1
    score_threshold = tf.broadcast_to(tf.cast(score_threshold, tf.float32), [batch])
    nms_threshold = tf.broadcast_to(tf.cast(nms_threshold, tf.float32), [batch])
    allowed = None if class_mask is None else tf.cast(class_mask, tf.bool)[:, 1:]  # [B, C-1]

    num_anchors = logits.shape[1]
    k = min(top_k, int(num_anchors) * num_fg) if num_anchors is not None else top_k
    slots = CANDIDATE_SLOTS if candidate_slots is None else candidate_slots
    sizes = sorted({s for s in slots if s < k})
    caps = None if max_detections_per_image is None else tf.cast(max_detections_per_image, tf.int32)
    geometry = (loc, anchors, image_hw, prior_scaling)
    num_all = int(num_anchors) if num_anchors is not None else tf.shape(logits)[1]

    def select(cand: _Candidates, scored: int | None, decoded: int | tf.Tensor) -> tuple:
        """A branch's outputs: the detections, then (``with_path``) its :class:`PostprocessPath`
        (``scored`` None: every anchor)."""
        det = tuple(_nms_select(*cand, nms_threshold, caps, max_detections))
        if not with_path:
            return det
        size = int(cand.scores.shape[-1])
        every, scored = scored is None, num_all if scored is None else scored
        path = (tf.constant(every), tf.cast(scored, tf.int32), tf.constant(size, tf.int32))
        return (*det, *path, tf.cast(decoded, tf.int32))

    def result(outputs: tuple) -> tuple[BatchedDetections, PostprocessPath | None]:
        det = BatchedDetections(*outputs[:4])
        return det, PostprocessPath(*outputs[4:]) if with_path else None

    def every_anchor() -> tuple:
        """Steps 1-6 on every anchor's scores, sized to the candidates that passed (module docstring)."""
        flat = _passed_scores(logits, score_threshold, allowed)  # [B, A*(C-1)]

        def branch(size: int | None):
            def run() -> tuple:
                if size is None:  # more candidates than the largest size: decode every anchor
                    return select(_candidates_decoded_first(flat, *geometry, num_fg, k), None, num_all)
                return select(_candidates_decoded_after(flat, *geometry, num_fg, size), None, size)

            return run

        if not sizes:
            return branch(None)()
        # the most candidates any image of the batch has -> the smallest size that holds them all
        count = tf.reduce_max(tf.reduce_sum(tf.cast(flat > 0, tf.int32), axis=1))
        index = tf.reduce_sum(tf.cast(count > tf.constant(sizes, tf.int32), tf.int32))
        return tf.switch_case(index, [branch(s) for s in sizes] + [branch(None)])

    if not sizes or num_anchors is None:
        return result(every_anchor())

    # Few anchors can pass: score only those (module docstring, "Sizing"), in the smallest tier that
    # holds them in every image, unless an image has more than the largest tier.
    tiers = anchor_tiers(int(num_anchors))
    may_pass = _may_pass(logits, score_threshold, allowed)  # [B, A]
    anchor_count = tf.reduce_max(tf.reduce_sum(tf.cast(may_pass, tf.int32), axis=1))

    def few_anchors(n: int) -> tuple:
        """Steps 1-6 on the ``n`` anchors that may pass (every candidate is among their pairs)."""
        # n anchors hold at most n * num_fg candidates: larger slots shrink to that (custom slots)
        few_sizes = sorted({min(s, n * num_fg) for s in sizes})
        anchor_idx = _first_anchors(may_pass, n)  # [B, n]
        pairs = _passed_scores(tf.gather(logits, anchor_idx, batch_dims=1), score_threshold, allowed)

        def few(size: int):
            def run() -> tuple:
                scores, idx = tf.math.top_k(pairs, k=size, sorted=True)  # stable: ties keep the lower index
                anchor = tf.gather(anchor_idx, idx // num_fg, batch_dims=1)
                return select(_decoded(scores, anchor, idx % num_fg + 1, *geometry), n, size)

            return run

        def decode_those() -> tuple:
            """More candidates than the largest slot: step 3's box test on those anchors, then the top
            ``k`` (the ``top_k`` path on the anchors that hold every candidate; the rest score 0)."""
            few_loc, few_anchor_boxes = (
                tf.gather(loc, anchor_idx, batch_dims=1),
                tf.gather(anchors, anchor_idx),
            )
            few_geometry = (few_loc, few_anchor_boxes, image_hw, prior_scaling)
            candidates = _candidates_decoded_first(pairs, *few_geometry, num_fg, min(k, n * num_fg))
            return select(candidates, n, n)

        count = tf.reduce_max(tf.reduce_sum(tf.cast(pairs > 0, tf.int32), axis=1))
        index = tf.reduce_sum(tf.cast(count > tf.constant(few_sizes, tf.int32), tf.int32))
        return tf.switch_case(index, [few(s) for s in few_sizes] + [decode_those])

    tier = tf.reduce_sum(tf.cast(anchor_count > tf.constant(tiers, tf.int32), tf.int32))
    branches = [functools.partial(few_anchors, n) for n in tiers] + [every_anchor]
    return result(tf.switch_case(tier, branches))


def anchor_tiers(num_anchors: int) -> tuple[int, ...]:
    """The anchor counts post-processing scores alone when no image has more anchors that may pass:
    ``CANDIDATE_ANCHORS`` (at most ``num_anchors``), then ``ANCHOR_TIER_FACTOR`` times the last while
    that is at most ``num_anchors / TIER_ANCHOR_SHARE`` ((256, 1024) for SSD300's 8,732; (256,) for
    600 anchors)."""
    if num_anchors < 1:
        raise ValueError(f"a network has at least one anchor, not {num_anchors}")
    tiers = [min(CANDIDATE_ANCHORS, num_anchors)]
    while tiers[-1] * ANCHOR_TIER_FACTOR * TIER_ANCHOR_SHARE <= num_anchors:
        tiers.append(tiers[-1] * ANCHOR_TIER_FACTOR)
    return tuple(tiers)


def _passed_scores(logits: tf.Tensor, score_threshold: tf.Tensor, allowed: tf.Tensor | None) -> tf.Tensor:
    """Step 3's score test: float32 ``[B, N*(C-1)]`` softmax scores of the (anchor, class >= 1) pairs
    (anchor-major, class-minor) that are ``> score_threshold`` ``[B]`` and allowed (bool ``[B, C-1]``
    or None), 0 elsewhere, from logits ``[B, N, C]``. ``tf.nn.softmax`` computes each row on its own:
    a row's scores do not depend on the other rows in ``logits`` (the same bits on the CPU)."""
    scores = tf.nn.softmax(logits, axis=-1)[:, :, 1:]  # [B, A, C-1]
    passed = scores > score_threshold[:, None, None]
    if allowed is not None:
        passed &= allowed[:, None, :]  # [B, 1, C-1]
    return tf.reshape(tf.where(passed, scores, 0.0), [tf.shape(logits)[0], -1])


def _may_pass(logits: tf.Tensor, score_threshold: tf.Tensor, allowed: tf.Tensor | None) -> tf.Tensor:
    """The anchors that may have a pair passing step 3's score test, without a softmax: bool ``[B, A]``.

    A class's softmax score is at most the sigmoid of its logit minus the background's
    (``e^l_c / sum_j e^l_j <= e^l_c / (e^l_0 + e^l_c)``), so an anchor whose best allowed class has
    ``sigmoid(l_c - l_0) <= t - MAY_PASS_SLACK`` has no pair above ``t``. The slack (absolute, on a
    score) covers float32 rounding of the softmax, the subtraction and the sigmoid (each well under
    1e-6 of a score), so no anchor with a passing pair is left out.

    Args:
      logits: float32 ``[B, A, C]``; score_threshold: float32 ``[B]``; allowed: bool ``[B, C-1]`` or None.
    """
    num_classes = logits.shape[-1]
    if allowed is None:
        bias = tf.constant([-math.inf] + [0.0] * (num_classes - 1))[None, None, :]  # [1, 1, C]
    else:
        background = tf.fill([tf.shape(allowed)[0], 1], -math.inf)
        bias = tf.concat([background, tf.where(allowed, 0.0, -math.inf)], axis=1)[:, None, :]  # [B, 1, C]
    best = tf.reduce_max(logits + bias, axis=-1)  # [B, A] the best allowed class's logit
    return tf.math.sigmoid(best - logits[:, :, 0]) > (score_threshold - MAY_PASS_SLACK)[:, None]


def _first_anchors(may_pass: tf.Tensor, n: int) -> tf.Tensor:
    """int32 ``[B, n]`` anchor indices, ascending, the ones that may pass (bool ``[B, A]``) first (so every
    one of them when an image has at most ``n``; the rest are other anchors)."""
    # keys without ties among the anchors that may pass (A - index, exact in float32 below 2^24 anchors):
    # the top n are those anchors in ascending order, then others (key 0; their order does not matter)
    descending = tf.cast(tf.shape(may_pass)[1] - tf.range(tf.shape(may_pass)[1]), tf.float32)  # [A]
    _, idx = tf.math.top_k(tf.where(may_pass, descending[None, :], 0.0), k=n, sorted=True)
    return idx


def _anchors_that_may_pass(
    logits: tf.Tensor, score_threshold: tf.Tensor, allowed: tf.Tensor | None, n: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_first_anchors` of :func:`_may_pass` (``n <= A`` per image, arguments as there), and int32
    scalar: the most anchors that may pass in one image of the batch."""
    may_pass = _may_pass(logits, score_threshold, allowed)
    return _first_anchors(may_pass, n), tf.reduce_max(tf.reduce_sum(tf.cast(may_pass, tf.int32), axis=1))


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
    return _decoded(scores, idx // num_fg, idx % num_fg + 1, loc, anchors, image_hw, prior_scaling)


def _decoded(scores, anchor, classes, loc, anchors, image_hw, prior_scaling) -> _Candidates:
    """``K`` candidates from their scores, anchor indices and classes (``[B, K]`` each): step 3's box
    test on their decoded boxes alone."""
    gathered = (tf.gather(loc, anchor, batch_dims=1), tf.gather(anchors, anchor))  # [B, K, 4] each
    boxes, positive = _pixel_boxes(*gathered, image_hw, prior_scaling)
    return _Candidates(scores, classes, boxes, (scores > 0) & positive)


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
