"""The batcher's side of the chart's KEDA load trigger: ``ssd_offered_images_total{outcome}`` counts every
image offered to admission (admitted or refused), ``ssd_capacity_images_per_second`` is the efficient
bucket's warm-up rate. The query itself runs against a real Prometheus in tests/test_prometheus.py."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from predictor.serving.batcher import DynamicBatcher
from predictor.serving.errors import Overloaded


def offered(outcome: str) -> float:
    return REGISTRY.get_sample_value("ssd_offered_images_total", {"outcome": outcome}) or 0.0


def unused_model(*args):
    raise AssertionError("no model call in these tests")


def test_admitted_and_refused_images_are_counted_once_each():
    batcher = DynamicBatcher(unused_model, max_batch_size=4, max_queue_images=4)
    before = {o: offered(o) for o in ("admitted", "refused")}
    with batcher.admit(3):
        assert batcher.refusal(2) is not None  # the pre-body check of a 2-image request: refused
        with batcher.admit(1), pytest.raises(Overloaded), batcher.admit(1):  # 4 of 4, then one more
            pass
    with batcher.admit(5):  # alone: always admitted, whatever its size
        pass
    delta = {o: offered(o) - before[o] for o in before}
    assert delta == {"admitted": 3 + 1 + 5, "refused": 2 + 1}


def test_capacity_is_the_efficient_buckets_warm_up_rate():
    # images/s per bucket: 10, 16.7, 20, 20.5; best 20.5, within 90 % of it from bucket 4 on
    seconds = {1: 0.1, 2: 0.12, 4: 0.2, 8: 0.39}
    batcher = DynamicBatcher(unused_model, max_batch_size=8, bucket_seconds=seconds)
    assert batcher.efficient_bucket() == 4
    assert batcher.capacity_images_per_second == 4 / 0.2
    assert DynamicBatcher(unused_model, max_batch_size=8).capacity_images_per_second is None


def test_capacity_is_bounded_by_the_decode_pool():
    """A replica whose decode pool is slower than its model (a GPU node with big JPEGs) reads as full
    at the decode pool's rate: 2 threads x 1 / 0.010 s = 200 images/s under a model rate of 3,000."""
    from predictor.serving.prepare import DecodeTime, capacity_images_per_second

    assert capacity_images_per_second(None, 2, 0.01) is None  # before the warm-up: no series
    assert capacity_images_per_second(3000.0, 2, None) == 3000.0  # nothing decoded yet
    assert capacity_images_per_second(3000.0, 2, 0.01) == pytest.approx(200.0)
    assert capacity_images_per_second(50.0, 2, 0.01) == 50.0  # the model bounds a CPU replica
    timer = DecodeTime(alpha=0.5)
    assert timer.seconds is None
    timer.observe(0.02)
    assert timer.seconds == 0.02  # the first image sets it
    timer.observe(0.04)
    assert timer.seconds == pytest.approx(0.03)  # 0.02 + 0.5 * (0.04 - 0.02)
