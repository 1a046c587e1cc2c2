"""Detection telemetry: what the model sees and answers, as Prometheus histograms.

Exported on ``/metrics`` (``prometheus_client``'s default registry, like :mod:`predictor.serving.prometheus`):

- ``ssd_detection_score{class}``: scores of returned detections, per class;
- ``ssd_detection_box_area_fraction{class}``: box area / image area of returned detections, per class;
- ``ssd_detections_per_image``: returned detections per image;
- ``ssd_input_image_pixels``: decoded image sizes (height x width).

They describe the answers, so they depend on the request parameters (``score_threshold``, ``classes``,
``max_detections``) as well as on the images. Counting is vectorised (``numpy`` bincounts into
fixed buckets, exported at scrape time): no Python work per box. The offline side (reference
distributions, the drift check against them) is :mod:`predictor.tools.drift`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import REGISTRY
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

#: Upper bounds of the histogram buckets (``+Inf`` is implied). Changing them invalidates references.
SCORE_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
AREA_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.07,
    0.1,
    0.15,
    0.25,
    0.4,
    0.6,
    1.0,
)
COUNT_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 200)
PIXEL_BUCKETS: tuple[float, ...] = (1e4, 4e4, 1e5, 2e5, 4e5, 8e5, 1.5e6, 2.5e6, 4e6, 8.5e6, 1.7e7, 4e7)

SCORE = "ssd_detection_score"
AREA = "ssd_detection_box_area_fraction"
PER_IMAGE = "ssd_detections_per_image"
PIXELS = "ssd_input_image_pixels"


def bucket_index(values: Any, bounds: Sequence[float]) -> np.ndarray:
    """Bucket of each value in ``(-inf, b0], (b0, b1], ..., (b_last, +inf)`` (Prometheus ``le``): ``[n]``."""
    return np.searchsorted(np.asarray(bounds, np.float64), np.asarray(values, np.float64), side="left")


def area_fraction(boxes: np.ndarray, image_area: Any) -> np.ndarray:
    """Box area over image area: ``boxes [n, 4]`` pixel xyxy, ``image_area`` scalar or ``[n]`` -> ``[n]``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / np.maximum(image_area, 1.0)


def bucket_counts(
    values: np.ndarray, bounds: Sequence[float], groups: np.ndarray | None = None, n_groups: int = 1
):
    """Non-cumulative counts of ``values`` in ``(-inf, b0], (b0, b1], ..., (b_last, +inf)``.

    Args:
      values: float ``[n]``; groups: optional int ``[n]`` in ``0..n_groups-1`` (e.g. class ids).
    Returns:
      int64 ``[n_groups, len(bounds) + 1]`` (``[len(bounds) + 1]`` when ``groups`` is None).
    """
    index = bucket_index(values, bounds)
    width = len(bounds) + 1
    if groups is None:
        return np.bincount(index, minlength=width).astype(np.int64)
    flat = np.asarray(groups, np.int64) * width + index
    return np.bincount(flat, minlength=n_groups * width).reshape(n_groups, width).astype(np.int64)


class Histograms:
    """Bucket counts and sums of the four distributions (per class where it applies); thread-safe."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        c = len(self.class_names)
        self.score = np.zeros((c, len(SCORE_BUCKETS) + 1), np.int64)
        self.score_sum = np.zeros(c)
        self.area = np.zeros((c, len(AREA_BUCKETS) + 1), np.int64)
        self.area_sum = np.zeros(c)
        self.per_image = np.zeros(len(COUNT_BUCKETS) + 1, np.int64)
        self.per_image_sum = 0.0
        self.pixels = np.zeros(len(PIXEL_BUCKETS) + 1, np.int64)
        self.pixels_sum = 0.0
        self._lock = threading.Lock()

    def observe(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        num_detections: np.ndarray,
        image_hw: np.ndarray,
    ) -> None:
        """Count one batch of padded detections (``boxes [n, D, 4]`` pixel xyxy, ``scores``/``classes``
        ``[n, D]``, ``num_detections [n]``) of images of original sizes ``image_hw [n, 2]``."""
        num = np.asarray(num_detections, np.int64)
        hw = np.asarray(image_hw, np.float64).reshape(-1, 2)
        valid = np.arange(np.shape(scores)[1])[None, :] < num[:, None]
        cls = np.clip(np.asarray(classes)[valid].astype(np.int64), 0, len(self.class_names) - 1)
        sc = np.asarray(scores, np.float64)[valid]
        frac = area_fraction(np.asarray(boxes, np.float64)[valid], np.repeat(hw[:, 0] * hw[:, 1], num))
        c = len(self.class_names)
        score_counts = bucket_counts(sc, SCORE_BUCKETS, cls, c)
        area_counts = bucket_counts(frac, AREA_BUCKETS, cls, c)
        per_image = bucket_counts(num, COUNT_BUCKETS)
        pixels = hw[:, 0] * hw[:, 1]
        pixel_counts = bucket_counts(pixels, PIXEL_BUCKETS)
        with self._lock:
            self.score += score_counts
            self.score_sum += np.bincount(cls, sc, minlength=c)
            self.area += area_counts
            self.area_sum += np.bincount(cls, frac, minlength=c)
            self.per_image += per_image
            self.per_image_sum += float(num.sum())
            self.pixels += pixel_counts
            self.pixels_sum += float(pixels.sum())

    def to_json(self) -> dict[str, Any]:
        """Non-cumulative bucket counts by distribution (and class), with the bucket bounds."""
        with self._lock:
            names = self.class_names
            return {
                "bounds": {
                    "score": list(SCORE_BUCKETS),
                    "area_fraction": list(AREA_BUCKETS),
                    "detections_per_image": list(COUNT_BUCKETS),
                    "image_pixels": list(PIXEL_BUCKETS),
                },
                "score": {names[i]: self.score[i].tolist() for i in range(1, len(names))},
                "area_fraction": {names[i]: self.area[i].tolist() for i in range(1, len(names))},
                "detections_per_image": self.per_image.tolist(),
                "image_pixels": self.pixels.tolist(),
            }


def _family(name: str, doc: str, label: str | None) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=[label] if label else None)


def _buckets(counts: np.ndarray, bounds: Sequence[float]) -> list[tuple[str, float]]:
    cumulative = np.cumsum(counts)
    return [(_le(b), float(v)) for b, v in zip([*bounds, math.inf], cumulative, strict=True)]


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class TelemetryCollector(Collector):
    """Exposes the served model's :class:`Histograms` at scrape time (nothing before it is configured)."""

    def __init__(self) -> None:
        self.histograms: Histograms | None = None

    def configure(self, class_names: Sequence[str]) -> Histograms:
        """Start counting for a model with these classes (index 0 the background); returns the counts."""
        if self.histograms is None or self.histograms.class_names != tuple(class_names):
            self.histograms = Histograms(class_names)
        return self.histograms

    def observe(self, out: Mapping[str, np.ndarray], image_hw: np.ndarray) -> None:
        """Count a request's detections (``Detector.run_batch`` output rows) if configured."""
        if self.histograms is not None:
            self.histograms.observe(
                out["boxes"], out["scores"], out["classes"], out["num_detections"], image_hw
            )

    def collect(self) -> Iterable[HistogramMetricFamily]:
        h = self.histograms
        if h is None:
            return
        with h._lock:
            score = _family(SCORE, "Scores of returned detections", "class")
            area = _family(AREA, "Box area over image area of returned detections", "class")
            for i, name in enumerate(h.class_names[1:], start=1):
                score.add_metric([name], _buckets(h.score[i], SCORE_BUCKETS), float(h.score_sum[i]))
                area.add_metric([name], _buckets(h.area[i], AREA_BUCKETS), float(h.area_sum[i]))
            per_image = _family(PER_IMAGE, "Returned detections per image", None)
            per_image.add_metric([], _buckets(h.per_image, COUNT_BUCKETS), h.per_image_sum)
            pixels = _family(PIXELS, "Decoded input image sizes (height x width pixels)", None)
            pixels.add_metric([], _buckets(h.pixels, PIXEL_BUCKETS), h.pixels_sum)
        yield from (score, area, per_image, pixels)

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return []  # families depend on the model's classes, known only once it is configured


TELEMETRY = TelemetryCollector()
REGISTRY.register(TELEMETRY)


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = 1e-4) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` of two binned distributions (counts)."""
    e = np.asarray(expected, np.float64)
    a = np.asarray(actual, np.float64)
    e = np.maximum(e / max(e.sum(), 1.0), eps)
    a = np.maximum(a / max(a.sum(), 1.0), eps)
    return float(np.sum((a - e) * np.log(a / e)))
