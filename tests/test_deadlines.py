"""Deadlines that stop work, in ``SSDPredictor`` (KServe's pipeline without HTTP).

A request past ``--request_timeout_s`` gets 503 and its work stops: images not decoded yet are never
decoded, a request waiting for the model leaves the queue and is never predicted, and its images stay
counted against ``--max_queue_images`` until the work really ended. Gates hold the decode thread or
the model, so the outcome never depends on the machine's speed; the time limit only decides when the
503 is sent.
"""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest
from serving_fixtures import b64, encode_image

from predictor.serving import prometheus
from predictor.serving.batcher import Deadline, RequestTimeout
from predictor.serving.model import SSDPredictor
from predictor.serving.options import ServingOptions

HANG_GUARD_S = 60.0
# The tests that hold the model count on one call in flight: a request queued behind the held call
# stays queued (the default, automatic, would start a second call for it on this CPU).
ONE_CALL = 1


class GatedDetector:
    """The real detector, with every ``run_batch`` waiting for ``gate`` and recorded."""

    def __init__(self, detector, gate: threading.Event) -> None:
        self._detector = detector
        self.gate = gate
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self._detector, name)

    def run_batch(self, images, image_hw, score_threshold, max_detections, **controls):
        self.batch_sizes.append(len(images))  # the real images: only the detector pads
        self.entered.set()
        assert self.gate.wait(HANG_GUARD_S), "the test never opened the gate"
        return self._detector.run_batch(images, image_hw, score_threshold, max_detections, **controls)


@pytest.fixture(scope="module")
def png(shapes_images) -> str:
    return b64(encode_image(shapes_images[1], "PNG"))


def counter(metric, *labels: str) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


async def model_entered(gated: GatedDetector) -> None:
    entered = await asyncio.wait_for(asyncio.to_thread(gated.entered.wait, HANG_GUARD_S), HANG_GUARD_S + 5)
    assert entered, "the model was never called"


async def until(condition, what: str) -> None:
    """Hang guard only: poll ``condition`` for up to a minute."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


def test_images_not_decoded_before_the_deadline_are_never_decoded(
    direct_detector, random_tiny_model_dir, png
):
    options = ServingOptions(
        model_dir=str(random_tiny_model_dir), max_batch_size=4, decode_threads=1, request_timeout_s=0.05
    )
    model = SSDPredictor("ssd", options, detector=direct_detector)
    assert model.load()
    decoded: list[str] = []
    real_prepare = model.prepare_image
    model.prepare_image = lambda payload: decoded.append(payload.field) or real_prepare(payload)
    gate = threading.Event()
    before = counter(prometheus.CANCELLED, "decode")

    async def main():
        model._decode_pool.submit(gate.wait, HANG_GUARD_S)  # the only decode thread is busy
        with pytest.raises(RequestTimeout, match="request_timeout_s"):
            await model({"instances": [png, png]}, headers={})
        assert model.batcher.admitted_images == 2  # still counted: its decodes are not over
        gate.set()
        await until(lambda: model.batcher.admitted_images == 0, "the timed-out work released its slot")

    try:
        asyncio.run(main())
    finally:
        gate.set()
        model.close()
    assert decoded == []
    assert counter(prometheus.CANCELLED, "decode") - before == 2


def test_a_grpc_calls_time_limit_counts_from_its_arrival(direct_detector, random_tiny_model_dir, png):
    """The model's deadline starts when the gRPC call arrived (``admission.CALL_ARRIVAL``, set by the
    interceptor before the call waits for a reading place), not when its message was read: a call that
    arrived ``--request_timeout_s`` ago gets 503 at once; one that just arrived, and a REST request
    (no arrival set), are answered."""
    from predictor.serving import admission

    options = ServingOptions(model_dir=str(random_tiny_model_dir), max_batch_size=4, request_timeout_s=30)
    model = SSDPredictor("ssd", options, detector=direct_detector)
    assert model.load()

    async def call(arrived: float | None):
        admission.CALL_ARRIVAL.set(arrived)  # this task's context only, as in the interceptor
        return await model({"instances": [png]}, headers={})

    async def main():
        with pytest.raises(
            RequestTimeout, match=r"^request not answered within 30 s \(--request_timeout_s\)"
        ):
            await asyncio.create_task(call(time.monotonic() - 30.5))
        fresh = await asyncio.create_task(call(time.monotonic()))
        rest = await asyncio.create_task(call(None))
        return fresh, rest

    try:
        fresh, rest = asyncio.run(main())
    finally:
        model.close()
    assert type(fresh) is type(rest) and fresh == rest, (fresh, rest)  # the same image, the same answer
    assert model.batcher.admitted_images == 0


def test_a_request_waiting_for_the_model_is_dropped_at_its_deadline(
    direct_detector, random_tiny_model_dir, png
):
    gate = threading.Event()
    gated = GatedDetector(direct_detector, gate)
    options = ServingOptions(
        model_dir=str(random_tiny_model_dir),
        max_batch_size=4,
        batch_wait_ms=0,
        model_calls_in_flight=ONE_CALL,
    )
    model = SSDPredictor("ssd", options, detector=gated)
    assert model.load()
    queue_before = counter(prometheus.CANCELLED, "queue")
    late_before = counter(prometheus.LATE)

    async def main():
        first = asyncio.ensure_future(model({"instances": [png]}, headers={}))
        await model_entered(gated)
        parsed = await model.preprocess({"instances": [png, png, png]}, headers={})
        deadline = Deadline()  # predict() expires it when --request_timeout_s passes
        second = asyncio.ensure_future(model._detect(parsed, deadline))
        await until(lambda: model.batcher.queued_images == 3, "the second request queued")
        deadline.expire()
        with pytest.raises(RequestTimeout):
            await second
        assert model.batcher.queued_images == 0 and model.batcher.admitted_images == 1
        gate.set()
        response, _ = await first
        return response

    try:
        response = asyncio.run(main())
    finally:
        gate.set()
        model.close()
    assert len(orjson.loads(response)["predictions"]) == 1
    assert gated.batch_sizes == [1], "the expired request reached the model"
    assert counter(prometheus.CANCELLED, "queue") - queue_before == 3
    assert counter(prometheus.LATE) == late_before


@pytest.mark.parametrize("how", ["its time came", "expired by the time limit"])
def test_a_request_timing_out_inside_the_model_is_counted_late(
    direct_detector, random_tiny_model_dir, png, how
):
    """A request whose deadline passes while the model holds its images is counted in LATE, once per
    image; one whose deadline has not passed is not. The model is held at a gate and the deadline runs on
    a clock the test sets (or is expired as ``predict`` expires it at ``--request_timeout_s``), so the
    deadline passes exactly while the model runs, whatever the machine's speed."""
    gate = threading.Event()
    gated = GatedDetector(direct_detector, gate)
    options = ServingOptions(
        model_dir=str(random_tiny_model_dir),
        max_batch_size=4,
        batch_wait_ms=0,
        model_calls_in_flight=ONE_CALL,
    )
    model = SSDPredictor("ssd", options, detector=gated)
    assert model.load()
    now = [100.0]

    def clock() -> float:
        return now[0]

    async def through_the_gate(body: dict, deadline: Deadline, pass_it: bool):
        gate.clear()
        gated.entered.clear()
        parsed = await model.preprocess(body, headers={})
        work = asyncio.ensure_future(model._detect(parsed, deadline))
        await model_entered(gated)
        assert not deadline.expired(), "the deadline passed before the model call"
        if pass_it:
            if how == "its time came":
                now[0] = deadline.at
            else:
                deadline.expire()
        gate.set()
        return await asyncio.gather(work, return_exceptions=True)

    async def main():
        before = counter(prometheus.LATE)
        await through_the_gate({"instances": [png]}, Deadline(now[0] + 1.0, clock), pass_it=False)
        on_time = counter(prometheus.LATE) - before
        await through_the_gate({"instances": [png, png]}, Deadline(now[0] + 1.0, clock), pass_it=True)
        late = counter(prometheus.LATE) - before - on_time
        await until(lambda: model.batcher.admitted_images == 0, "the model calls ended")
        return on_time, late

    try:
        on_time, late = asyncio.run(main())
    finally:
        gate.set()
        model.close()
    assert gated.batch_sizes == [1, 2]
    assert (on_time, late) == (0, 2)


def test_close_answers_requests_waiting_for_the_model(direct_detector, random_tiny_model_dir, png):
    gate = threading.Event()
    gated = GatedDetector(direct_detector, gate)
    options = ServingOptions(
        model_dir=str(random_tiny_model_dir),
        max_batch_size=4,
        request_timeout_s=0,
        model_calls_in_flight=ONE_CALL,
    )
    model = SSDPredictor("ssd", options, detector=gated)  # no time limit: only close() can answer
    assert model.load()

    async def main():
        calls = [asyncio.ensure_future(model({"instances": [png]}, headers={})) for _ in range(3)]
        await model_entered(gated)
        await until(lambda: model.batcher.queued_images > 0 or len(gated.batch_sizes) > 1, "a request queued")
        model.close()
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), HANG_GUARD_S)

    try:
        results = asyncio.run(main())
    finally:
        gate.set()
    from predictor.serving.batcher import ShuttingDown
    from predictor.serving.errors import status_of

    assert all(isinstance(r, ShuttingDown) and status_of(r) == 503 for r in results), results
