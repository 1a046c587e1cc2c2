"""Anchors: counts and hand-computed values (balancap's ssd_anchor_one_layer semantics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictor.ssd.anchors import _cached_anchors, generate_anchors, layer_anchor_sizes, layer_anchors
from predictor.ssd.config import ssd300_vgg16, ssd512_vgg16


@pytest.fixture(autouse=True)
def _fresh_anchor_cache():
    """Every test computes the anchors it checks: no test passes on a cache an earlier test filled."""
    _cached_anchors.cache_clear()


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


def _layer(size=2, step=10.0, min_size=8.0, max_size=18.0, ratios=(4.0, 0.25)):
    from predictor.ssd.config import FeatureLayer

    return FeatureLayer("t", size, step, min_size, max_size, ratios)


def test_layer_anchor_sizes_hand_values():
    # s_min = 8/40 = 0.2, s_extra = sqrt(8*18)/40 = 12/40 = 0.3; ratio 4: h = 0.2/2, w = 0.2*2
    heights, widths = layer_anchor_sizes(_layer(), 40)
    assert heights.dtype == np.float32 and widths.dtype == np.float32
    np.testing.assert_allclose(heights, [0.2, 0.3, 0.1, 0.4], rtol=1e-6)
    np.testing.assert_allclose(widths, [0.2, 0.3, 0.4, 0.1], rtol=1e-6)


def test_layer_anchors_every_row_by_hand():
    # 2x2 cells, step 10 px on a 40 px input: centres (i + 0.5) * 10 / 40 = 0.125, 0.375
    a = layer_anchors(_layer(), 40)
    assert a.shape == (16, 4) and a.dtype == np.float32
    sizes = [[0.2, 0.2], [0.3, 0.3], [0.1, 0.4], [0.4, 0.1]]
    expected = [[cy, cx, h, w] for cy in (0.125, 0.375) for cx in (0.125, 0.375) for h, w in sizes]
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    # offset 0: centres on the cell corners
    np.testing.assert_allclose(
        layer_anchors(_layer(), 40, offset=0.0)[::4, :2], [[0, 0], [0, 0.25], [0.25, 0], [0.25, 0.25]]
    )


def test_generate_anchors_concatenates_layers_in_order_with_the_config_offset():
    config = ssd300_vgg16()
    a = generate_anchors(config)
    start = 0
    for layer in config.feature_layers:
        n = layer.size * layer.size * layer.num_anchors
        np.testing.assert_array_equal(a[start : start + n], layer_anchors(layer, 300, config.anchor_offset))
        start += n
    assert start == len(a)
    shifted = config.replace(anchor_offset=0.0)
    b = generate_anchors(shifted)
    np.testing.assert_allclose(b[:4, :2], 0.0)
    np.testing.assert_allclose(b[4, :2], [0.0, 8 / 300], rtol=1e-6)
    assert not b.flags.writeable and a is not b
