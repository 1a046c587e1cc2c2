"""SSD anchor (default box) generation, exactly as balancap's ``ssd_anchors_all_layers``.

For feature layer ``l`` with ``size`` cells, ``step`` and sizes ``(s_min, s_max)`` in input pixels:

* centres ``cy = (row + offset) * step / input_size``, ``cx = (col + offset) * step / input_size``
  ("Caffe step" form; centres may exceed 1.0, e.g. 38 * 8 = 304 > 300);
* per location, in this order: a square of side ``s_min``; a square of side ``sqrt(s_min * s_max)``; then
  one box per ratio ``r`` with ``h = s_min / sqrt(r)`` and ``w = s_min * sqrt(r)`` (ratio 2 is wide);
* flattened row-major over ``(row, col, anchor)``; layers concatenated in config order.

Anchors are returned as ``float32 [A, 4]`` ``(cy, cx, h, w)`` normalised to the input (see
:mod:`predictor.ssd.boxes`), never clipped.
"""

from __future__ import annotations

import functools

import numpy as np

from predictor.ssd.config import FeatureLayer, SSDConfig


def layer_anchor_sizes(layer: FeatureLayer, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor heights and widths of one layer, normalised: two ``float32 [num_anchors]`` arrays."""
    s_min = layer.min_size / input_size
    s_extra = float(np.sqrt(layer.min_size * layer.max_size)) / input_size
    heights = [s_min, s_extra] + [s_min / np.sqrt(r) for r in layer.ratios]
    widths = [s_min, s_extra] + [s_min * np.sqrt(r) for r in layer.ratios]
    return np.asarray(heights, np.float32), np.asarray(widths, np.float32)


def layer_anchors(layer: FeatureLayer, input_size: int, offset: float = 0.5) -> np.ndarray:
    """Anchors of one layer: ``float32 [size * size * num_anchors, 4]`` ``(cy, cx, h, w)``."""
    idx = (np.arange(layer.size, dtype=np.float64) + offset) * layer.step / input_size
    cy, cx = np.meshgrid(idx, idx, indexing="ij")  # [size, size]
    heights, widths = layer_anchor_sizes(layer, input_size)
    n = layer.num_anchors
    out = np.empty((layer.size, layer.size, n, 4), np.float32)
    out[..., 0] = cy[:, :, None]
    out[..., 1] = cx[:, :, None]
    out[..., 2] = heights[None, None, :]
    out[..., 3] = widths[None, None, :]
    return out.reshape(-1, 4)


def generate_anchors(config: SSDConfig) -> np.ndarray:
    """All anchors of ``config``: ``float32 [config.num_anchors, 4]`` ``(cy, cx, h, w)``."""
    return _cached_anchors(config.to_json_key())


@functools.lru_cache(maxsize=16)
def _cached_anchors(key: str) -> np.ndarray:
    config = SSDConfig.from_json_key(key)
    parts = [layer_anchors(fl, config.input_size, config.anchor_offset) for fl in config.feature_layers]
    anchors = np.concatenate(parts, axis=0)
    anchors.setflags(write=False)
    return anchors
