"""Live drift: the detection distributions of the last N images against the model's reference, as a gauge.

The ``ssd_detection_*`` histograms count since the server started, so a change that begins after a week
of clean traffic is diluted in them. With ``--drift_window_images N`` the server also keeps the bucket
counts of the last ``N`` images only (a ring: each image's buckets are added when it is answered and
taken away when it leaves the window) and exports, at scrape time, the population stability index of
each distribution against the model directory's ``reference_distributions.json``:

- ``ssd_drift_psi{distribution, class}``: ``score`` and ``area_fraction`` per class (once the window holds
  :data:`MIN_DETECTIONS` detections of that class), ``detections_per_image`` and ``image_pixels`` with
  ``class="*"`` (once it holds :data:`MIN_IMAGES` images);
- ``ssd_drift_window_images``: images in the window.

The PSI math and the buckets are the offline drift tool's (:mod:`predictor.serving.telemetry`), so the
gauge and ``telemetry drift`` agree on the same counts.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from predictor.serving.telemetry import (
    AREA_BUCKETS,
    COUNT_BUCKETS,
    PIXEL_BUCKETS,
    SCORE_BUCKETS,
    area_fraction,
    bucket_index,
    psi,
)

log = logging.getLogger(__name__)

#: Detections of a class the window must hold before its per-class PSI is exported, and images before
#: the per-image PSIs are: fewer make clean traffic look drifted. ``python -m bench.drift_signals`` on
#: the demo model's clean held-out images (2026-12-07): largest PSI of a 100-image window 0.76 (the
#: scores of a class with few detections), of 200 images 0.21, of 400 images 0.14, against the usual
#: 0.25 threshold: windows of 400 images or more are the useful ones.
MIN_DETECTIONS = 200
MIN_IMAGES = 200


class _Image(NamedTuple):
    """One answered image's buckets: per detection (class id, score bucket, area bucket), and its own."""

    classes: np.ndarray
    score_bins: np.ndarray
    area_bins: np.ndarray
    count_bin: int
    pixel_bin: int


class DriftWindow:
    """Bucket counts of the last ``size`` images and their PSI against ``reference``; thread-safe.

    Args:
      class_names: the model's classes, index 0 the background.
      reference: ``reference_distributions.json`` (its bucket bounds must be the server's).
      size: images in the window.
    """

    def __init__(self, class_names: Sequence[str], reference: Mapping[str, Any], size: int) -> None:
        bounds = reference["bounds"]
        for name, ours in (
            ("score", SCORE_BUCKETS),
            ("area_fraction", AREA_BUCKETS),
            ("detections_per_image", COUNT_BUCKETS),
            ("image_pixels", PIXEL_BUCKETS),
        ):
            if [float(b) for b in bounds[name]] != [float(b) for b in ours]:
                raise ValueError(f"reference bounds of {name} are not the server's buckets")
        for name, ours in (("detections_per_image", COUNT_BUCKETS), ("image_pixels", PIXEL_BUCKETS)):
            if len(reference[name]) != len(ours) + 1:
                raise ValueError(f"reference {name} has {len(reference[name])} counts, not {len(ours) + 1}")
        for name, ours in (("score", SCORE_BUCKETS), ("area_fraction", AREA_BUCKETS)):
            for cls, counts in reference[name].items():
                if len(counts) != len(ours) + 1:
                    raise ValueError(
                        f"reference {name} of {cls!r} has {len(counts)} counts, not {len(ours) + 1}"
                    )
        self.class_names = tuple(class_names)
        self.reference = reference
        self.size = size
        c = len(self.class_names)
        self.score = np.zeros((c, len(SCORE_BUCKETS) + 1), np.int64)
        self.area = np.zeros((c, len(AREA_BUCKETS) + 1), np.int64)
        self.per_image = np.zeros(len(COUNT_BUCKETS) + 1, np.int64)
        self.pixels = np.zeros(len(PIXEL_BUCKETS) + 1, np.int64)
        self._ring: collections.deque[_Image] = collections.deque()
        self._lock = threading.Lock()

    def observe(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        num_detections: np.ndarray,
        image_hw: np.ndarray,
    ) -> None:
        """Add one batch (``boxes [n, D, 4]`` pixel xyxy, ``scores``/``classes [n, D]``, ``num_detections
        [n]``, original ``image_hw [n, 2]``), dropping the oldest images past the window."""
        hw = np.asarray(image_hw, np.float64).reshape(-1, 2)
        images = []
        for i, k in enumerate(np.asarray(num_detections, np.int64)):
            frac = area_fraction(boxes[i][:k], hw[i, 0] * hw[i, 1])
            cls = np.clip(np.asarray(classes[i][:k], np.int64), 0, len(self.class_names) - 1)
            images.append(
                _Image(
                    cls,
                    bucket_index(scores[i][:k], SCORE_BUCKETS),
                    bucket_index(frac, AREA_BUCKETS),
                    int(bucket_index([k], COUNT_BUCKETS)[0]),
                    int(bucket_index([hw[i, 0] * hw[i, 1]], PIXEL_BUCKETS)[0]),
                )
            )
        with self._lock:
            for image in images:
                self._count(image, 1)
                self._ring.append(image)
            while len(self._ring) > self.size:
                self._count(self._ring.popleft(), -1)

    def _count(self, image: _Image, sign: int) -> None:
        np.add.at(self.score, (image.classes, image.score_bins), sign)
        np.add.at(self.area, (image.classes, image.area_bins), sign)
        self.per_image[image.count_bin] += sign
        self.pixels[image.pixel_bin] += sign

    def images(self) -> int:
        with self._lock:
            return len(self._ring)

    def psi(self) -> list[tuple[str, str, float]]:
        """``(distribution, class, PSI)`` of every distribution with enough samples in the window."""
        ref = self.reference
        rows = []
        with self._lock:
            if len(self._ring) >= MIN_IMAGES:
                rows.append(("detections_per_image", "*", psi(ref["detections_per_image"], self.per_image)))
                rows.append(("image_pixels", "*", psi(ref["image_pixels"], self.pixels)))
            for name, counts in (("score", self.score), ("area_fraction", self.area)):
                for i, cls in enumerate(self.class_names[1:], start=1):
                    if cls in ref[name] and counts[i].sum() >= MIN_DETECTIONS:
                        rows.append((name, cls, psi(ref[name][cls], counts[i])))
        return rows


class DriftCollector(Collector):
    """Exposes the served model's :class:`DriftWindow` at scrape time (nothing while it has none)."""

    def __init__(self) -> None:
        self.window: DriftWindow | None = None

    def configure(self, class_names: Sequence[str], model_dir: str | Path, size: int) -> DriftWindow | None:
        """Start a window of ``size`` images against ``model_dir/reference_distributions.json``; None
        (logged) when ``size`` is 0 or the model directory has no usable reference: the server then
        serves without the gauge rather than failing its warm-up."""
        self.window = None
        if size <= 0:
            return None
        path = Path(model_dir) / "reference_distributions.json"
        if not path.is_file():
            log.warning("--drift_window_images %d: %s is missing; no ssd_drift_psi", size, path)
            return None
        try:
            self.window = DriftWindow(class_names, json.loads(path.read_text()), size)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # serve without the gauge
            log.error("--drift_window_images %d: %s is not usable (%s: %s); no ssd_drift_psi",
                      size, path, type(e).__name__, e)  # fmt: skip
            return None
        return self.window

    def observe(self, out: Mapping[str, np.ndarray], image_hw: np.ndarray) -> None:
        """Add a request's detections (``Detector.run_batch`` output rows) when a window is configured."""
        if self.window is not None:
            self.window.observe(out["boxes"], out["scores"], out["classes"], out["num_detections"], image_hw)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        window = self.window
        if window is None:
            return
        gauge = GaugeMetricFamily(
            "ssd_drift_psi",
            f"PSI of the last {window.size} images' distributions against the model's reference",
            labels=["distribution", "class"],
        )
        for distribution, cls, value in window.psi():
            gauge.add_metric([distribution, cls], value)
        yield gauge
        yield GaugeMetricFamily(
            "ssd_drift_window_images", "Images in the live drift window", value=window.images()
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # present only once configured


DRIFT = DriftCollector()
REGISTRY.register(DRIFT)
