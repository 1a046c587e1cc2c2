"""Smoke tests of the pipeline benchmarks' own logic (numbers are not checked: they depend on the machine)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import draft_effect, pipeline
from predictor.ssd.detector import ImageDetections


def test_test_images_are_deterministic_and_of_the_asked_size():
    import io

    from PIL import Image

    a, b = pipeline.make_image(320, 200, "JPEG"), pipeline.make_image(320, 200, "JPEG")
    assert a == b
    assert Image.open(io.BytesIO(pipeline.make_image(64, 48, "PNG"))).size == (64, 48)


def test_stage_costs_cover_every_stage(direct_detector):
    costs = pipeline.stage_costs(pipeline.make_image(640, 480, "JPEG"), direct_detector, min_time_s=0.0)
    stages = ["parse", "base64", "decode", "exif_mode", "resize", "assembly", "post", "encode"]
    assert all(costs[k] >= 0 for k in stages)
    assert costs["pipeline"] == pytest.approx(sum(costs[k] for k in stages))
    assert costs["bare"] > 0 and costs["decode_draft"] > 0
    assert set(pipeline.uint8_costs(direct_detector, min_time_s=0.0)) == {"1080p", "network size"}


def test_draft_effect_matching_pairs_same_class_boxes_once():
    full = ImageDetections(
        np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.array([1, 1, 2], np.int32),
    )
    draft = ImageDetections(
        np.array([[0, 0, 10, 11], [50, 50, 60, 60]], np.float32),
        np.array([0.85, 0.6], np.float32),
        np.array([1, 1], np.int32),
    )
    ious, deltas, matched, union = draft_effect.match(full, draft)
    assert matched == 1 and union == 4  # 3 + 2 boxes, one pair
    assert ious == [pytest.approx(100 / 110)] and deltas == [pytest.approx(0.05)]


def test_served_model_share_counts_each_call_at_its_bucket():
    """The served table subtracts the model's CPU per call actually made: calls read from the server's
    ``ssd_batch_size`` histogram land at the bucket they were padded to (3 images -> bucket 4)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from predictor.serving.prometheus import BATCH_SIZE

    registry = CollectorRegistry()
    hist = Histogram("ssd_batch_size", "Images per model call", buckets=BATCH_SIZE._upper_bounds[:-1],
                     registry=registry)  # fmt: skip
    for n in (1, 3, 3, 8, 4):
        hist.observe(n)
    calls = pipeline.batch_calls(generate_latest(registry).decode())
    assert {b: n for b, n in calls.items() if n} == {1: 1, 4: 3, 8: 1}
    per_call = {1: 2.0, 2: 3.0, 4: 5.0, 8: 9.0}
    assert pipeline.model_cpu_of_calls(calls, per_call) == 1 * 2.0 + 3 * 5.0 + 1 * 9.0
    with pytest.raises(ValueError, match="bucket"):
        pipeline.model_cpu_of_calls({16: 1}, per_call)


def _scrape(calls: tuple[int, ...], computed: int | None) -> str:
    """Prometheus text of a server that made ``calls`` (images per call) and, unless None, exports
    ``ssd_computed_images_total`` = ``computed``."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from predictor.serving.prometheus import BATCH_SIZE

    registry = CollectorRegistry()
    hist = Histogram("ssd_batch_size", "Images per model call", buckets=BATCH_SIZE._upper_bounds[:-1],
                     registry=registry)  # fmt: skip
    for n in calls:
        hist.observe(n)
    if computed is not None:
        Counter("ssd_computed_images", "Images the model computed", registry=registry).inc(computed)
    return generate_latest(registry).decode()


def test_padded_share_comes_from_the_servers_counter_when_it_has_one():
    """Calls of 3 and 5 images between two scrapes (after one of 1 before): 8 images. An exact-size
    server computed 8 rows (counter 1 -> 9): 0 % padded, though the histogram would infer 4 + 8 = 12
    rows (1/3). A padding server's counter (1 -> 13) gives 1 - 8/12 = 1/3 too. An older server without
    the counter: the histogram's inference, 1/3, and ``padded_source`` says so."""
    from bench.common import batch_delta, parse_batch_histogram

    before = parse_batch_histogram(_scrape((1,), 1))
    assert before["computed"] == 1.0 and before["sum"] == 1.0 and before["count"] == 1.0
    exact = batch_delta(before, parse_batch_histogram(_scrape((1, 3, 5), 9)))
    assert exact["padded_share"] == 0.0 and exact["padded_source"] == "counter"
    assert exact["model_calls"] == 2 and exact["mean_batch"] == 4.0
    assert exact["calls_by_bucket"] == {4: 1, 8: 1}
    padded = batch_delta(before, parse_batch_histogram(_scrape((1, 3, 5), 13)))
    assert padded["padded_share"] == pytest.approx(1 / 3) and padded["padded_source"] == "counter"
    partly = batch_delta(before, parse_batch_histogram(_scrape((1, 3, 5), 11)))  # no inference gives 10
    assert partly["padded_share"] == pytest.approx(1 - 8 / 10)
    old = parse_batch_histogram(_scrape((1,), None)), parse_batch_histogram(_scrape((1, 3, 5), None))
    assert old[0]["computed"] is None
    older = batch_delta(*old)
    assert older["padded_share"] == pytest.approx(1 - 8 / 12) and older["padded_source"] == "histogram"
