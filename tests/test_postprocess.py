"""Batched in-graph post-processing: NMS rules, thresholds, clipping, degenerate boxes, padding."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from predictor.ssd import boxes as box_ops
from predictor.ssd.postprocess import greedy_nms_mask, postprocess


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
