"""Anchors: counts and hand-computed values (balancap's ssd_anchor_one_layer semantics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictor.ssd.anchors import generate_anchors, layer_anchors
from predictor.ssd.config import ssd300_vgg16, ssd512_vgg16


def test_anchor_counts():
    assert generate_anchors(ssd300_vgg16()).shape == (8732, 4)
    assert generate_anchors(ssd512_vgg16()).shape == (24564, 4)
    assert ssd300_vgg16().num_anchors == 8732
    assert ssd512_vgg16().num_anchors == 24564


def test_anchors_are_cached_and_read_only():
    a = generate_anchors(ssd300_vgg16())
    assert a is generate_anchors(ssd300_vgg16())
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


def test_block4_first_and_last_cell():
    a = generate_anchors(ssd300_vgg16())
    c0 = 0.5 * 8 / 300
    r2 = math.sqrt(2.0)
    expected_h = [21 / 300, math.sqrt(21 * 45) / 300, 21 / 300 / r2, 21 / 300 * r2]
    expected_w = [21 / 300, math.sqrt(21 * 45) / 300, 21 / 300 * r2, 21 / 300 / r2]
    first = a[:4]
    np.testing.assert_allclose(first[:, 0], c0, rtol=1e-6)
    np.testing.assert_allclose(first[:, 1], c0, rtol=1e-6)
    np.testing.assert_allclose(first[:, 2], expected_h, rtol=1e-6)
    np.testing.assert_allclose(first[:, 3], expected_w, rtol=1e-6)
    # spec: block4 h = [0.07, 0.1025, 0.0495, 0.0990]
    np.testing.assert_allclose(first[:, 2], [0.07, 0.1025, 0.0495, 0.0990], atol=1e-4)
    last = a[5776 - 4 : 5776]
    np.testing.assert_allclose(last[:, 0], 37.5 * 8 / 300, rtol=1e-6)  # = 1.0: centres reach the edge
    np.testing.assert_allclose(last[:, 1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(last[:, 2], expected_h, rtol=1e-6)
    # row-major over (row, col, anchor): index 4 is row 0, col 1
    np.testing.assert_allclose(a[4, :2], [c0, 1.5 * 8 / 300], rtol=1e-6)


def test_block8_last_cell_and_block11():
    a = generate_anchors(ssd300_vgg16())
    start8 = 5776 + 2166
    block8 = a[start8 : start8 + 600].reshape(10, 10, 6, 4)
    np.testing.assert_allclose(block8[9, 9, :, 0], 9.5 * 32 / 300, rtol=1e-6)  # 1.0133 > 1
    np.testing.assert_allclose(block8[9, 9, 0, 2:], [0.33, 0.33], rtol=1e-6)
    np.testing.assert_allclose(block8[0, 0, 1, 2], math.sqrt(99 * 153) / 300, rtol=1e-6)  # 0.4102
    # ratio 3 and 1/3: h = s/sqrt(3), w = s*sqrt(3)
    np.testing.assert_allclose(block8[0, 0, 4, 2:], [0.33 / math.sqrt(3), 0.33 * math.sqrt(3)], rtol=1e-6)
    np.testing.assert_allclose(block8[0, 0, 5, 2:], [0.33 * math.sqrt(3), 0.33 / math.sqrt(3)], rtol=1e-6)
    block11 = a[-4:]
    np.testing.assert_allclose(block11[:, :2], 0.5, rtol=1e-6)
    np.testing.assert_allclose(block11[:, 2], [0.87, math.sqrt(261 * 315) / 300, 0.87 / math.sqrt(2),
                                               0.87 * math.sqrt(2)], rtol=1e-6)  # fmt: skip
    assert block11[:, 3].max() > 1.0  # never clipped: ratio-2 box of block11 is 1.23 wide


def test_layer_anchors_offset_and_step():
    layer = ssd300_vgg16().feature_layers[4]  # block10: 3x3, step 100
    a = layer_anchors(layer, 300).reshape(3, 3, 4, 4)
    np.testing.assert_allclose(a[:, 0, 0, 0], [0.5 / 3, 1.5 / 3, 2.5 / 3], rtol=1e-6)
    assert a.dtype == np.float32
