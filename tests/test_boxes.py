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


# Prior scaling with four different values, so that a swapped s_x/s_y/s_w/s_h shows.
SCALING = (0.1, 0.2, 0.3, 0.4)


def _decode_by_hand(loc, anchors, scaling):
    """The module docstring's formulas, element by element, in float64."""
    out = np.empty(loc.shape, np.float64)
    for idx in np.ndindex(loc.shape[:-1]):
        tx, ty, tw, th = (float(v) for v in loc[idx])
        ya, xa, ha, wa = (float(v) for v in anchors[idx[-1]])
        cx, cy = xa + tx * wa * scaling[0], ya + ty * ha * scaling[1]
        w, h = wa * np.exp(min(tw * scaling[2], 4.135)), ha * np.exp(min(th * scaling[3], 4.135))
        out[idx] = [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]
    return out


def test_decode_batched_float64_with_a_custom_prior_scaling():
    anchors = np.array([[0.5, 0.4, 0.2, 0.1], [0.3, 0.7, 0.05, 0.4], [0.9, 0.1, 0.6, 0.3]])  # float64
    loc = np.array(
        [
            [[1.0, -2.0, 0.5, -0.5], [0.0, 0.3, -1.0, 2.0], [-1.5, 0.25, 0.0, 0.75]],
            [[0.2, 0.4, 1.5, 0.1], [-0.7, -0.1, 0.3, -2.0], [2.0, 1.0, -0.25, 0.0]],
        ]
    )
    decoded = box_ops.decode(loc, anchors, SCALING)
    assert decoded.dtype == "float32" and decoded.shape == (2, 3, 4)
    np.testing.assert_allclose(decoded.numpy(), _decode_by_hand(loc, anchors, SCALING), rtol=1e-6, atol=1e-7)
    # first box by hand: cx = 0.4 + 1*0.1*0.1 = 0.41, cy = 0.5 - 2*0.2*0.2 = 0.42,
    # w = 0.1 * exp(0.5*0.3), h = 0.2 * exp(-0.5*0.4)
    w, h = 0.1 * np.exp(0.15), 0.2 * np.exp(-0.2)
    np.testing.assert_allclose(
        decoded[0, 0], [0.42 - h / 2, 0.41 - w / 2, 0.42 + h / 2, 0.41 + w / 2], atol=1e-7
    )


def test_decode_caps_the_scale_of_garbage_offsets():
    anchors = np.array([[0.5, 0.5, 0.1, 0.2]], np.float32)
    loc = np.array([[0.0, 0.0, 1e4, 25.0]], np.float32)  # t_w*s_w = 2000 (capped), t_h*s_h = 5 (capped)
    decoded = box_ops.decode(loc, anchors).numpy()[0]
    cap = np.exp(4.135)
    np.testing.assert_allclose(
        decoded, [0.5 - 0.05 * cap, 0.5 - 0.1 * cap, 0.5 + 0.05 * cap, 0.5 + 0.1 * cap], rtol=1e-5
    )
    # just under the cap: not capped
    under = box_ops.decode(np.array([[0.0, 0.0, 20.0, 20.0]], np.float32), anchors).numpy()[0]
    np.testing.assert_allclose(under[3] - under[1], 0.2 * np.exp(4.0), rtol=1e-5)


def test_encode_hand_values_batched_float64():
    anchors = np.array([[0.5, 0.4, 0.2, 0.1], [0.3, 0.7, 0.05, 0.4]])
    boxes = np.array(
        [[[0.36, 0.31, 0.56, 0.51], [0.2, 0.6, 0.3, 0.9]], [[0.4, 0.35, 0.6, 0.45], [0.1, 0.2, 0.5, 0.6]]]
    )
    enc = box_ops.encode(boxes, anchors, SCALING)
    assert enc.dtype == "float32" and enc.shape == (2, 2, 4)
    # box 0: cy = 0.46, cx = 0.41, h = 0.2, w = 0.2
    np.testing.assert_allclose(
        enc[0, 0],
        [(0.41 - 0.4) / 0.1 / 0.1, (0.46 - 0.5) / 0.2 / 0.2, np.log(0.2 / 0.1) / 0.3, 0.0],
        atol=1e-5,
    )
    # box 3: cy = 0.3, cx = 0.4, h = 0.4, w = 0.4 against anchor (0.3, 0.7, 0.05, 0.4)
    np.testing.assert_allclose(
        enc[1, 1], [(0.4 - 0.7) / 0.4 / 0.1, 0.0, 0.0, np.log(0.4 / 0.05) / 0.4], atol=1e-5
    )
    np.testing.assert_allclose(box_ops.decode(enc, anchors, SCALING).numpy(), boxes, atol=1e-6)


def test_encode_floors_degenerate_sides():
    anchors = np.array([[0.5, 0.5, 0.1, 0.2]], np.float32)
    enc = box_ops.encode(np.array([[0.5, 0.5, 0.5, 0.6]], np.float32), anchors).numpy()[0]  # zero height
    np.testing.assert_allclose(enc[3], np.log(1e-8 / 0.1) / 0.2, rtol=1e-4)
    np.testing.assert_allclose(enc[2], np.log(0.1 / 0.2) / 0.2, rtol=1e-5)
    enc = box_ops.encode(np.array([[0.4, 0.5, 0.6, 0.5]], np.float32), anchors).numpy()[0]  # zero width
    np.testing.assert_allclose(enc[2], np.log(1e-8 / 0.2) / 0.2, rtol=1e-4)


def test_anchors_to_corners_hand_values():
    corners = box_ops.anchors_to_corners(np.array([[0.5, 0.4, 0.2, 0.1], [1.0, 0.0, 0.4, 0.6]]))
    assert corners.dtype == "float32"
    np.testing.assert_allclose(corners, [[0.4, 0.35, 0.6, 0.45], [0.8, -0.3, 1.2, 0.3]], atol=1e-7)


def test_normalized_to_pixels_per_image_sizes_and_both_clips():
    boxes = np.array(
        [
            [[0.001, 0.002, 0.5, 0.75], [-0.5, 1.2, 1.5, 2.0], [0.0001, 0.0001, 0.002, 0.002]],
            [[0.25, 0.1, 0.5, 0.3], [0.9, 0.95, 1.1, 1.05], [0.0, 0.0, 0.0, 0.0]],
        ],
        np.float32,
    )
    px = box_ops.normalized_to_pixels(boxes, np.array([[200, 400], [50, 10]], np.int32)).numpy()
    assert px.dtype == np.float32
    # image 0 is 200 high, 400 wide: sub-pixel corners stay (no clip at 1), the second box is clipped
    np.testing.assert_allclose(
        px[0], [[0.8, 0.2, 300, 100], [400, 0, 400, 200], [0.04, 0.02, 0.8, 0.4]], atol=1e-4
    )
    # image 1 is 50 high, 10 wide
    np.testing.assert_allclose(px[1], [[1, 12.5, 3, 25], [9.5, 45, 10, 50], [0, 0, 0, 0]], atol=1e-4)


def test_pixels_to_normalized_batched():
    px = np.array([[[80, 20, 240, 100]], [[1, 2, 3, 4]]], np.float64)
    out = box_ops.pixels_to_normalized(px, np.array([[200, 400], [10, 5]], np.int64))
    assert out.dtype == "float32"
    np.testing.assert_allclose(out, [[[0.1, 0.2, 0.5, 0.6]], [[0.2, 0.2, 0.4, 0.6]]], atol=1e-6)


def test_iou_asymmetric_boxes_batched_and_degenerate():
    a = np.array([[[0, 0, 4, 2], [1, 1, 1, 5]], [[0, 0, 2, 6], [5, 5, 3, 3]]], np.float64)
    b = np.array([[[2, 0, 6, 3], [0, 0, 4, 2], [2, 2, 2, 2]], [[1, 1, 3, 4], [0, 0, 2, 6], [6, 6, 7, 9]]])
    iou = box_ops.iou_xyxy(a, b)
    assert iou.dtype == "float32" and iou.shape == (2, 2, 3)
    # [0,0,4,2] vs [2,0,6,3]: inter 2*2 = 4, union 8 + 12 - 4 = 16
    # [0,0,2,6] vs [1,1,3,4]: inter 1*3 = 3, union 12 + 6 - 3 = 15
    expected = [[[4 / 16, 1.0, 0.0], [0.0, 0.0, 0.0]], [[3 / 15, 1.0, 0.0], [0.0, 0.0, 0.0]]]
    np.testing.assert_allclose(iou.numpy(), expected, atol=1e-7)
    # boxes away from the origin, and boxes smaller than one unit (normalised coordinates)
    c = np.array([[1, 2, 5, 4], [0.1, 0.1, 0.5, 0.3]], np.float32)
    d = np.array([[2, 2, 6, 5], [0.2, 0.1, 0.6, 0.4]], np.float32)
    # inter 3*2 = 6, union 8 + 12 - 6 = 14; inter 0.3*0.2 = 0.06, union 0.08 + 0.12 - 0.06 = 0.14
    np.testing.assert_allclose(box_ops.iou_xyxy(c, d).numpy(), [[6 / 14, 0.0], [0.0, 0.06 / 0.14]], atol=1e-6)
    # zero-area boxes against each other: 0, not NaN
    zero = np.array([[1, 1, 1, 1]], np.float32)
    assert box_ops.iou_xyxy(zero, zero).numpy().tolist() == [[0.0]]


def test_iou_takes_boxes_of_unknown_static_shape():
    """``iou_xyxy`` inside a function traced for ``[None, None]`` inputs (only the values say there are
    4 coordinates) gives the same values as with known shapes."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, None], tf.float32)
    traced = tf.function(box_ops.iou_xyxy, input_signature=[spec, spec])
    a = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], np.float32)
    b = np.array([[0, 0, 2, 2], [2, 2, 4, 4], [5, 5, 6, 6]], np.float32)
    np.testing.assert_allclose(traced(a, b).numpy(), [[1, 0, 0], [1 / 7, 1 / 7, 0]], rtol=1e-6)
