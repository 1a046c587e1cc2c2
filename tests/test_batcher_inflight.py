"""DynamicBatcher with more than one model call in flight (``max_calls_in_flight``,
``--model_calls_in_flight``), with a fake model (no TensorFlow) whose every call is held by a gate of
its own, on a virtual clock (tests/virtual_clock.py).

Which call takes which images, when a second call may start, how the rate counts overlapping calls,
the standing-queue bound and shutdown with two calls running.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from virtual_clock import FakeTime, run

from predictor.serving import batcher as batcher_module
from predictor.serving import prometheus
from predictor.serving.batcher import DynamicBatcher, ShuttingDown
from predictor.serving.options import ServingOptions

S = 4  # image side
HANG_S = 5.0  # real seconds a held call waits for its gate (a hang guard only)


class GatedCalls:
    """Each call ``i`` records its markers (``image[0, 0, 0]``), sets ``entered[i]`` and waits for
    ``gates[i]``; rows echo the markers in ``boxes[:, 0, 0]``."""

    def __init__(self, calls: int = 4) -> None:
        self.gates = [threading.Event() for _ in range(calls)]
        self.entered = [threading.Event() for _ in range(calls)]
        self.calls: list[list[float]] = []
        self.lock = threading.Lock()

    def __call__(self, images, image_hw, score_threshold, max_detections):
        with self.lock:
            i = len(self.calls)
            self.calls.append([float(image[0, 0, 0]) for image in images])
        self.entered[i].set()
        if not self.gates[i].wait(HANG_S):
            raise RuntimeError(f"the test never opened call {i}'s gate")
        boxes = np.zeros((len(images), 1, 4), np.float32)
        boxes[:, 0, 0] = [image[0, 0, 0] for image in images]
        return {"boxes": boxes, "num_detections": max_detections.copy()}

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()


def make_batcher(model: GatedCalls, calls: int, **kwargs) -> DynamicBatcher:
    options = {"max_batch_size": 8, "batch_wait_s": 0.0, "max_queue_images": 64, **kwargs}
    return DynamicBatcher(model, max_calls_in_flight=calls, **options)


async def submit(batcher: DynamicBatcher, markers: list[float]) -> list[float]:
    """One request of ``len(markers)`` images; returns the markers of the rows it got back."""
    n = len(markers)
    images = [np.full((S, S, 3), m, np.float32) for m in markers]
    with batcher.admit(n):
        out = await batcher.run(
            images, np.full((n, 2), 10, np.float32), np.full(n, 0.5, np.float32), np.full(n, 3, np.int32)
        )
    return out["boxes"][:, 0, 0].tolist()


async def until(condition, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60  # a hang guard only
    while not condition():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let the event loop run everything ready (the worker forms any call it may)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_the_servers_default_is_automatic_and_the_batchers_one_call_in_flight():
    assert ServingOptions.model_calls_in_flight == 0
    assert DynamicBatcher(GatedCalls()).max_calls_in_flight == 1
    with pytest.raises(ValueError, match="max_calls_in_flight must be >= 1, got 0"):
        DynamicBatcher(GatedCalls(), max_calls_in_flight=0)


@pytest.mark.parametrize("calls", [1, 2])
def test_a_second_call_starts_while_one_runs_once_the_queue_holds_as_many_images(calls):
    """Call 0 takes 2 images and is held. One more queued image is fewer than call 0's: it waits. A
    second one makes 2: with two calls in flight call 1 starts beside call 0 (one call: they wait for
    call 0's end). Each request gets its own rows whatever call ends first."""
    model = GatedCalls()
    batcher = make_batcher(model, calls)

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0, 2.0]))
        await until(model.entered[0].is_set, "call 0")
        third = asyncio.create_task(submit(batcher, [3.0]))
        await settle()
        assert model.calls == [[1.0, 2.0]] and batcher.queued_images == 1  # 1 < 2: waits
        fourth = asyncio.create_task(submit(batcher, [4.0]))
        if calls == 2:
            await until(model.entered[1].is_set, "call 1")
            assert model.calls == [[1.0, 2.0], [3.0, 4.0]] and batcher.queued_images == 0
            assert len(batcher._running) == 3  # both calls' requests
            model.gates[1].set()  # the later call ends first
            assert await third == [3.0] and await fourth == [4.0]
            assert not first.done()
            model.gates[0].set()
        else:
            await settle()
            assert model.calls == [[1.0, 2.0]] and batcher.queued_images == 2
            model.open_all()
        return await first, await third, await fourth

    try:
        results = run(main())
    finally:
        model.open_all()
    assert results == ([1.0, 2.0], [3.0], [4.0])
    assert model.calls == [[1.0, 2.0], [3.0, 4.0]]
    assert batcher.model_calls == 2 and batcher._running == [] and batcher.admitted_images == 0


def test_no_third_call_starts_while_two_run_and_a_queue_left_waiting_runs_when_a_call_ends():
    """Calls 0 (1 image) and 1 (1 image) run; 3 more images queue (3 requests): no third call. Call 1
    ends: the queue (3 >= nothing smaller running than call 0's 1 image) runs as call 2 at once."""
    model = GatedCalls()
    batcher = make_batcher(model, 2)

    async def main():
        a = asyncio.create_task(submit(batcher, [1.0]))
        await until(model.entered[0].is_set, "call 0")
        b = asyncio.create_task(submit(batcher, [2.0]))
        await until(model.entered[1].is_set, "call 1")
        rest = [asyncio.create_task(submit(batcher, [m])) for m in (3.0, 4.0, 5.0)]
        await settle()
        assert model.calls == [[1.0], [2.0]] and batcher.queued_images == 3
        model.gates[1].set()
        await until(model.entered[2].is_set, "call 2")
        assert model.calls == [[1.0], [2.0], [3.0, 4.0, 5.0]]
        model.open_all()
        return await asyncio.gather(a, b, *rest)

    try:
        assert run(main()) == [[1.0], [2.0], [3.0], [4.0], [5.0]]
    finally:
        model.open_all()


def test_a_queue_smaller_than_the_running_call_waits_for_its_end_then_the_lone_rules_apply():
    """Call 0 holds 4 images; 1 image queues: it waits (1 < 4) until call 0 ends, then runs alone
    after the batching window (0.05 s of virtual time after it was queued, long passed)."""
    model = GatedCalls()
    batcher = make_batcher(model, 2, batch_wait_s=0.05)

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0, 1.0, 1.0, 1.0]))
        await until(model.entered[0].is_set, "call 0")
        lone = asyncio.create_task(submit(batcher, [2.0]))
        await asyncio.sleep(0.2)  # virtual: long past the window, still no second call
        assert model.calls == [[1.0] * 4] and batcher.queued_images == 1
        model.gates[0].set()
        await until(model.entered[1].is_set, "call 1")
        model.gates[1].set()
        return await first, await lone

    try:
        assert run(main()) == ([1.0] * 4, [2.0])
    finally:
        model.open_all()
    assert model.calls == [[1.0] * 4, [2.0]]


def test_overlapping_calls_add_their_busy_time_once_to_the_rate(monkeypatch):
    """Call 0 (2 images) runs from t=1000.0 to 1000.3, call 1 (2 images) from 1000.1 to 1000.5 (a fake
    ``perf_counter``): the rate gets 0.3 s for call 0 and 0.2 s for call 1 (only the time after call
    0 ended), the call-time histogram each call's own 0.3 and 0.4 s."""
    clock = [1000.0]
    monkeypatch.setattr(batcher_module, "time", FakeTime(clock))
    model = GatedCalls()
    batcher = make_batcher(model, 2)
    seconds_before = prometheus.BATCH_SECONDS._sum.get()

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0, 2.0]))
        await until(model.entered[0].is_set, "call 0")
        clock[0] = 1000.1
        second = asyncio.create_task(submit(batcher, [3.0, 4.0]))
        await until(model.entered[1].is_set, "call 1")
        clock[0] = 1000.3
        model.gates[0].set()
        await first
        assert (batcher._ewma_images, batcher._ewma_seconds) == (2.0, pytest.approx(0.3))
        clock[0] = 1000.5
        model.gates[1].set()
        await second

    try:
        run(main())
    finally:
        model.open_all()
    # 0.3 + 0.2 * (0.2 - 0.3): the second call's 0.2 s moved the average a fifth of the way
    assert batcher._ewma_images == 2.0 and batcher._ewma_seconds == pytest.approx(0.28)
    assert batcher.images_per_second == pytest.approx(2.0 / 0.28)
    assert prometheus.BATCH_SECONDS._sum.get() - seconds_before == pytest.approx(0.7)


@pytest.mark.parametrize(("calls", "limit"), [(1, 8), (2, 12), (3, 16)])
def test_a_standing_queue_admits_one_efficient_call_per_call_in_flight_plus_one(calls, limit):
    batcher = make_batcher(GatedCalls(), calls, bucket_seconds={2: 0.1, 4: 0.1, 8: 0.25})
    assert batcher.efficient_bucket() == 4  # 40 images/s, 32 at 8, 20 at 2
    assert batcher.standing_limit == limit


def test_shutdown_answers_the_requests_of_both_running_calls_and_the_queued_ones():
    model = GatedCalls()
    batcher = make_batcher(model, 2, max_batch_size=2)

    async def main():
        running = [asyncio.create_task(submit(batcher, [1.0]))]
        await until(model.entered[0].is_set, "call 0")
        running.append(asyncio.create_task(submit(batcher, [2.0])))
        await until(model.entered[1].is_set, "call 1")
        queued = [asyncio.create_task(submit(batcher, [m])) for m in (3.0, 4.0)]
        await settle()
        assert batcher.queued_images == 2 and len(batcher._running) == 2
        batcher.shutdown()
        assert not batcher._queue and not batcher._running
        results = await asyncio.wait_for(asyncio.gather(*running, *queued, return_exceptions=True), 60)
        await settle()
        assert not batcher._calls  # the call tasks were cancelled; their threads still hold the gates
        return results

    try:
        results = run(main())
    finally:
        model.open_all()
    assert len(results) == 4 and all(isinstance(r, ShuttingDown) for r in results), results
    assert model.calls == [[1.0], [2.0]]  # only the calls already running
    assert batcher.admitted_images == 0


@pytest.mark.parametrize("calls", [1, 2])
def test_the_next_call_is_formed_before_the_answered_callers_run_again(calls):
    """Call 0 ([1]) runs while [2] queues. When it ends, the worker forms call 1 from the queue before
    the answered caller's code runs again: the request that caller sends at once ([3]) is not in call 1
    (it runs as call 2), so the model never waits for the event loop's answering of a whole batch."""
    model = GatedCalls()
    batcher = make_batcher(model, calls)

    async def caller():
        first = await submit(batcher, [1.0])
        return first, await submit(batcher, [3.0])

    async def main():
        a = asyncio.create_task(caller())
        await until(model.entered[0].is_set, "call 0")
        b = asyncio.create_task(submit(batcher, [2.0, 2.0]))  # 2 > call 0's 1 image: it may overlap
        if calls == 2:
            await until(model.entered[1].is_set, "call 1")
        await settle()
        model.gates[0].set()
        model.gates[1].set()
        model.gates[2].set()
        return await a, await b

    try:
        assert run(main()) == (([1.0], [3.0]), [2.0, 2.0])
    finally:
        model.open_all()
    assert model.calls == [[1.0], [2.0, 2.0], [3.0]]


@pytest.mark.parametrize("calls", [1, 2])
def test_a_shutdown_between_forming_a_call_and_its_first_step_answers_its_requests(calls):
    """``_fail_pending`` (what ``shutdown()`` from another thread schedules) runs after the worker
    took the batch off the queue but before the call task's first step: it cancels the task (no
    ``finally`` of ``_execute`` runs), and still every request of the batch gets ShuttingDown."""
    model = GatedCalls()
    batcher = make_batcher(model, calls)
    take = batcher._take

    def take_then_shut_down():
        batch = take()
        asyncio.get_running_loop().call_soon(batcher._fail_pending)  # before the task's first step
        batcher._closed = True
        return batch

    batcher._take = take_then_shut_down

    async def main():
        requests = [asyncio.create_task(submit(batcher, [m])) for m in (1.0, 2.0)]
        return await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), 60)

    try:
        results = run(main())
    finally:
        model.open_all()
    assert len(results) == 2 and all(isinstance(r, ShuttingDown) for r in results), results
    assert model.calls == [] and batcher._running == [] and batcher.admitted_images == 0
    assert batcher._calls == {}  # the cancelled task ran no finally: _fail_pending let it go


def overlapping_calls(monkeypatch, times: list[tuple[float, float]], **kwargs) -> tuple[DynamicBatcher, list]:
    """Call 0 and call 1 (2 images each) run over ``times[i] = (start, end)`` of a fake
    ``perf_counter``, call 1 starting while call 0 runs; ends in the order of their times. Returns the
    batcher and each ``_observe_call``'s ``(images, busy seconds, call seconds)``."""
    clock = [times[0][0]]
    monkeypatch.setattr(batcher_module, "time", FakeTime(clock))
    model = GatedCalls()
    batcher = make_batcher(model, 2, **kwargs)
    observed = []
    observe = batcher._observe_call

    def record(n, seconds, call_seconds=None):
        observed.append((n, seconds, call_seconds))
        observe(n, seconds, call_seconds)

    batcher._observe_call = record

    async def main():
        first = asyncio.create_task(submit(batcher, [1.0, 2.0]))
        await until(model.entered[0].is_set, "call 0")
        clock[0] = times[1][0]
        second = asyncio.create_task(submit(batcher, [3.0, 4.0]))
        await until(model.entered[1].is_set, "call 1")
        for i in sorted((0, 1), key=lambda i: times[i][1]):
            clock[0] = times[i][1]
            model.gates[i].set()
            await (first, second)[i]

    try:
        run(main())
    finally:
        model.open_all()
    return batcher, observed


def test_when_the_later_call_ends_first_the_busy_time_since_the_earlier_start_counts():
    """Call 0 runs 1000.0 to 1000.6, call 1 from 1000.1 to 1000.4: call 1's end counts 0.4 s of busy
    time (since call 0 began; the time before call 1's start was lost), call 0's the 0.2 s after:
    0.6 s in all, the span the model was busy. The per-call average gets their own 0.3 and 0.6 s."""
    mp = pytest.MonkeyPatch()
    try:
        batcher, observed = overlapping_calls(mp, [(1000.0, 1000.6), (1000.1, 1000.4)])
    finally:
        mp.undo()
    assert [n for n, _, _ in observed] == [2, 2]
    assert [busy for _, busy, _ in observed] == [pytest.approx(0.4), pytest.approx(0.2)]
    assert [own for _, _, own in observed] == [pytest.approx(0.3), pytest.approx(0.6)]
    assert batcher.model_calls == 2


def test_a_busy_spell_after_an_idle_gap_counts_from_its_own_start(monkeypatch):
    """A lone call 10.0 to 10.5, idle, then calls 20.0 to 20.6 and 20.1 to 20.4 (the later ends
    first): 0.5, then 0.4 and 0.2 s of busy time; the idle 9.5 s count nowhere."""
    clock = [10.0]
    monkeypatch.setattr(batcher_module, "time", FakeTime(clock))
    batcher = make_batcher(GatedCalls(), 2)
    batcher._busy_since = 10.0  # the lone call, as _execute records its start and end
    clock[0] = 10.5
    batcher._observe_end(1, 10.0)
    assert batcher._last_call_end == 10.5 and batcher._ewma_seconds == pytest.approx(0.5)
    batcher._busy_since = 20.0  # the next spell begins with none running
    clock[0] = 20.4
    batcher._observe_end(2, 20.1)
    assert batcher._ewma_seconds == pytest.approx(0.5 + 0.2 * (0.4 - 0.5))
    assert batcher._ewma_call_seconds == pytest.approx(0.5 + 0.2 * (0.3 - 0.5))


def test_the_standing_queue_times_one_call_by_its_own_duration_not_the_shared_busy_time(monkeypatch):
    """Calls 1000.0 to 1000.4 and 1000.1 to 1000.5: busy time 0.4 then 0.1 s (average 0.34 s), each
    call's own 0.4 s (average 0.4 s). A backlog needs waits over 2 calls (0.8 s, not 0.68 s) lasting
    max(1 s, 4 calls) = 1.6 s (not 1.36 s) before it is a standing queue."""
    batcher, observed = overlapping_calls(
        monkeypatch, [(1000.0, 1000.4), (1000.1, 1000.5)], shed_standing_queue=True
    )
    assert [(busy, own) for _, busy, own in observed] == [
        (pytest.approx(0.4), pytest.approx(0.4)),
        (pytest.approx(0.1), pytest.approx(0.4)),
    ]
    assert batcher._ewma_seconds == pytest.approx(0.34) and batcher._ewma_call_seconds == pytest.approx(0.4)
    batcher.note_wait(0.75, now=10.0)  # over 2 * 0.34, under 2 * 0.4: no backlog
    assert batcher._waiting_since is None
    batcher.note_wait(0.81, now=10.0)
    assert batcher._waiting_since == 10.0
    with batcher.admit(60):
        assert batcher.refusal(8) is not None  # the image bound refuses
    batcher.note_wait(0.81, now=11.5)  # 1.5 s: past 4 * 0.34, short of 4 * 0.4
    assert not batcher.standing_queue
    batcher.note_wait(0.81, now=11.6)
    assert batcher.standing_queue


def test_a_call_cancelled_by_a_shutdown_counts_in_no_call_statistics(monkeypatch):
    """Call 0 runs from t=5.0; a shutdown at 5.3 cancels it: no model call, rate, per-call time or
    ``ssd_batch_seconds`` observation is recorded for it, and the call leaves ``_calls`` once."""
    clock = [5.0]
    monkeypatch.setattr(batcher_module, "time", FakeTime(clock))
    model = GatedCalls()
    batcher = make_batcher(model, 2)
    seconds_before = prometheus.BATCH_SECONDS._sum.get()

    async def main():
        request = asyncio.create_task(submit(batcher, [1.0]))
        await until(model.entered[0].is_set, "call 0")
        clock[0] = 5.3
        batcher.shutdown()
        result = await asyncio.gather(request, return_exceptions=True)
        await settle()
        return result

    try:
        (result,) = run(main())
    finally:
        model.open_all()
    assert isinstance(result, ShuttingDown)
    assert batcher.model_calls == 0 and batcher._ewma_seconds == 0 and batcher._ewma_call_seconds == 0
    assert batcher._calls == {} and batcher._calls_running == 0
    assert prometheus.BATCH_SECONDS._sum.get() == seconds_before  # it would have added 0.3 s


def test_a_call_starting_after_the_executor_shut_down_answers_shutting_down():
    """``shutdown()`` from another thread has closed the batcher and shut its executor down, and the
    event loop has not yet run ``_fail_pending``, when a just-formed call starts: its requests get
    ShuttingDown (a 503), not the executor's RuntimeError (a 500)."""
    model = GatedCalls()
    batcher = make_batcher(model, 2)
    take = batcher._take

    def take_then_close():
        batch = take()
        batcher._closed = True  # shutdown()'s first and last steps, done by another thread
        batcher._executor.shutdown(wait=False, cancel_futures=True)
        return batch

    batcher._take = take_then_close

    async def main():
        request = asyncio.create_task(submit(batcher, [1.0]))
        return await asyncio.wait_for(asyncio.gather(request, return_exceptions=True), 60)

    try:
        (result,) = run(main())
    finally:
        model.open_all()
    assert isinstance(result, ShuttingDown), repr(result)
    assert model.calls == [] and batcher._running == [] and batcher.model_calls == 0


@pytest.mark.parametrize("calls", [1, 2])
def test_requests_queued_while_every_call_slot_is_taken_do_not_wake_the_worker(calls):
    """With every call slot taken, neither a queued request nor the end of a decode wakes the worker
    (nothing it could do changes before a call ends); the end of a call does, and the queue runs then."""
    model = GatedCalls()
    batcher = make_batcher(model, calls)

    async def main():
        running = []
        for i in range(calls):
            running.append(asyncio.create_task(submit(batcher, [float(i), float(i)])))
            await until(model.entered[i].is_set, f"call {i}")
        await settle()
        passes = batcher.worker_passes
        with batcher.decoding(3):
            queued = [asyncio.create_task(submit(batcher, [m])) for m in (7.0, 8.0, 9.0)]
            await settle()
        await settle()
        assert batcher.queued_images == 3 and len(model.calls) == calls
        assert batcher.worker_passes == passes  # three requests queued, one decode ended: no wake-up
        model.gates[0].set()
        await until(model.entered[calls].is_set, "the queued call")
        assert model.calls[calls] == [7.0, 8.0, 9.0]
        model.open_all()
        return await asyncio.gather(*running, *queued)

    try:
        results = run(main())
    finally:
        model.open_all()
    assert results[calls:] == [[7.0], [8.0], [9.0]]


@pytest.mark.parametrize(
    ("calls", "runtime", "gpu", "call_s", "expected"),
    [
        (0, "tensorflow", False, 0.054, 2),  # the demo model's call of 8 on the 2-core VM
        (0, "tensorflow", False, 0.4999, 2),
        (0, "tensorflow", False, 0.5, 1),
        (0, "tensorflow", False, 2.381, 1),  # SSD300's
        (0, "tensorflow", True, 0.054, 1),  # a GPU: not measured, one call as before
        (0, "onnxruntime", False, 0.054, 1),  # ONNX Runtime: not measured
        (3, "tensorflow", True, 2.381, 3),  # asked for: as asked
        (1, "tensorflow", False, 0.054, 1),
    ],
)
def test_automatic_calls_in_flight_are_two_for_short_calls_on_a_cpu(calls, runtime, gpu, call_s, expected):
    from predictor.serving.options import calls_in_flight

    assert calls_in_flight(calls, runtime=runtime, gpu=gpu, call_s=call_s) == expected


def test_the_server_times_the_largest_bucket_up_to_8_images_for_automatic_calls():
    """Warm-up: bucket 8 0.6 s (over 0.5: one call) though bucket 4 took 0.3; with max batch 4, bucket
    4 is the probe (two calls); asked for 3: 3 whatever the timings. No GPU here."""
    from predictor.serving.model import model_calls

    per_bucket = {1: 0.08, 2: 0.15, 4: 0.3, 8: 0.6, 16: 1.2}
    assert model_calls(ServingOptions(), per_bucket) == 1
    assert model_calls(ServingOptions(), {b: t for b, t in per_bucket.items() if b <= 4}) == 2
    assert model_calls(ServingOptions(model_calls_in_flight=3), per_bucket) == 3
    assert model_calls(ServingOptions(runtime="onnxruntime"), {1: 0.01}) == 1
