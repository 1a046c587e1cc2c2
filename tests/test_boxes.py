"""Box coding round trips and IoU."""

from __future__ import annotations

import numpy as np

from predictor.ssd import boxes as box_ops
from predictor.ssd.anchors import generate_anchors
from predictor.ssd.config import ssd300_vgg16


def test_decode_zero_offsets_gives_anchor_corners():
    anchors = generate_anchors(ssd300_vgg16())
    decoded = box_ops.decode(np.zeros_like(anchors), anchors).numpy()
    np.testing.assert_allclose(decoded, box_ops.anchors_to_corners(anchors).numpy(), atol=1e-7)


def test_decode_hand_values():
    anchors = np.array([[0.5, 0.4, 0.2, 0.1]], np.float32)  # cy, cx, h, w
    loc = np.array([[1.0, -2.0, np.log(2.0) / 0.2, 0.0]], np.float32)  # t_x, t_y, t_w, t_h
    # cx = 0.4 + 1*0.1*0.1 = 0.41, cy = 0.5 - 2*0.2*0.1 = 0.46, w = 0.2, h = 0.2
    expected = [[0.46 - 0.1, 0.41 - 0.1, 0.46 + 0.1, 0.41 + 0.1]]
    np.testing.assert_allclose(box_ops.decode(loc, anchors).numpy(), expected, atol=1e-6)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    anchors = generate_anchors(ssd300_vgg16())
    ymin, xmin = rng.uniform(0, 0.8, (2, len(anchors)))
    h, w = rng.uniform(0.01, 0.2, (2, len(anchors)))
    boxes = np.stack([ymin, xmin, ymin + h, xmin + w], axis=1).astype(np.float32)
    enc = box_ops.encode(boxes, anchors)
    np.testing.assert_allclose(box_ops.decode(enc, anchors).numpy(), boxes, atol=2e-6)


def test_pixel_conversion_round_trip_and_clip():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [-0.1, 0.9, 0.2, 1.3]]], np.float32)
    px = box_ops.normalized_to_pixels(boxes, np.array([[200.0, 400.0]])).numpy()
    np.testing.assert_allclose(px[0, 0], [80, 20, 240, 100], atol=1e-4)  # xmin, ymin, xmax, ymax
    np.testing.assert_allclose(px[0, 1], [360, 0, 400, 40], atol=1e-4)  # clipped to the image
    back = box_ops.pixels_to_normalized(px[0, :1], np.array([200.0, 400.0])).numpy()
    np.testing.assert_allclose(back, boxes[0, :1], atol=1e-6)


def test_iou_hand_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [3, 3, 3, 8]], np.float32)
    np.testing.assert_allclose(box_ops.iou_xyxy(a, b).numpy(), [[50 / 150, 1.0, 0.0, 0.0]], atol=1e-7)
