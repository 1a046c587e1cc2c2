"""The live drift window (``predictor.serving.drift``): counts of exactly the last N images, PSI as the
offline tool computes it, and the gauge's exposition. The live behaviour (clean, black frames, back) is
``tests/test_prometheus.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from predictor.serving import drift, telemetry

CLASSES = ("background", "circle", "square")


def reference() -> dict:
    bounds = {
        "score": list(telemetry.SCORE_BUCKETS),
        "area_fraction": list(telemetry.AREA_BUCKETS),
        "detections_per_image": list(telemetry.COUNT_BUCKETS),
        "image_pixels": list(telemetry.PIXEL_BUCKETS),
    }
    rng = np.random.default_rng(3)

    def counts(bounds_of: str) -> list[int]:
        return rng.integers(0, 20, len(bounds[bounds_of]) + 1).tolist()

    return {
        "bounds": bounds,
        "score": {c: counts("score") for c in CLASSES[1:]},
        "area_fraction": {c: counts("area_fraction") for c in CLASSES[1:]},
        "detections_per_image": counts("detections_per_image"),
        "image_pixels": counts("image_pixels"),
    }


# Three images of 100 x 200 pixels, at most two detections each (padded rows after num_detections).
BOXES = np.array(
    [
        [[0, 0, 10, 20], [0, 0, 100, 200]],  # area fractions 0.01 and 1.0
        [[0, 0, 50, 40], [0, 0, 0, 0]],  # 0.1
        [[0, 0, 0, 0], [0, 0, 0, 0]],
    ],
    np.float32,
)
SCORES = np.array([[0.9, 0.42], [0.7, 0.0], [0.0, 0.0]], np.float32)
CLS = np.array([[1, 2], [2, 0], [0, 0]], np.int32)
NUM = np.array([2, 1, 0])
HW = np.array([[100, 200]] * 3, np.float32)


@pytest.fixture
def small_minimums(monkeypatch):
    monkeypatch.setattr(drift, "MIN_IMAGES", 1)
    monkeypatch.setattr(drift, "MIN_DETECTIONS", 1)


def test_the_window_counts_only_its_last_images(small_minimums):
    window = drift.DriftWindow(CLASSES, reference(), size=2)
    window.observe(BOXES, SCORES, CLS, NUM, HW)  # three images: the first leaves the window
    assert window.images() == 2
    # left: image 1 (one square, score 0.7, area 0.1) and image 2 (nothing)
    expected_square_scores = telemetry.bucket_counts(np.array([0.7]), telemetry.SCORE_BUCKETS)
    assert window.score[2].tolist() == expected_square_scores.tolist()
    assert window.score[1].sum() == 0 and window.area[1].sum() == 0  # the circle left with image 0
    assert (
        window.area[2].tolist() == telemetry.bucket_counts(np.array([0.1]), telemetry.AREA_BUCKETS).tolist()
    )
    assert (
        window.per_image.tolist()
        == telemetry.bucket_counts(np.array([1, 0]), telemetry.COUNT_BUCKETS).tolist()
    )
    assert window.pixels.sum() == 2 and window.pixels[np.searchsorted(telemetry.PIXEL_BUCKETS, 20_000)] == 2


def test_psi_rows_are_the_offline_psi_of_the_window(small_minimums):
    ref = reference()
    window = drift.DriftWindow(CLASSES, ref, size=10)
    window.observe(BOXES, SCORES, CLS, NUM, HW)
    rows = {(d, c): v for d, c, v in window.psi()}
    assert set(rows) == {
        ("detections_per_image", "*"),
        ("image_pixels", "*"),
        ("score", "circle"),
        ("score", "square"),
        ("area_fraction", "circle"),
        ("area_fraction", "square"),
    }
    per_image = telemetry.bucket_counts(np.array([2, 1, 0]), telemetry.COUNT_BUCKETS)
    assert rows["detections_per_image", "*"] == telemetry.psi(ref["detections_per_image"], per_image)
    squares = telemetry.bucket_counts(np.array([0.42, 0.7]), telemetry.SCORE_BUCKETS)
    assert rows["score", "square"] == telemetry.psi(ref["score"]["square"], squares)


def test_rows_wait_for_enough_samples():
    window = drift.DriftWindow(CLASSES, reference(), size=1000)
    window.observe(BOXES, SCORES, CLS, NUM, HW)
    assert window.psi() == []  # 3 images < MIN_IMAGES, 1-2 detections per class < MIN_DETECTIONS


def test_collector_exposition_and_configuration(tmp_path, small_minimums):
    collector = drift.DriftCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    assert collector.configure(CLASSES, tmp_path, 0) is None  # off
    assert collector.configure(CLASSES, tmp_path, 5) is None  # no reference there
    assert generate_latest(registry) == b""
    (tmp_path / "reference_distributions.json").write_text(json.dumps(reference()))
    assert collector.configure(CLASSES, tmp_path, 5) is not None
    collector.observe({"boxes": BOXES, "scores": SCORES, "classes": CLS, "num_detections": NUM}, HW)
    text = generate_latest(registry).decode()
    assert 'ssd_drift_psi{class="*",distribution="detections_per_image"}' in text
    assert 'ssd_drift_psi{class="square",distribution="score"}' in text
    assert "ssd_drift_window_images 3.0" in text


def test_reference_with_other_buckets_is_refused():
    ref = reference()
    ref["bounds"]["score"] = ref["bounds"]["score"][:-1]
    with pytest.raises(ValueError, match="score"):
        drift.DriftWindow(CLASSES, ref, size=10)


def test_reference_with_other_count_lengths_is_refused():
    ref = reference()
    ref["detections_per_image"] = ref["detections_per_image"][:-1]
    with pytest.raises(ValueError, match="detections_per_image has"):
        drift.DriftWindow(CLASSES, ref, size=10)
    ref = reference()
    cls = next(iter(ref["score"]))
    ref["score"][cls] = [*ref["score"][cls], 0]
    with pytest.raises(ValueError, match=f"score of '{cls}' has"):
        drift.DriftWindow(CLASSES, ref, size=10)


@pytest.mark.parametrize("text", ["{not json", "{}", '{"bounds": {}}', "[]"])
def test_an_unusable_reference_leaves_the_gauge_off_instead_of_failing_start_up(tmp_path, caplog, text):
    """The server calls configure during its warm-up: a broken reference must not stop it."""
    (tmp_path / "reference_distributions.json").write_text(text)
    collector = drift.DriftCollector()
    with caplog.at_level("ERROR", logger=drift.__name__):
        assert collector.configure(CLASSES, tmp_path, 5) is None
    assert collector.window is None
    assert any("is not usable" in m for m in caplog.messages)
