"""Batched in-graph post-processing: NMS rules, thresholds, clipping, degenerate boxes, padding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from predictor.ssd import boxes as box_ops
from predictor.ssd.postprocess import _anchors_that_may_pass, greedy_nms, greedy_nms_mask, postprocess


def _nms(boxes, classes, thr):
    boxes = tf.constant([boxes], tf.float32)
    classes = tf.constant([classes])
    sup = (classes[:, :, None] == classes[:, None, :]) & (box_ops.iou_xyxy(boxes, boxes) >= thr)
    return greedy_nms_mask(sup, tf.ones_like(classes, tf.bool)).numpy()[0].tolist()


def test_nms_same_class_suppressed_other_class_kept():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]]
    assert _nms(boxes, [1, 1, 2, 1], 0.45) == [True, False, True, True]


def test_nms_threshold_edge_is_inclusive():
    # IoU([0,0,10,10], [5,0,15,10]) = 50/150 exactly; balancap drops a box when IoU >= threshold.
    boxes = [[0, 0, 10, 10], [5, 0, 15, 10]]
    assert _nms(boxes, [1, 1], 50 / 150) == [True, False]
    assert _nms(boxes, [1, 1], np.nextafter(np.float32(50 / 150), np.float32(1))) == [True, True]


def test_nms_is_greedy_not_transitive():
    # b suppressed by a; c overlaps b but not a -> c survives because b was removed.
    boxes = [[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]]
    assert _nms(boxes, [1, 1, 1], 0.4) == [True, False, True]


def _logits(scores: np.ndarray) -> np.ndarray:
    """Logits whose softmax equals ``scores`` (rows sum to 1)."""
    return np.log(np.maximum(scores, 1e-12)).astype(np.float32)


def _setup():
    # Anchors (cy, cx, h, w); zero offsets decode to the anchors themselves.
    anchors = np.array(
        [
            [0.5, 0.5, 0.4, 0.4],  # A: class 1, 0.9
            [0.51, 0.5, 0.4, 0.4],  # B: overlaps A, class 1, 0.8 -> suppressed
            [0.51, 0.5, 0.4, 0.4],  # C: same box as B but class 2, 0.7 -> kept
            [0.2, 0.2, 0.1, 0.1],  # D: class 1, 0.5 -> at threshold, dropped (strict >)
            [1.5, 1.5, 0.2, 0.2],  # E: wholly outside the image -> zero area after clip, dropped
            [0.1, 0.9, 0.1, 0.1],  # F: class 3, 0.6
        ],
        np.float32,
    )
    scores = np.zeros((6, 4), np.float32)
    for i, (c, s) in enumerate([(1, 0.9), (1, 0.8), (2, 0.7), (1, 0.5), (2, 0.95), (3, 0.6)]):
        scores[i, c] = s
        scores[i, 0] = 1 - s
    return anchors, _logits(scores)[None], np.zeros((1, 6, 4), np.float32)


def test_postprocess_hand_case():
    anchors, logits, loc = _setup()
    det = postprocess(loc, logits, anchors, [[100.0, 200.0]], 0.5, max_detections=5)
    n = int(det.num_detections[0])
    assert n == 3
    np.testing.assert_allclose(det.scores[0, :n], [0.9, 0.7, 0.6], atol=1e-5)
    assert det.classes[0, :n].numpy().tolist() == [1, 2, 3]
    np.testing.assert_allclose(det.boxes[0, 0], [60, 30, 140, 70], atol=1e-3)  # xmin, ymin, xmax, ymax px
    # F is clipped: x from 0.85..0.95 -> 170..190, y 0.05..0.15 -> 5..15
    np.testing.assert_allclose(det.boxes[0, 2], [170, 5, 190, 15], atol=1e-3)
    # padding rows are zero
    assert det.boxes.shape == (1, 5, 4)
    assert not det.boxes[0, n:].numpy().any() and not det.classes[0, n:].numpy().any()


def test_postprocess_per_image_threshold_and_cap_in_one_batch():
    anchors, logits, loc = _setup()
    logits2 = np.concatenate([logits, logits, logits])
    loc2 = np.concatenate([loc, loc, loc])
    hw = [[100.0, 200.0]] * 3
    det = postprocess(loc2, logits2, anchors, hw, [0.5, 0.65, 0.5], [5, 5, 1], max_detections=5)
    assert det.num_detections.numpy().tolist() == [3, 2, 1]
    np.testing.assert_allclose(det.scores[1, :2], [0.9, 0.7], atol=1e-5)
    np.testing.assert_allclose(det.scores[2, :1], [0.9], atol=1e-5)


def test_low_threshold_keeps_boxes_positive_and_sorted():
    rng = np.random.default_rng(1)
    anchors = np.concatenate([rng.uniform(0, 1, (300, 2)), rng.uniform(0.01, 0.5, (300, 2))], axis=1).astype(
        np.float32
    )
    logits = rng.normal(0, 3, (2, 300, 5)).astype(np.float32)
    loc = rng.normal(0, 3, (2, 300, 4)).astype(np.float32)
    det = postprocess(
        loc, logits, anchors, [[480.0, 640.0], [300.0, 300.0]], 0.05, top_k=100, max_detections=50
    )
    for b, (h, w) in enumerate([(480, 640), (300, 300)]):
        n = int(det.num_detections[b])
        assert n > 0
        bx = det.boxes[b, :n].numpy()
        assert (bx[:, 2] > bx[:, 0]).all() and (bx[:, 3] > bx[:, 1]).all()
        assert (bx >= 0).all() and (bx[:, [0, 2]] <= w).all() and (bx[:, [1, 3]] <= h).all()
        s = det.scores[b, :n].numpy()
        assert (np.diff(s) <= 0).all() and (s > 0.05).all()
        rows = {(int(c), *np.round(r, 3)) for c, r in zip(det.classes[b, :n].numpy(), bx, strict=True)}
        assert len(rows) == n  # no duplicated (class, box)


def test_nms_ignores_invalid_candidates():
    boxes = tf.constant([[[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]], tf.float32)
    sup = box_ops.iou_xyxy(boxes, boxes) >= 0.5
    valid = tf.constant([[False, True, True]])
    # the invalid first box neither survives nor suppresses the second
    assert greedy_nms_mask(sup, valid).numpy()[0].tolist() == [False, True, False]


def test_nms_long_chain_and_batch_rows_are_independent():
    chain = [[4 * i, 0, 4 * i + 10, 10] for i in range(6)]  # each box overlaps the next (IoU 6/14)
    boxes = tf.constant([chain, chain], tf.float32)
    classes = tf.constant([[1] * 6, [1, 2, 1, 2, 1, 2]])
    sup = (classes[:, :, None] == classes[:, None, :]) & (box_ops.iou_xyxy(boxes, boxes) >= 0.4)
    keep = greedy_nms_mask(sup, tf.ones([2, 6], tf.bool)).numpy().tolist()
    assert keep == [[True, False, True, False, True, False], [True] * 6]


def _longest_chain(sup: np.ndarray, valid: np.ndarray) -> int:
    """Edges of the longest chain ``i0 -> i1 -> ...`` (``i < j``, both valid, ``i`` suppresses ``j``)."""
    depth = np.zeros(len(valid), int)
    for j in range(len(valid)):
        preds = [depth[i] + 1 for i in range(j) if valid[i] and valid[j] and sup[i, j]]
        depth[j] = max(preds, default=0)
    return int(depth.max(initial=0))


def _greedy(sup: np.ndarray, valid: np.ndarray) -> list[bool]:
    """Textbook greedy NMS over score-sorted candidates (the loop the fixed point replaces)."""
    keep: list[bool] = []
    for j in range(len(valid)):
        keep.append(bool(valid[j]) and not any(keep[i] and sup[i, j] for i in range(j)))
    return keep


def test_nms_iterations_reach_the_fixed_point_bound_exactly():
    """The loop runs (longest suppression chain + 1) times: a chain of 6 takes 6 runs, boxes that suppress
    nothing take 1 (the run that finds nothing changed). A loop that runs to its cap (K + 1 = 7), or
    stops one short of the chain, fails here without any clock."""
    chain = [[4 * i, 0, 4 * i + 10, 10] for i in range(6)]  # each box overlaps the next (IoU 6/14)
    boxes = tf.constant([chain], tf.float32)
    sup = box_ops.iou_xyxy(boxes, boxes) >= 0.4
    result = greedy_nms(sup, tf.ones([1, 6], tf.bool))
    assert result.keep.numpy().tolist() == [[True, False, True, False, True, False]]
    assert int(result.iterations) == 6 and result.iterations.dtype == tf.int32
    apart = tf.constant([[[20 * i, 0, 20 * i + 10, 10] for i in range(6)]], tf.float32)
    alone = greedy_nms(box_ops.iou_xyxy(apart, apart) >= 0.4, tf.ones([1, 6], tf.bool))
    assert alone.keep.numpy().tolist() == [[True] * 6] and int(alone.iterations) == 1
    # a batch loops until its slowest image is done: the chain's 6, whatever the other row needs
    both = greedy_nms(tf.concat([sup, sup & False], 0), tf.ones([2, 6], tf.bool))
    assert int(both.iterations) == 6 and both.keep.numpy()[1].all()
    # an invalid link breaks the chain: 0 -> 1 -> 2 and 4 -> 5 are left, the longest has 2 edges
    cut = greedy_nms(sup, tf.constant([[True, True, True, False, True, True]]))
    assert int(cut.iterations) == 3


@pytest.mark.parametrize("seed", range(6))
def test_nms_iterations_within_the_bound_on_random_overlaps(seed):
    """Random sparse suppression graphs of 40 candidates: the textbook greedy answer, in at most
    (longest chain + 1) iterations and at least 1, far fewer than the cap of 41."""
    rng = np.random.default_rng(seed)
    k = 40
    sup = rng.random((k, k)) < 0.08
    valid = rng.random(k) < 0.9
    result = greedy_nms(tf.constant(sup[None]), tf.constant(valid[None]))
    assert result.keep.numpy()[0].tolist() == _greedy(np.triu(sup, 1), valid)
    bound = _longest_chain(np.triu(sup, 1), valid) + 1
    assert 1 <= int(result.iterations) <= bound < k


def _run(max_detections=5, **kwargs):
    anchors, logits, loc = _setup()
    return postprocess(loc, logits, anchors, [[100.0, 200.0]], 0.5, max_detections=max_detections, **kwargs)


def test_class_mask_filters_before_top_k():
    # top_k = 1: with the mask applied after top-k, the best box (A, class 1) would take the only slot
    det = _run(class_mask=[[True, False, True, False]], top_k=1)
    assert int(det.num_detections[0]) == 1
    assert det.classes[0, 0] == 2
    np.testing.assert_allclose(det.scores[0, 0], 0.7, atol=1e-5)
    # column 0 (background) is ignored; per-image masks in one batch
    anchors, logits, loc = _setup()
    masks = np.array([[False, True, False, True], [True, False, False, True]])
    det = postprocess(
        np.concatenate([loc, loc]), np.concatenate([logits, logits]), anchors, [[100.0, 200.0]] * 2, 0.5,
        class_mask=masks, max_detections=5,
    )  # fmt: skip
    assert det.classes.numpy().tolist() == [[1, 3, 0, 0, 0], [3, 0, 0, 0, 0]]


def test_boxes_clipped_to_zero_width_or_zero_height_are_dropped():
    anchors = np.array(
        [
            [0.5, 1.5, 0.2, 0.2],  # x beyond the right edge, y inside: zero width after clipping
            [-0.5, 0.5, 0.2, 0.2],  # y above the top edge, x inside: zero height after clipping
            [0.5, 0.5, 0.2, 0.2],  # inside
        ],
        np.float32,
    )
    scores = np.full((3, 2), 0.1, np.float32)
    scores[:, 1] = 0.9
    det = postprocess(np.zeros((1, 3, 4), np.float32), _logits(scores)[None], anchors, [[100.0, 100.0]], 0.5)
    assert int(det.num_detections[0]) == 1
    np.testing.assert_allclose(det.boxes[0, 0], [40, 40, 60, 60], atol=1e-4)


def test_output_width_is_padded_to_max_detections():
    det = _run(max_detections=30)  # 6 anchors x 3 classes = 18 candidates < 30
    assert det.boxes.shape == (1, 30, 4) and det.scores.shape == (1, 30) and det.classes.shape == (1, 30)
    assert int(det.num_detections[0]) == 3 and det.classes.dtype == tf.int32
    assert not det.scores[0, 3:].numpy().any() and not det.boxes[0, 3:].numpy().any()
    anchors, logits, loc = _setup()
    default = postprocess(loc, logits, anchors, [[100.0, 200.0]], 0.5)
    assert default.boxes.shape == (1, 200, 4) and int(default.num_detections[0]) == 3


def test_nms_threshold_per_image_and_inclusive():
    anchors, logits, loc = _setup()
    px = box_ops.normalized_to_pixels(box_ops.anchors_to_corners(anchors)[None], [[100.0, 200.0]])
    iou_ab = float(box_ops.iou_xyxy(px[0, :1], px[0, 1:2])[0, 0])  # A and B, both class 1
    assert 0.45 < iou_ab < 1
    above = float(np.nextafter(np.float32(iou_ab), np.float32(1)))
    det = postprocess(
        np.concatenate([loc] * 3), np.concatenate([logits] * 3), anchors, [[100.0, 200.0]] * 3, 0.5,
        nms_threshold=[0.45, iou_ab, above], max_detections=5,
    )  # fmt: skip
    # IoU == threshold suppresses (balancap's >=); just above it does not
    assert det.num_detections.numpy().tolist() == [3, 3, 4]
    np.testing.assert_allclose(det.scores[2, :4], [0.9, 0.8, 0.7, 0.6], atol=1e-5)
    assert det.classes[2, :4].numpy().tolist() == [1, 1, 2, 3]


def test_default_nms_threshold_is_045():
    anchors = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5 + 0.2 * 0.4 / 1.4, 0.2, 0.2]], np.float32)
    scores = np.array([[0.1, 0.9], [0.2, 0.8]], np.float32)
    # two squares of side 0.2, 0.057 apart: IoU 0.556 (>= 0.45: the second is suppressed)
    det = postprocess(np.zeros((1, 2, 4), np.float32), _logits(scores)[None], anchors, [[100.0, 100.0]], 0.5)
    iou = box_ops.iou_xyxy(box_ops.anchors_to_corners(anchors), box_ops.anchors_to_corners(anchors))[0, 1]
    assert 0.45 < float(iou) < 0.6
    assert int(det.num_detections[0]) == 1


def test_scores_are_the_softmax_over_classes():
    anchors = np.array([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]], np.float32)
    logits = np.array([[[0.0, 2.0, 1.0], [1.0, 0.0, 3.0]]], np.float32)
    det = postprocess(np.zeros((1, 2, 4), np.float32), logits, anchors, [[10.0, 10.0]], 0.1, max_detections=4)
    e = np.exp
    expected = [e(3) / (e(1) + 1 + e(3)), e(2) / (1 + e(2) + e(1)), e(1) / (1 + e(2) + e(1))]
    np.testing.assert_allclose(det.scores[0, :3], expected, rtol=1e-5)
    assert det.classes[0, :3].numpy().tolist() == [2, 1, 2]
    np.testing.assert_allclose(det.boxes[0, 0], [1, 1, 3, 3], atol=1e-5)


def test_prior_scaling_is_passed_to_the_decoder():
    anchors, logits, loc = _setup()
    loc = np.tile(np.array([0.5, -0.25, 0.5, -0.5], np.float32), (1, 6, 1))
    scaling = (0.2, 0.3, 0.4, 0.5)
    det = postprocess(loc, logits, anchors, [[100.0, 200.0]], 0.5, prior_scaling=scaling, max_detections=5)
    expected = box_ops.normalized_to_pixels(box_ops.decode(loc, anchors, scaling), [[100.0, 200.0]])
    np.testing.assert_allclose(det.boxes[0, 0], expected[0, 0], atol=1e-3)  # box A
    assert not np.allclose(det.boxes[0, 0], [60, 30, 140, 70], atol=1)  # not the default scaling's box


def test_unknown_anchor_count_in_a_graph_uses_top_k():
    anchors, logits, loc = _setup()
    spec = tf.TensorSpec([1, None, 4], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def run(loc, logits):
        return postprocess(loc, logits, anchors, [[100.0, 200.0]], 0.5, top_k=10, max_detections=5)

    det = run(loc, logits)
    assert int(det.num_detections[0]) == 3
    np.testing.assert_allclose(det.scores[0, :3], [0.9, 0.7, 0.6], atol=1e-5)


def test_default_top_k_is_400_candidates():
    # 500 small, separate boxes of one class, all well above the threshold: NMS keeps them all, so the
    # number of detections is the number of candidates top-k lets through
    grid = (np.stack(np.meshgrid(np.arange(25), np.arange(20), indexing="ij"), -1).reshape(-1, 2) + 0.5) / 25
    anchors = np.concatenate([grid, np.full((500, 2), 0.01)], axis=1).astype(np.float32)
    scores = np.tile(np.array([[0.1, 0.9]], np.float32), (500, 1))
    det = postprocess(
        np.zeros((1, 500, 4), np.float32),
        _logits(scores)[None],
        anchors,
        [[500.0, 500.0]],
        0.5,
        max_detections=450,
    )
    assert int(det.num_detections[0]) == 400


def test_anchors_that_may_pass_by_hand():
    """The bound that picks the anchors to score: sigmoid(best allowed class's logit - background's)
    above the threshold; masked classes do not count, and an anchor may pass the bound yet not the
    softmax (anchor 2: sigmoid(1) = 0.73, softmax e / (1 + 2e) = 0.42)."""
    logits = tf.constant(
        [[[0.0, 3.0, -5.0], [0.0, -5.0, 3.0], [0.0, 1.0, 1.0], [3.0, 0.0, 0.0]]], tf.float32
    )  # (background, class 1, class 2) per anchor
    idx, count = _anchors_that_may_pass(logits, tf.constant([0.5]), None, 3)
    assert idx.numpy().tolist() == [[0, 1, 2]] and int(count) == 3  # anchor 3: sigmoid(-3) = 0.05
    idx, count = _anchors_that_may_pass(logits, tf.constant([0.5]), tf.constant([[True, False]]), 4)
    assert idx.numpy().tolist()[0][:2] == [0, 2] and int(count) == 2  # class 2 masked: anchor 1 cannot pass
    idx, count = _anchors_that_may_pass(logits, tf.constant([0.96]), None, 4)  # sigmoid(3) = 0.9526
    assert int(count) == 0
    idx, count = _anchors_that_may_pass(tf.concat([logits, logits], 0), tf.constant([0.5, 1.0]), None, 4)
    assert int(count) == 3  # the most in one image; the second image's threshold 1 passes nothing


def test_anchors_that_may_pass_keep_every_anchor_one_float_above_the_threshold():
    """Thresholds one float32 below a softmax score, where the bound is tight (the other classes' logits
    40 below: the softmax is the two-class one, the sigmoid): that pair passes by one unit in the last
    place, and its anchor is among the anchors to score whichever way the sigmoid rounds."""
    rng = np.random.default_rng(5)
    batch, anchors = 64, 300
    logits = rng.normal(0, 3, (batch, anchors, 4)).astype(np.float32)
    logits[:, :, 2:] -= 40
    scores = tf.nn.softmax(logits).numpy()
    pick = rng.integers(0, anchors, batch)
    thresholds = np.nextafter(scores[np.arange(batch), pick, 1], np.float32(0))
    passing = (scores[:, :, 1:] > thresholds[:, None, None]).any(-1)  # [B, A]
    assert passing[np.arange(batch), pick].all()
    _, count = _anchors_that_may_pass(tf.constant(logits), tf.constant(thresholds), None, anchors)
    idx, _ = _anchors_that_may_pass(tf.constant(logits), tf.constant(thresholds), None, int(count))
    for b in range(batch):
        want = np.flatnonzero(passing[b]).tolist()
        assert [a for a in idx.numpy()[b].tolist() if passing[b, a]] == want, b  # all of them, ascending


def test_anchor_tiers_grow_by_the_factor_up_to_an_eighth_of_the_anchors():
    """256, then 4x while at most ``A / 8``: SSD300's 8,732 anchors get tiers 256 / 1024; a model with
    fewer than 8,192 anchors only the first; one with fewer than 256 scores all of its anchors in one."""
    from predictor.ssd.postprocess import anchor_tiers

    assert anchor_tiers(8732) == (256, 1024)
    assert anchor_tiers(8192) == (256, 1024)
    assert anchor_tiers(8191) == (256,)
    assert anchor_tiers(32768) == (256, 1024, 4096)
    assert anchor_tiers(240) == (240,)
