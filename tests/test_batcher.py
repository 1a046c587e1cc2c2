"""DynamicBatcher with a fake model (no TensorFlow): coalescing, slicing, no padding, shedding, cancellation,
deadlines and shutdown.

Every test runs on a virtual clock (tests/virtual_clock.py): the batching window, deadlines and hang guards
are timers that end at exact virtual times in microseconds of real time, so no outcome depends on the
machine's speed and code that never finishes fails within seconds. Where a test must hold the model inside
a call it holds it on a gate (an event), never with a sleep."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest
from kserve.errors import ServerNotReady
from virtual_clock import FakeTime, VirtualClockLoop, run

from predictor.serving import batcher as batcher_module
from predictor.serving import prometheus
from predictor.serving.batcher import Deadline, DynamicBatcher, Overloaded, RequestTimeout, ShuttingDown

S = 4  # image side
HANG_S = 5.0  # real seconds a held model call waits for its gate before it fails (a hang guard only)


class InlineExecutor(concurrent.futures.Executor):
    """Runs the model call at once on the event loop's thread: no thread, so the virtual clock never
    waits for one and the model's call happens at an exact virtual time."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future


def loop_time() -> float | None:
    """The running loop's (virtual) time on its thread; None in a thread of the model's own pool."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return None


class FakeModel:
    """Echoes each row's identity: ``boxes[i, 0, 0]`` = the image's marker value, scores = thresholds,
    ``num_detections`` = caps. Records every call (with the loop's time ``t`` when run inline); while
    ``gate`` is cleared, calls wait for it."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.fail = fail
        if gate is None:  # open unless the test clears it
            gate = threading.Event()
            gate.set()
        self.gate = gate  # every call waits for it (the test holds the model)
        self.entered = threading.Event()
        self.calls: list[dict[str, np.ndarray]] = []
        self.lock = threading.Lock()

    def __call__(self, images, image_hw, score_threshold, max_detections, **extra):
        with self.lock:
            self.calls.append(
                {
                    "t": loop_time(),
                    "thread": threading.current_thread().name,
                    "extra": {k: v.copy() for k, v in extra.items()},
                    "n": len(images),
                    "markers": [float(image[0, 0, 0]) for image in images],
                    "thr": score_threshold.copy(),
                    "caps": max_detections.copy(),
                    "hw": image_hw.copy(),
                }
            )
        self.entered.set()
        if not self.gate.wait(HANG_S):
            raise RuntimeError("the test never opened the gate")
        if self.fail:
            raise RuntimeError("model exploded")
        b = len(images)
        boxes = np.zeros((b, 3, 4), np.float32)
        boxes[:, 0, 0] = [image[0, 0, 0] for image in images]
        return {
            "boxes": boxes,
            "scores": np.repeat(score_threshold[:, None], 3, axis=1),
            "classes": np.ones((b, 3), np.int32),
            "num_detections": max_detections.copy(),
        }


def make_batcher(model: FakeModel, threaded: bool = False, **kwargs) -> DynamicBatcher:
    """A batcher of ``model``, run inline (``threaded``: in the batcher's own model thread, for tests
    that hold a call on the model's gate)."""
    options = {"max_batch_size": 8, "batch_wait_s": 0.02, "max_queue_images": 64, **kwargs}
    if not threaded:
        options.setdefault("executor", InlineExecutor())
    return DynamicBatcher(model, **options)


def request(markers: list[float], threshold: float = 0.5, cap: int = 3):
    images = [np.full((S, S, 3), m, np.float32) for m in markers]
    n = len(markers)
    return (
        images,
        np.full((n, 2), 10, np.float32),
        np.full(n, threshold, np.float32),
        np.full(n, cap, np.int32),
    )


async def submit(batcher: DynamicBatcher, markers: list[float], threshold: float = 0.5, cap: int = 3):
    with batcher.admit(len(markers)):
        return await batcher.run(*request(markers, threshold, cap))


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    """Ten requests (17 images) arrive at once, up to 8 images a call, oldest first, never split: 1 + 2 + 3
    + 1 at once (the next, 2, would make 9), then 2 + 1 + 3 + 2 = 8 at once, then the last two (2 images)
    when the oldest of them has waited the 20 ms window."""
    model = FakeModel()
    batcher = make_batcher(model)
    sizes = [1, 2, 3, 1, 2, 1, 3, 2, 1, 1]

    async def main():
        jobs = []
        marker = 0
        for i, size in enumerate(sizes):
            markers = [float(marker + k) for k in range(size)]
            marker += size
            jobs.append((markers, 0.1 * (i % 5), 1 + i % 3))
        outs = await asyncio.gather(*(submit(batcher, m, t, c) for m, t, c in jobs))
        return jobs, outs

    jobs, outs = run(main())
    for (markers, threshold, cap), out in zip(jobs, outs, strict=True):
        assert out["boxes"][:, 0, 0].tolist() == markers
        np.testing.assert_allclose(out["scores"][:, 0], threshold, atol=1e-6)
        assert out["num_detections"].tolist() == [cap] * len(markers)
    assert [call["n"] for call in model.calls] == [7, 8, 2]
    assert [call["t"] for call in model.calls] == pytest.approx([0.0, 0.0, 0.02], abs=1e-9)
    seen = [m for call in model.calls for m in call["markers"]]
    assert seen == [float(m) for m in range(sum(sizes))], "every image given to the model once, in order"
    assert batcher.queued_images == 0 and batcher.admitted_images == 0 and batcher.model_calls == 3


def test_the_model_gets_exactly_the_queued_images_no_padding():
    """Buckets are the detector's business: 3 + 3 images make a call of 6 rows (not a bucket of 8), each
    row with its own request's parameters."""
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=8, batch_wait_s=0.05)

    async def main():
        return await asyncio.gather(*(submit(batcher, [float(i)] * 3, 0.1 * i, 1 + i) for i in range(4)))

    run(main())
    assert sorted(m for call in model.calls for m in call["markers"]) == sorted([0.0, 1.0, 2.0, 3.0] * 3)
    for call in model.calls:
        assert call["n"] in (3, 6) and call["n"] == len(call["markers"]) == len(call["thr"])
        assert len(call["caps"]) == len(call["hw"]) == call["n"] and (call["caps"] > 0).all()
        for marker, thr, cap in zip(call["markers"], call["thr"], call["caps"], strict=True):
            assert thr == pytest.approx(0.1 * marker) and cap == 1 + marker


async def until(condition, what: str) -> None:
    """Yield to the event loop until ``condition()``; the deadline (120 s of the loop's clock, virtual
    while no thread works) only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not condition():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.005)


def test_a_lone_request_waits_for_the_batching_window_then_runs_alone():
    model = FakeModel()
    batcher = make_batcher(model, batch_wait_s=0.05)

    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.0)  # the window counts from the request's arrival, not the loop's start
        await submit(batcher, [1.0])
        return loop.time()

    assert run(main()) == pytest.approx(1.05, abs=1e-9)
    assert [(call["n"], call["t"]) for call in model.calls] == [(1, pytest.approx(1.05, abs=1e-9))]


def test_requests_arriving_within_the_window_join_the_oldest_ones_call():
    """The window counts from the oldest queued request: one arriving 30 ms later (of a 50 ms window)
    joins its call at 50 ms, and one arriving after it opens the next window."""
    model = FakeModel()
    batcher = make_batcher(model, batch_wait_s=0.05)

    async def later(delay: float, marker: float):
        await asyncio.sleep(delay)
        return await submit(batcher, [marker])

    async def main():
        return await asyncio.gather(later(0.0, 1.0), later(0.03, 2.0), later(0.06, 3.0))

    outs = run(main())
    assert [out["boxes"][0, 0, 0] for out in outs] == [1.0, 2.0, 3.0]
    assert [(call["markers"], call["t"]) for call in model.calls] == [
        ([1.0, 2.0], pytest.approx(0.05, abs=1e-9)),
        ([3.0], pytest.approx(0.11, abs=1e-9)),
    ]


def test_a_full_batch_does_not_wait_for_the_window():
    model = FakeModel()
    batcher = make_batcher(model, batch_wait_s=3600.0)  # a full batch that waited would wait an hour

    async def main():
        loop = asyncio.get_running_loop()
        out = await asyncio.gather(submit(batcher, [1.0] * 5), submit(batcher, [2.0] * 3))
        return out, loop.time()

    (five, three), now = run(main())
    assert five["boxes"][:, 0, 0].tolist() == [1.0] * 5 and three["boxes"][:, 0, 0].tolist() == [2.0] * 3
    assert [(call["n"], call["t"]) for call in model.calls] == [(8, 0.0)] and now == 0.0


def test_admission_sheds_load_and_recovers():
    batcher = make_batcher(FakeModel(), max_queue_images=4)
    with batcher.admit(3):
        with pytest.raises(Overloaded, match="3 images in progress, the limit is 4"), batcher.admit(2):
            pass
        with batcher.admit(1):
            assert batcher.admitted_images == 4
    assert batcher.admitted_images == 0
    with batcher.admit(10):  # bigger than the limit, but nothing else is in progress
        pass
    error = Overloaded("overloaded: x")
    assert isinstance(error, ServerNotReady) and error.reason == str(error) == "overloaded: x"
    assert isinstance(RequestTimeout("t"), Overloaded)


def test_a_request_cancelled_while_queued_leaves_the_queue():
    model = FakeModel()
    batcher = make_batcher(model, threaded=True, max_batch_size=2, batch_wait_s=0.0)

    async def main():
        model.gate.clear()
        first = asyncio.create_task(submit(batcher, [1.0, 2.0]))  # a full batch: into the model, held
        await until(lambda: len(model.calls) == 1, "the first batch to reach the model")
        second = asyncio.create_task(submit(batcher, [99.0]))
        await until(lambda: batcher.queued_images == 1, "the second request to be queued")
        second.cancel()  # what a time limit or a client that went away does
        with pytest.raises(asyncio.CancelledError):
            await second
        assert batcher.queued_images == 0 and batcher.admitted_images == 2
        model.gate.set()
        assert (await first)["boxes"][:, 0, 0].tolist() == [1.0, 2.0]
        return await submit(batcher, [3.0])

    last = run(main())
    assert last["boxes"][0, 0, 0] == 3.0
    assert [call["n"] for call in model.calls] == [2, 1], "the cancelled request reached the model"
    assert batcher.admitted_images == 0


#: Warm-up timings of a compute-bound model (a CPU: a call's time grows with its bucket) and of a
#: latency-bound one (a GPU: a bucket of 16 takes about what one of 8 does).
CPU_TIMINGS = {1: 0.01, 2: 0.02, 4: 0.04, 8: 0.08, 16: 0.16}
GPU_TIMINGS = {1: 0.009, 2: 0.009, 4: 0.0095, 8: 0.010, 16: 0.0105}


@pytest.mark.parametrize(
    ("timings", "sizes", "taken"),
    [
        (CPU_TIMINGS, [1] * 9, 8),  # 9 as 16 pads 7 images; as 8 it leaves 1: the 9th leads the next call
        (CPU_TIMINGS, [1] * 10, 8),  # pads 6, leaves 2
        (CPU_TIMINGS, [1] * 12, 8),  # pads 4, leaves 4: 8 + 4 compute 12 images, not 16
        (CPU_TIMINGS, [1] * 3, 2),  # pads 1, leaves 1
        (CPU_TIMINGS, [1] * 7, 7),  # pads 1, would leave 3
        (CPU_TIMINGS, [1] * 13, 13),  # pads 3, would leave 5
        (CPU_TIMINGS, [1] * 15, 15),
        (CPU_TIMINGS, [1] * 16, 16),
        (CPU_TIMINGS, [3, 3, 3], 2),  # 9 as 16 pads 7; the first two (6, bucket 8) leave 3
        (CPU_TIMINGS, [2, 3], 1),  # 5 as 8 pads 3, the first alone leaves 3
        (CPU_TIMINGS, [3, 2], 1),  # 5 as 8 pads 3; the first (3, bucket 4) leaves 2
        (CPU_TIMINGS, [5, 1], 2),  # nothing fits the bucket below (4): as it is
        (CPU_TIMINGS, [5], 1),  # one request is never split, however badly it fills its bucket
        (GPU_TIMINGS, [1] * 9, 9),  # a call of 16 takes 1.05x one of 8: padding is cheap
        (GPU_TIMINGS, [3, 3, 3], 3),
        ({}, [1] * 9, 9),  # nothing timed: everything taken runs
        # buckets 8 and 13 (--max_batch_size 13): 11 as 13 pads 2; 8 + 3 would leave 3 (more than 2)
        ({4: 0.04, 8: 0.08, 13: 0.13}, [1] * 11, 11),
        # 10 as 13 pads 3, 8 + 2 leave 2 but run as 8 + 4 = 12 <= 13 images computed
        ({2: 0.02, 4: 0.04, 8: 0.08, 13: 0.13}, [1] * 10, 8),
        # buckets 4, 5, 8: 6 as 8 pads 2, 5 + 1 leave 1, but would run as 5 + 4 = 9 > 8 images: as it is
        ({4: 0.04, 5: 0.05, 8: 0.08}, [1] * 6, 6),
        ({1: 0.01, 2: 0.02, 4: 0.04, 8: 0.08, 16: 0.11}, [1] * 9, 9),  # 16 takes only 1.4x as long as 8
        ({8: 1.0, 16: 1.5}, [1] * 9, 8),  # exactly 1.5x: padding costs
        ({2: 0.02, 4: 0.04}, [1] * 3, 2),  # 3 between the two smallest buckets: as 2 + 1
        ({4: 4.0, 8: 8.0, 12: 12.0}, [1] * 10, 8),  # 8 + 2 run as 8 + 4 = 12: exactly the 12 of one call
    ],
)
def test_a_call_that_would_pad_as_much_as_it_leaves_takes_the_oldest_requests(timings, sizes, taken):
    batcher = make_batcher(FakeModel(), max_batch_size=16, bucket_seconds=timings)
    assert batcher._efficient_prefix(sizes) == taken


async def nine_queued_behind_a_held_call(batcher: DynamicBatcher, model: FakeModel) -> tuple:
    """One request (marker 100) reaches the model, which holds it while nine one-image requests
    (markers 0-8) queue; then the model goes on. Returns (first answer, the nine answers)."""
    model.gate.clear()
    first = asyncio.create_task(submit(batcher, [100.0]))
    await until(lambda: len(model.calls) == 1, "the first request to reach the model")
    queued = [asyncio.create_task(submit(batcher, [float(k)])) for k in range(9)]
    await until(lambda: batcher.queued_images == 9, "nine requests to be queued")
    model.gate.set()
    return await first, await asyncio.gather(*queued)


@pytest.mark.parametrize(("timings", "calls"), [(CPU_TIMINGS, [1, 8, 1]), (GPU_TIMINGS, [1, 9])])
def test_requests_a_bucket_would_fill_badly_lead_the_next_call(timings, calls):
    """Nine one-image requests queue while the model holds a call: on a CPU the next call takes the
    eight oldest (a bucket of 8, no padding) and the ninth runs next; on a GPU all nine run at once.
    Every request gets its own row either way."""
    model = FakeModel()
    batcher = make_batcher(model, threaded=True, max_batch_size=16, batch_wait_s=0.0, bucket_seconds=timings)

    first, rest = run(nine_queued_behind_a_held_call(batcher, model))
    assert [call["n"] for call in model.calls] == calls
    assert [m for call in model.calls for m in call["markers"]] == [100.0, *map(float, range(9))]  # FIFO
    assert {call["thread"] for call in model.calls} == {"ssd-model_0"}  # the batcher's own model thread
    assert first["boxes"][0, 0, 0] == 100.0
    assert [r["boxes"][0, 0, 0] for r in rest] == list(map(float, range(9)))
    assert batcher.queued_images == 0 and batcher.admitted_images == 0


def test_a_failing_model_call_fails_only_its_batch():
    model = FakeModel(fail=True)
    batcher = make_batcher(model)

    async def main():
        results = await asyncio.gather(submit(batcher, [1.0]), submit(batcher, [2.0]), return_exceptions=True)
        model.fail = False
        return results, await submit(batcher, [3.0])

    results, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after["boxes"][0, 0, 0] == 3.0


def test_a_model_answering_other_row_counts_fails_its_batch():
    """A model that returned padding rows (or lost some) would hand requests wrong rows: refused."""

    def padded_model(images, image_hw, score_threshold, max_detections):
        return {"num_detections": np.zeros(len(images) + 1, np.int32)}

    batcher = make_batcher(padded_model)
    with pytest.raises(RuntimeError, match="rows for 1 images"):
        run(submit(batcher, [1.0]))


def test_requests_larger_than_a_batch_are_refused():
    batcher = make_batcher(FakeModel(), max_batch_size=2)
    with pytest.raises(ValueError, match=r"expected 1\.\.2"):
        run(batcher.run(*request([1.0, 2.0, 3.0])))


def test_the_worker_restarts_on_a_new_event_loop():
    model = FakeModel()
    batcher = make_batcher(model)
    workers = []
    for marker in (1.0, 2.0):
        out = run(submit(batcher, [marker]))
        assert out["boxes"][0, 0, 0] == marker
        workers.append(batcher._worker)
    assert workers[0] is not workers[1] and workers[1].get_name() == "ssd-batcher"  # named in task dumps


def markers_seen(model: FakeModel) -> list[int]:
    return [int(v) for call in model.calls for v in call["caps"][: call["n"]]]


async def model_entered(model: FakeModel) -> None:
    """Wait until the model thread is inside a call."""
    await until(model.entered.is_set, "the model thread to enter a call")


def cancelled(stage: str) -> float:
    return prometheus.CANCELLED.labels(stage)._value.get()


def test_a_request_whose_deadline_is_expired_leaves_the_queue_unseen_by_the_model():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make_batcher(model, threaded=True, max_batch_size=2, batch_wait_s=0.0)
    before = cancelled("queue")

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0], cap=1))
        await model_entered(model)  # the model holds request 1
        deadline = Deadline()
        late = asyncio.create_task(batcher.run(*request([2.0, 2.0], cap=2), deadline=deadline))
        await asyncio.sleep(0)
        assert batcher.queued_images == 2
        deadline.expire()  # what predict() does when --request_timeout_s passes
        with pytest.raises(RequestTimeout, match="deadline passed"):
            await late
        assert batcher.queued_images == 0
        gate.set()
        await first
        await submit(batcher, [3.0], cap=3)

    try:
        run(main())
    finally:
        gate.set()
    assert markers_seen(model) == [1, 3], "the expired request reached the model"
    assert cancelled("queue") - before == 2


def test_a_deadline_that_passes_while_queued_is_dropped_when_the_batch_is_formed():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make_batcher(model, threaded=True, max_batch_size=4, batch_wait_s=0.0)
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731  (a fake clock: the test moves time)

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0], cap=1))
        await model_entered(model)
        late = asyncio.create_task(batcher.run(*request([2.0], cap=2), deadline=Deadline(110.0, clock)))
        on_time = asyncio.create_task(batcher.run(*request([3.0], cap=3), deadline=Deadline(1000.0, clock)))
        await asyncio.sleep(0)
        now[0] = 120.0  # request 2's deadline passes while the model is busy with request 1
        gate.set()
        await first
        with pytest.raises(RequestTimeout):
            await late
        return await on_time

    try:
        out = run(main())
    finally:
        gate.set()
    assert out["num_detections"].tolist() == [3]
    assert markers_seen(model) == [1, 3]


def test_a_request_already_past_its_deadline_is_not_queued():
    model = FakeModel()
    batcher = make_batcher(model)
    with pytest.raises(RequestTimeout):
        run(batcher.run(*request([1.0]), deadline=Deadline(0.0, lambda: 1.0)))
    assert model.calls == [] and batcher.queued_images == 0


def test_shutdown_answers_queued_and_running_requests_and_refuses_new_ones():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make_batcher(model, threaded=True, max_batch_size=2, batch_wait_s=0.0)

    async def main():
        running = asyncio.create_task(submit(batcher, [1.0, 1.0]))
        await model_entered(model)
        queued = [asyncio.create_task(submit(batcher, [m])) for m in (2.0, 3.0, 4.0)]
        await asyncio.sleep(0)
        batcher.shutdown()
        assert batcher.queued_images == 0 and not batcher._queue and not batcher._running  # at once
        batcher.shutdown()  # again (a second signal): nothing left to answer, no error
        # Hang guard only: every future must already be answered, with no model progress.
        results = await asyncio.wait_for(asyncio.gather(running, *queued, return_exceptions=True), 60)
        with pytest.raises(ShuttingDown):
            await submit(batcher, [5.0])
        return results

    try:
        results = run(main())
    finally:
        gate.set()
    assert len(results) == 4
    assert all(isinstance(r, ShuttingDown) and isinstance(r, Overloaded) for r in results), results
    assert {str(r) for r in results} == {"the server is shutting down; retry on another replica"}
    assert batcher.admitted_images == 0 and batcher.queued_images == 0
    assert [call["n"] for call in model.calls] == [2]  # only the call already running


def test_shutdown_from_another_thread_answers_the_waiting_requests():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make_batcher(model, threaded=True, max_batch_size=1, batch_wait_s=0.0)

    async def main():
        running = asyncio.create_task(submit(batcher, [1.0]))
        await model_entered(model)
        queued = asyncio.create_task(submit(batcher, [2.0]))
        await asyncio.sleep(0)
        # e.g. the main thread after the server stopped: the requests are answered on the loop's thread
        # (debug mode: answering them from this thread would raise)
        await asyncio.to_thread(batcher.shutdown)
        return await asyncio.wait_for(asyncio.gather(running, queued, return_exceptions=True), 60)

    try:
        results = run(main(), debug=True)
    finally:
        gate.set()
    assert all(isinstance(r, ShuttingDown) for r in results), results


def test_admission_bounds_the_model_time_admitted():
    batcher = make_batcher(FakeModel(), max_queue_images=64, max_queue_delay_s=0.5)
    with batcher.admit(30), batcher.admit(30):  # no rate measured yet: only the image bound applies
        pass
    batcher._observe_call(10, 1.0)  # the model did 10 images in 1 s
    assert batcher.images_per_second == 10.0
    with batcher.admit(20):  # alone: always admitted, even at 2 s of model time
        pass
    with batcher.admit(3):
        with (
            pytest.raises(
                Overloaded, match=r"3 images in progress take 0\.30 s of model time, the limit is 0\.5 s"
            ),
            batcher.admit(3),
        ):
            pass
        with batcher.admit(2):  # 5 images = 0.5 s: just fits
            assert batcher.refusal(1) is not None
    assert batcher.refusal(1) is None
    batcher._observe_call(30, 1.0)  # faster calls raise the rate (moving average)
    assert 10.0 < batcher.images_per_second < 30.0


def test_a_standing_queue_tightens_the_bound_and_a_drained_one_relaxes_it():
    batcher = make_batcher(FakeModel(), max_batch_size=4, max_queue_images=64, shed_standing_queue=True)
    batcher._observe_call(4, 0.1)  # calls of 4 images in 0.1 s: 40 images/s, standing limit 8
    assert batcher.standing_limit == 8
    with batcher.admit(4):
        assert batcher.refusal(12) is None  # a burst of 16 images (0.4 s) is absorbed
        batcher.note_wait(0.3, now=10.0)  # waited over two calls (0.2 s) ...
        assert batcher.refusal(61) is not None  # ... and the image bound (64) refuses
        batcher.note_wait(0.3, now=10.9)
        assert not batcher.standing_queue  # ... for less than max(1 s, 4 calls): a burst
        batcher.note_wait(0.15, now=11.0)  # within two calls: the clock restarts
        batcher.note_wait(0.5, now=11.1)
        assert batcher.refusal(61) is not None  # the image bound refuses during this backlog
        batcher.note_wait(0.5, now=12.1)  # a backlog for 1 s: a standing queue
        assert batcher.standing_queue
        assert batcher.refusal(4) is None and "until the queue drains" in batcher.refusal(5)
        batcher.note_wait(0.15, now=12.2)  # no backlog, but still waited over one call
        assert batcher.standing_queue
        batcher.note_wait(0.05, now=12.3)  # waited less than one call, within the first second:
        assert batcher.standing_queue  # a short wait under the bound is the bound working
        for _ in range(30):  # the bound admits 30 images and refused 5: 35 in this window of 1.1 s
            with batcher.admit(1):
                pass
        batcher.note_wait(0.05, now=13.2)  # ... below the model's 40 images/s: the load fits, drained
        assert not batcher.standing_queue and batcher.refusal(12) is None


def recognise_standing_queue(batcher: DynamicBatcher, admitted: int, refused: int) -> None:
    """Calls of 4 images in 0.1 s; a request waits 0.5 s (five calls) at t=10 and again at t=11 while,
    with ``admitted`` images in progress, ``refused`` more are refused by the image bound: a standing
    queue from t=11."""
    batcher._observe_call(4, 0.1)
    batcher.note_wait(0.5, now=10.0)
    with batcher.admit(admitted):
        assert batcher.refusal(refused) is not None  # the image bound refuses
    batcher.note_wait(0.5, now=11.0)
    assert batcher.standing_queue


def test_a_standing_queue_lasts_while_its_bound_keeps_refusing():
    """Under the bound requests wait about one call; that alone must not end the standing state while
    more is offered than the model does (it did: the bound flapped off and 256 images queued again).
    A window in which no more images came than the model's rate ends it, refusals or not (a load back
    at capacity still meets the tight bound with its bursts)."""
    batcher = make_batcher(FakeModel(), max_batch_size=4, max_queue_images=64, shed_standing_queue=True)
    recognise_standing_queue(batcher, admitted=4, refused=61)
    for k in range(1, 13):  # 3 s of short waits; each 0.25 s 12 images offered: 48/s, the model does 40
        with batcher.admit(1):
            pass
        with batcher.admit(8):
            for _ in range(3):
                assert batcher.refusal(1) is not None
        batcher.note_wait(0.05, now=11.0 + 0.25 * k)
        assert batcher.standing_queue
    # the window restarted at 14.0; now 21 + 17 = 38 images in 1 s, below 40/s: its end ends it
    for k in range(1, 4):
        for _ in range(20 // 3 + 1):
            with batcher.admit(1):
                pass
        batcher.note_wait(0.05, now=14.0 + 0.25 * k)
        assert batcher.standing_queue
    with batcher.admit(16):
        assert batcher.refusal(1) is not None
    batcher.note_wait(0.05, now=15.0)
    assert not batcher.standing_queue


def test_under_a_standing_queue_two_calls_of_the_efficient_bucket_are_admitted():
    """Rates per bucket (images / s): 1: 10, 2: 20, 4: 36, 8: 38. The smallest within 10% of the best
    (38) is 4: calls of 4 take 0.11 s instead of 0.21 s for 8 and run at 95% of the rate."""
    timings = {1: 0.1, 2: 0.1, 4: 4 / 36, 8: 8 / 38}
    batcher = make_batcher(FakeModel(), max_batch_size=8, shed_standing_queue=True, bucket_seconds=timings)
    assert batcher.efficient_bucket() == 4 and batcher.standing_limit == 8
    # calls timed while serving do not move the choice: slowed by decoding, and only of the sizes run
    # (compared with the other sizes' warm-up timings they made the bound drift)
    for _ in range(20):
        batcher._observe_call(4, 4 / 10)
    assert batcher.efficient_bucket() == 4 and batcher.standing_limit == 8
    assert batcher.images_per_second is not None and batcher.images_per_second < 11  # the rate does move
    assert make_batcher(FakeModel(), max_batch_size=8).efficient_bucket() is None  # nothing timed yet


def test_recognising_a_standing_queue_sheds_the_oldest_queued_requests_past_the_bound():
    """Five queued requests of 2 images (10 images) and a bound of 8: the oldest one gets 503 at once,
    the four youngest stay queued (the backlog of the burst allowance is not served seconds late)."""
    loop = asyncio.new_event_loop()
    try:
        batcher = make_batcher(
            FakeModel(),
            max_batch_size=4,
            max_queue_images=10,
            shed_standing_queue=True,
            bucket_seconds={4: 0.1},
        )
        assert batcher.standing_limit == 8
        items = []
        for k in range(5):
            images, hw, thr, caps = request([k, k])
            items.append(batcher_module._Item(images, hw, thr, caps, loop.create_future(), enqueued=float(k)))
            batcher._queue.append(items[-1])
            batcher._queued_images += 2
        recognise_standing_queue(batcher, admitted=10, refused=1)
        assert isinstance(items[0].future.exception(), Overloaded) and not items[0].queued
        assert "shed from a standing queue" in str(items[0].future.exception())
        assert list(batcher._queue) == items[1:] and batcher.queued_images == 8
        assert not any(item.future.done() for item in items[1:])
    finally:
        loop.close()


def test_a_deep_queue_that_never_fills_the_image_bound_is_never_shed():
    """Many clients each waiting for their answer keep requests waiting for several calls, for as
    long as they run; the plain bound serves them without a 503, so the tight one must too."""
    batcher = make_batcher(FakeModel(), max_batch_size=4, max_queue_images=64, shed_standing_queue=True)
    batcher._observe_call(4, 0.1)
    with batcher.admit(40):  # 10 calls of work in progress, below the image bound
        for k in range(100):  # 10 s of requests waiting 5 calls
            batcher.note_wait(0.5, now=10.0 + 0.1 * k)
            assert not batcher.standing_queue
            assert batcher.refusal(4) is None


def test_standing_queue_shedding_is_off_by_default():
    batcher = make_batcher(FakeModel(), max_batch_size=4)
    batcher._observe_call(4, 0.1)
    for now in (10.0, 11.0, 12.0, 13.0):
        batcher.note_wait(5.0, now=now)
    assert not batcher.standing_queue


# ---------------------------------------------------------------------------------------- exact values
def metric(m, *labels: str) -> float:
    """A counter's or gauge's value, or a histogram's sum (``_sum``)."""
    m = m.labels(*labels) if labels else m
    return (m._sum if hasattr(m, "_sum") else m._value).get()


def histogram_count(h) -> float:
    """Observations of a histogram (its +Inf bucket)."""
    return sum(b.get() for b in h._buckets)


def test_deadline_after_expires_at_exactly_its_time_and_runs_each_callback_once():
    now = [10.0]
    clock = lambda: now[0]  # noqa: E731
    assert Deadline.after(None, clock).at is None and Deadline.after(0, clock).at is None
    deadline = Deadline.after(2.5, clock)
    assert deadline.at == 12.5
    now[0] = 12.499
    assert not deadline.expired()
    now[0] = 12.5
    assert deadline.expired()
    now[0] = 1e12
    assert not Deadline(None, clock).expired()  # only expire() ends it
    assert not Deadline.after(3600.0).expired()  # the default clock is time.monotonic
    assert Deadline.after(-1.0).expired()

    calls = []
    manual = Deadline(None, clock)
    manual.on_expire(lambda: calls.append("a"))
    remove_b = manual.on_expire(lambda: calls.append("b"))
    manual.on_expire(lambda: calls.append("c"))
    remove_b()
    remove_b()  # a second removal is harmless
    manual.expire()
    manual.expire()  # once
    assert calls == ["a", "c"] and manual.expired()


def test_admission_counts_images_in_progress_and_the_gauge_to_the_exact_limit():
    batcher = make_batcher(FakeModel(), max_queue_images=4)
    assert batcher.refusal(100) is None  # nothing admitted: anything is
    with batcher.admit(3):
        assert batcher.admitted_images == 3 and metric(prometheus.QUEUE_IMAGES) == 3
        assert batcher.refusal(1) is None  # 3 + 1 = the limit: admitted
        assert batcher._full_refusals == 0
        assert batcher.refusal(2) == (
            "overloaded: 3 images in progress, the limit is 4 (--max_queue_images); retry later"
        )
        assert batcher._full_refusals == 1  # what recognises a standing queue
        with batcher.admit(1):
            assert batcher.admitted_images == 4 and metric(prometheus.QUEUE_IMAGES) == 4
        assert metric(prometheus.QUEUE_IMAGES) == 3
        with pytest.raises(Overloaded) as refused, batcher.admit(2):
            pass
        assert refused.value.reason == batcher.refusal(2)
    assert batcher.admitted_images == 0 and metric(prometheus.QUEUE_IMAGES) == 0


def test_the_model_time_bound_is_off_at_zero_and_its_message_exact():
    unbounded = make_batcher(FakeModel(), max_queue_images=64, max_queue_delay_s=0.0)
    unbounded._observe_call(1, 1.0)  # 1 image/s: 60 images are a minute of model time
    with unbounded.admit(30):
        assert unbounded.refusal(30) is None
    bounded = make_batcher(FakeModel(), max_queue_images=64, max_queue_delay_s=0.25)
    bounded._observe_call(8, 2.0)  # 4 images/s
    with bounded.admit(1):
        assert bounded.refusal(0) is None  # 1 image: 0.25 s, the limit
        assert bounded.refusal(1) == (
            "overloaded: 1 images in progress take 0.25 s of model time, the limit is 0.25 s "
            "(--max_queue_delay_ms); retry later"
        )
        assert bounded._full_refusals == 0  # not the image bound


def test_the_rate_is_a_moving_average_of_images_and_seconds():
    batcher = make_batcher(FakeModel())
    assert batcher.images_per_second is None
    batcher._observe_call(10, 1.0)  # the first call sets both
    assert (batcher._ewma_images, batcher._ewma_seconds, batcher.images_per_second) == (10.0, 1.0, 10.0)
    batcher._observe_call(30, 2.0)  # then each moves a fifth of the way: 14 images in 1.2 s
    assert batcher._ewma_images == pytest.approx(14.0) and batcher._ewma_seconds == pytest.approx(1.2)
    assert batcher.images_per_second == pytest.approx(14.0 / 1.2)


def test_the_standing_limit_before_any_timing_is_two_recent_calls_at_least_a_full_one():
    assert make_batcher(FakeModel(), max_batch_size=1).standing_limit == 1  # nothing timed: one batch
    batcher = make_batcher(FakeModel(), max_batch_size=4)
    assert batcher.efficient_bucket() is None and batcher.standing_limit == 4
    assert batcher.standing_queue is False
    batcher._observe_call(1, 0.1)
    assert batcher.standing_limit == 4  # two calls of 1 image: less than a full batch
    batcher._observe_call(11, 0.1)  # the average call: 1 + 0.2 * 10 = 3 images
    assert batcher.standing_limit == 6


@pytest.mark.parametrize(
    ("timings", "bucket"),
    [
        ({9: 1.0, 10: 1.0}, 9),  # 9 images/s is exactly 90% of the best 10: efficient
        ({9: 1.0, 10: 0.99}, 10),  # 10.1/s: 9 is below 90% of it
        ({1: 0.0, 2: 0.1, 4: 0.2}, 2),  # an untimed (0 s) bucket is ignored; 2 and 4 both do 20/s
        ({4: 0.0}, None),
    ],
)
def test_the_efficient_bucket_is_the_smallest_within_a_tenth_of_the_best_rate(timings, bucket):
    batcher = make_batcher(FakeModel(), max_batch_size=16, bucket_seconds=timings)
    assert batcher.efficient_bucket() == bucket
    if bucket is not None:
        assert batcher.standing_limit == 2 * bucket


def standing_batcher(call_s: float = 0.1) -> DynamicBatcher:
    """Calls of 4 images in ``call_s`` seconds, shedding on, nothing timed by a warm-up."""
    batcher = make_batcher(FakeModel(), max_batch_size=4, max_queue_images=64, shed_standing_queue=True)
    batcher._observe_call(4, call_s)
    return batcher


def test_a_standing_queue_starts_when_the_backlog_lasts_exactly_its_hold_time(caplog):
    """Calls of 0.5 s: a wait counts as a backlog above 2 calls (1 s), and the backlog must last
    max(1 s, 4 calls) = 2 s with the image bound refusing since it began."""
    batcher = standing_batcher(call_s=0.5)
    batcher.note_wait(1.0, now=10.0)  # exactly two calls: no backlog
    assert batcher._waiting_since is None
    batcher.note_wait(1.01, now=10.0)
    assert batcher._waiting_since == 10.0
    with batcher.admit(60):
        assert batcher.refusal(5) is not None
    batcher.note_wait(1.01, now=11.99)
    assert not batcher.standing_queue
    with caplog.at_level("INFO", logger=batcher_module.__name__):
        batcher.note_wait(1.01, now=12.0)
    assert batcher.standing_queue and batcher.standing_limit == 8
    assert batcher._window == (12.0, 0)
    assert caplog.messages == [
        "standing queue: admitting at most 8 images until it drains; 0 queued images shed"
    ]


def test_refusals_from_before_the_backlog_do_not_start_a_standing_queue():
    batcher = standing_batcher()
    with batcher.admit(60):
        assert batcher.refusal(5) is not None  # refused before the backlog
    batcher.note_wait(0.3, now=10.0)
    batcher.note_wait(0.3, now=11.0)
    assert not batcher.standing_queue
    with batcher.admit(60):
        assert batcher.refusal(5) is not None  # refused during it
    batcher.note_wait(0.3, now=11.5)
    assert batcher.standing_queue


def test_no_standing_queue_before_a_call_was_timed():
    batcher = make_batcher(FakeModel(), max_batch_size=4, max_queue_images=64, shed_standing_queue=True)
    with batcher.admit(60):
        assert batcher.refusal(5) is not None
    for now in (10.0, 11.0, 12.0):
        batcher.note_wait(100.0, now=now)
    assert not batcher.standing_queue and batcher._waiting_since is None


def in_standing_queue(offered_in_window: int) -> DynamicBatcher:
    """A standing queue recognised at t=11 (40 images/s, calls of 0.1 s), then ``offered_in_window``
    images admitted under its bound before a short wait at t=12."""
    batcher = standing_batcher()
    recognise_standing_queue(batcher, admitted=4, refused=61)
    start, offered = batcher._window
    assert start == 11.0
    for _ in range(offered_in_window):
        with batcher.admit(1):
            pass
    assert batcher._offered_images - offered == offered_in_window
    return batcher


def test_a_standing_queue_ends_when_a_window_was_offered_at_most_the_models_rate(caplog):
    batcher = in_standing_queue(40)  # 40 images in 1 s: exactly the rate
    batcher.note_wait(0.1, now=12.0)  # waited one call: not less than one call
    assert batcher.standing_queue
    batcher.note_wait(0.09, now=11.99)  # short, but the window (1 s) is not over
    assert batcher.standing_queue
    caplog.clear()
    with caplog.at_level("INFO", logger=batcher_module.__name__):
        batcher.note_wait(0.09, now=12.0)
    assert not batcher.standing_queue and caplog.messages == ["the queue drained"]
    assert batcher._window == (12.0, batcher._offered_images)

    busier = in_standing_queue(41)  # 41 images in 1 s: more than the model does
    busier.note_wait(0.09, now=12.0)
    assert busier.standing_queue is True and busier._window == (12.0, busier._offered_images)
    busier.note_wait(0.09, now=13.0)  # nothing offered in the next window
    assert busier.standing_queue is False

    longer = in_standing_queue(80)  # 80 images in a window of 2 s: the model's 40/s
    longer.note_wait(0.09, now=13.0)
    assert longer.standing_queue is False
    longest = in_standing_queue(81)
    longest.note_wait(0.09, now=13.0)
    assert longest.standing_queue is True


def test_refusals_by_the_tight_bound_count_as_offered():
    batcher = in_standing_queue(0)
    offered = batcher._offered_images
    with batcher.admit(8):
        assert batcher.refusal(3) == (
            "overloaded: more is offered than the model can do; 8 images in progress, the limit is 8 until "
            "the queue drains; retry later"
        )
    assert batcher._offered_images == offered + 8 + 3


def test_shedding_a_backlog_logs_the_images_shed(caplog):
    loop = asyncio.new_event_loop()
    try:
        batcher = make_batcher(
            FakeModel(),
            max_batch_size=4,
            max_queue_images=12,
            shed_standing_queue=True,
            bucket_seconds={4: 0.1},
        )
        items = []
        for k, n in enumerate([3, 2, 1, 4, 2]):  # 12 images queued, the bound is 8
            images, hw, thr, caps = request([float(k)] * n)
            items.append(batcher_module._Item(images, hw, thr, caps, loop.create_future(), enqueued=float(k)))
            batcher._queue.append(items[-1])
            batcher._queued_images += n
        with caplog.at_level("WARNING", logger=batcher_module.__name__):
            recognise_standing_queue(batcher, admitted=12, refused=1)
        assert caplog.messages == [
            "standing queue: admitting at most 8 images until it drains; 5 queued images shed"
        ]
        assert [item.future.done() for item in items] == [True, True, False, False, False]
        assert batcher.queued_images == 7 and list(batcher._queue) == items[2:]
    finally:
        loop.close()


def test_zero_images_are_refused_and_the_model_gets_every_parameter_as_its_dtype():
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=3)
    with pytest.raises(ValueError, match=r"^0 images per request, expected 1\.\.3$"):
        run(batcher.run([], np.zeros((0, 2)), np.zeros(0), np.zeros(0)))
    timing: dict[str, int] = {}

    async def main():
        one = batcher.run(
            *request([1.0]), extra={"nms_threshold": np.array([0.25], np.float32)}, timing=timing
        )
        images, _, _, _ = request([2.0, 3.0])
        two = batcher.run(
            images,
            np.array([[480, 640], [10, 20]], np.int64),  # not float32: converted for the model
            np.array([0.125, 0.5], np.float64),
            np.array([7, 9], np.int64),
            extra={"nms_threshold": np.array([0.5, 0.75], np.float32)},
        )
        return await asyncio.gather(one, two)

    before = time.time_ns()
    one, two = run(main())
    (call,) = model.calls
    assert call["markers"] == [1.0, 2.0, 3.0]
    assert call["hw"].dtype == np.float32 and call["hw"].tolist() == [[10, 10], [480, 640], [10, 20]]
    assert call["thr"].dtype == np.float32 and call["thr"].tolist() == [0.5, 0.125, 0.5]
    assert call["caps"].dtype == np.int32 and call["caps"].tolist() == [3, 7, 9]
    assert call["extra"]["nms_threshold"].tolist() == [0.25, 0.5, 0.75]
    assert two["num_detections"].tolist() == [7, 9] and one["num_detections"].tolist() == [3]
    assert set(timing) == {"enqueued", "batch_start", "model_start", "model_end", "batch_images"}
    assert timing["batch_images"] == 3
    assert (
        before <= timing["enqueued"] <= timing["batch_start"] <= timing["model_start"] <= timing["model_end"]
    )


def test_every_waiter_of_a_failed_call_gets_its_error_and_the_call_is_counted(caplog):
    model = FakeModel(fail=True)
    batcher = make_batcher(model)
    sizes_before = (metric(prometheus.BATCH_SIZE), histogram_count(prometheus.BATCH_SECONDS))

    async def main():
        return await asyncio.gather(
            submit(batcher, [1.0, 2.0]), submit(batcher, [3.0]), return_exceptions=True
        )

    with caplog.at_level("ERROR", logger=batcher_module.__name__):
        first, second = run(main())
    assert isinstance(first, RuntimeError) and str(first) == "model exploded" and second is first
    assert caplog.messages == ["model call on 3 images failed"]
    assert batcher.model_calls == 1 and batcher._ewma_images == 3.0 and batcher._running == []
    assert metric(prometheus.BATCH_SIZE) - sizes_before[0] == 3
    assert histogram_count(prometheus.BATCH_SECONDS) - sizes_before[1] == 1


def test_a_request_cancelled_while_its_call_runs_still_moves_the_others_rows():
    """Two requests in one held call; the first is cancelled (client gone) while the model runs: the
    second still gets its own rows, not the first's."""
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make_batcher(model, threaded=True, max_batch_size=3, batch_wait_s=0.0)

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0, 2.0]))
        second = asyncio.create_task(submit(batcher, [3.0]))
        await model_entered(model)
        assert len(batcher._running) == 2 and batcher.queued_images == 0
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.set()
        return await second

    try:
        out = run(main())
    finally:
        gate.set()
    assert out["boxes"][:, 0, 0].tolist() == [3.0] and out["num_detections"].tolist() == [3]
    assert [call["n"] for call in model.calls] == [3] and batcher._running == []


def test_a_deadline_passing_while_the_model_runs_gets_the_answer_counted_late():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = make_batcher(model, threaded=True, max_batch_size=2, batch_wait_s=0.0)
    late_before, queue_before = metric(prometheus.LATE), cancelled("queue")

    async def main():
        deadline = Deadline()
        task = asyncio.create_task(batcher.run(*request([1.0, 2.0]), deadline=deadline))
        on_time = asyncio.create_task(batcher.run(*request([3.0]), deadline=Deadline()))
        await model_entered(model)
        deadline.expire()  # the model has the images: too late to take them back
        gate.set()
        return await task, await on_time

    try:
        out, other = run(main())
    finally:
        gate.set()
    assert out["boxes"][:, 0, 0].tolist() == [1.0, 2.0] and other["boxes"][0, 0, 0] == 3.0
    assert metric(prometheus.LATE) - late_before == 2 and cancelled("queue") == queue_before
    assert deadline_callbacks_left(batcher) == 0


def deadline_callbacks_left(batcher: DynamicBatcher) -> int:
    return sum(len(item.deadline._callbacks) for item in batcher._queue if item.deadline)


def test_a_deadline_past_before_queueing_counts_every_image_and_a_deadline_callback_is_removed():
    model = FakeModel()
    batcher = make_batcher(model)
    before = cancelled("queue")
    with pytest.raises(RequestTimeout, match=r"^the request.s deadline passed before the model"):
        run(batcher.run(*request([1.0, 2.0, 3.0]), deadline=Deadline(5.0, lambda: 5.0)))
    assert cancelled("queue") - before == 3 and model.calls == []
    deadline = Deadline()
    assert run(batcher.run(*request([4.0]), deadline=deadline))["boxes"][0, 0, 0] == 4.0
    assert deadline._callbacks == []  # answered: the batcher no longer listens


def test_requests_expired_when_the_batch_is_formed_are_counted_and_the_rest_run():
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=8, batch_wait_s=0.05)
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    before = cancelled("queue")

    async def main():
        expiring = asyncio.create_task(batcher.run(*request([1.0, 1.0]), deadline=Deadline(1.0, clock)))
        fine = asyncio.create_task(batcher.run(*request([2.0]), deadline=Deadline(100.0, clock)))
        await asyncio.sleep(0)
        assert batcher.queued_images == 3
        now[0] = 1.0  # both queued; request 1's time comes before the window ends
        return await asyncio.gather(expiring, fine, return_exceptions=True)

    expired, out = run(main())
    assert isinstance(expired, RequestTimeout) and out["boxes"][0, 0, 0] == 2.0
    assert cancelled("queue") - before == 2
    assert [call["markers"] for call in model.calls] == [[2.0]]


def test_a_batch_whose_every_request_expired_calls_no_model():
    model = FakeModel()
    batcher = make_batcher(model, batch_wait_s=0.05)
    now = [0.0]

    async def main():
        task = asyncio.create_task(batcher.run(*request([1.0]), deadline=Deadline(1.0, lambda: now[0])))
        await asyncio.sleep(0)
        now[0] = 2.0
        with pytest.raises(RequestTimeout):
            await task
        return await submit(batcher, [2.0])

    assert run(main())["boxes"][0, 0, 0] == 2.0
    assert [call["markers"] for call in model.calls] == [[2.0]] and batcher.model_calls == 1


def test_shutdown_before_any_request_and_after_the_loop_closed():
    batcher = make_batcher(FakeModel())
    batcher.shutdown()  # no loop yet
    with pytest.raises(ShuttingDown, match=r"^the server is shutting down; retry on another replica$"):
        run(batcher.run(*request([1.0])))
    other = make_batcher(FakeModel())
    assert run(submit(other, [1.0]))["boxes"][0, 0, 0] == 1.0
    other.shutdown()  # its loop is closed now: nothing to answer, no error
    assert other._closed and other._worker.done()
    with pytest.raises(ShuttingDown):
        run(other.run(*request([2.0])))


def test_shutdown_after_the_loop_closed_answers_its_requests_without_raising():
    """Requests still queued when their event loop closed (the server's loop ended first): shutdown
    cannot schedule their callbacks on it any more; nobody waits for them, and shutdown must not fail."""
    loop = asyncio.new_event_loop()
    batcher = make_batcher(FakeModel())
    item = batcher_module._Item(*request([1.0]), loop.create_future(), enqueued=0.0)
    item.future.add_done_callback(lambda _: None)  # an awaiting task would be called back on the loop
    batcher._queue.append(item)
    batcher._queued_images += 1
    loop.close()
    batcher.shutdown()
    assert isinstance(item.future.exception(), ShuttingDown) and batcher.queued_images == 0


def queue_items(batcher: DynamicBatcher, loop: asyncio.AbstractEventLoop, sizes: list[int]) -> list:
    """Queue requests of these sizes by hand (marker = position), as ``run`` does."""
    items = []
    for k, n in enumerate(sizes):
        images, hw, thr, caps = request([float(k)] * n)
        items.append(batcher_module._Item(images, hw, thr, caps, loop.create_future(), enqueued=0.0))
        batcher._queue.append(items[-1])
        batcher._queued_images += n
    return items


def test_taking_a_batch_puts_the_requests_left_back_at_the_head_in_order_and_still_queued():
    """CPU timings, twelve one-image requests: the call takes the eight oldest; the four left go back to
    the head of the queue in their order, counted and marked queued (so that a deadline or a cancelled
    client can still take them out)."""
    batcher = make_batcher(FakeModel(), max_batch_size=16, bucket_seconds=CPU_TIMINGS)

    async def main():
        items = queue_items(batcher, asyncio.get_running_loop(), [1] * 12)
        late = queue_items(batcher, asyncio.get_running_loop(), [5])  # 17 > 16 images: stays behind
        return items + late, batcher._take()

    items, taken = run(main())
    assert taken == items[:8] and not any(item.queued for item in taken)
    assert list(batcher._queue) == items[8:] and batcher.queued_images == 4 + 5
    assert all(item.queued is True for item in items[8:])


def test_an_expired_request_between_two_others_leaves_them_one_call():
    model = FakeModel()
    batcher = make_batcher(model, batch_wait_s=0.05)
    now = [0.0]

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0]))
        expiring = asyncio.create_task(batcher.run(*request([2.0]), deadline=Deadline(1.0, lambda: now[0])))
        last = asyncio.create_task(submit(batcher, [3.0]))
        await asyncio.sleep(0)
        now[0] = 1.0
        return await asyncio.gather(first, expiring, last, return_exceptions=True)

    first, expired, last = run(main())
    assert (
        isinstance(expired, RequestTimeout)
        and first["boxes"][0, 0, 0] == 1.0
        and last["boxes"][0, 0, 0] == 3.0
    )
    assert [call["markers"] for call in model.calls] == [[1.0, 3.0]]


@pytest.mark.parametrize(("window", "backlog"), [(0.3, True), (0.15, False)])
def test_the_wait_noted_when_a_batch_is_formed_is_the_oldest_requests(window, backlog):
    """Calls of 0.1 s; a request arriving at t=1 runs alone after the window: waiting 0.3 s (over two
    calls) notes a backlog from the time the batch was formed (1.3 s); 0.15 s notes none."""
    batcher = make_batcher(FakeModel(), batch_wait_s=window, shed_standing_queue=True)
    batcher._observe_call(4, 0.1)

    async def main():
        await asyncio.sleep(1.0)
        return await submit(batcher, [1.0])

    run(main())
    assert batcher._waiting_since == (pytest.approx(1.0 + window, abs=1e-9) if backlog else None)


def test_each_call_is_timed_and_counted(monkeypatch):
    """The model takes 0.25 s (a fake ``perf_counter``): the rate, the histograms and the counter get
    exactly that."""
    clock = [1000.0]

    def slow_model(images, image_hw, score_threshold, max_detections):
        clock[0] += 0.25
        return {"num_detections": max_detections.copy()}

    monkeypatch.setattr(batcher_module, "time", FakeTime(clock))
    batcher = make_batcher(slow_model)
    seconds_before, sizes_before = metric(prometheus.BATCH_SECONDS), metric(prometheus.BATCH_SIZE)

    async def main():
        return await asyncio.gather(submit(batcher, [1.0, 2.0]), submit(batcher, [3.0]))

    run(main())
    assert batcher.model_calls == 1 and batcher._ewma_seconds == 0.25 and batcher.images_per_second == 12.0
    assert metric(prometheus.BATCH_SECONDS) - seconds_before == pytest.approx(0.25)
    assert metric(prometheus.BATCH_SIZE) - sizes_before == 3


def test_shutdown_after_a_loop_closed_with_the_worker_pending():
    """A loop closed without asyncio.run's clean-up leaves the worker task pending on it: cancelling it
    cannot be scheduled any more, and shutdown must not fail for that."""
    loop = VirtualClockLoop()
    batcher = make_batcher(FakeModel())
    try:
        assert loop.run_until_complete(submit(batcher, [1.0]))["boxes"][0, 0, 0] == 1.0
    finally:
        loop.close()
    assert not batcher._worker.done()
    batcher.shutdown()
    assert batcher._closed
