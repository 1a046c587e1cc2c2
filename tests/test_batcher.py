"""DynamicBatcher with a fake model (no TensorFlow): coalescing, slicing, padding, shedding, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from kserve.errors import ServerNotReady

from predictor.batcher import DynamicBatcher, Overloaded, RequestTimeout

S = 4  # image side


class FakeModel:
    """Echoes each row's identity: ``boxes[i, 0, 0]`` = the image's marker value, scores = thresholds,
    ``num_detections`` = caps. Records every call; while ``gate`` is cleared, calls wait for it."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls: list[dict[str, np.ndarray]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, images, image_hw, score_threshold, max_detections):
        with self.lock:
            self.calls.append(
                {
                    "n": len(images),
                    "thr": score_threshold.copy(),
                    "caps": max_detections.copy(),
                    "hw": image_hw.copy(),
                }
            )
        if not self.gate.wait(120):
            raise RuntimeError("the test never opened the gate")
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        b = len(images)
        boxes = np.zeros((b, 3, 4), np.float32)
        boxes[:, 0, 0] = images[:, 0, 0, 0]
        return {
            "boxes": boxes,
            "scores": np.repeat(score_threshold[:, None], 3, axis=1),
            "classes": np.ones((b, 3), np.int32),
            "num_detections": max_detections.copy(),
        }


def bucket_for(n: int) -> int:
    return next(b for b in (1, 2, 4, 8) if b >= n)


def make_batcher(model: FakeModel, **kwargs) -> DynamicBatcher:
    options = {"max_batch_size": 8, "batch_wait_s": 0.02, "max_queue_images": 64, **kwargs}
    return DynamicBatcher(model, bucket_for=bucket_for, input_size=S, **options)


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
    model = FakeModel(delay=0.01)
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

    jobs, outs = asyncio.run(main())
    for (markers, threshold, cap), out in zip(jobs, outs, strict=True):
        assert out["boxes"][:, 0, 0].tolist() == markers
        np.testing.assert_allclose(out["scores"][:, 0], threshold, atol=1e-6)
        assert out["num_detections"].tolist() == [cap] * len(markers)
    assert len(model.calls) < len(sizes)
    assert all(call["n"] in (1, 2, 4, 8) for call in model.calls), "not padded to a bucket"
    assert sum(call["n"] for call in model.calls) >= sum(sizes)
    assert batcher.queued_images == 0 and batcher.admitted_images == 0


def test_padding_rows_and_max_batch_size():
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=8, batch_wait_s=0.05)

    async def main():
        return await asyncio.gather(*(submit(batcher, [float(i)] * 3) for i in range(4)))

    asyncio.run(main())
    assert all(call["n"] <= 8 for call in model.calls)
    for call in model.calls:  # 3 + 3 images -> bucket 8: two padding rows with threshold 1, cap 0
        used = int((call["caps"] > 0).sum())
        assert used in (3, 6) and call["n"] == bucket_for(used)
        assert (call["thr"][used:] == 1).all() and (call["caps"][used:] == 0).all()
        assert (call["hw"][used:] == 1).all()


async def until(condition, what: str) -> None:
    """Yield to the event loop until ``condition()``; the 120 s deadline only guards against a hang."""
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
        start = loop.time()
        await asyncio.wait_for(submit(batcher, [1.0]), 120)  # the deadline only guards against a hang
        return loop.time() - start

    # A lower bound only: a slower machine takes longer, never less than the window.
    assert asyncio.run(main()) >= 0.05 - 1e-3
    assert [call["n"] for call in model.calls] == [1]


def test_a_full_batch_does_not_wait_for_the_window():
    model = FakeModel()
    batcher = make_batcher(model, batch_wait_s=3600.0)  # a full batch that waited would hang here

    async def main():
        return await asyncio.wait_for(submit(batcher, [1.0] * 8), 120)

    assert asyncio.run(main())["boxes"][:, 0, 0].tolist() == [1.0] * 8
    assert [call["n"] for call in model.calls] == [8]


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
    batcher = make_batcher(model, max_batch_size=2, batch_wait_s=0.0)

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

    last = asyncio.run(main())
    assert last["boxes"][0, 0, 0] == 3.0
    assert [call["n"] for call in model.calls] == [2, 1], "the cancelled request reached the model"
    assert batcher.admitted_images == 0


def test_a_failing_model_call_fails_only_its_batch():
    model = FakeModel(fail=True)
    batcher = make_batcher(model)

    async def main():
        results = await asyncio.gather(submit(batcher, [1.0]), submit(batcher, [2.0]), return_exceptions=True)
        model.fail = False
        return results, await submit(batcher, [3.0])

    results, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after["boxes"][0, 0, 0] == 3.0


def test_requests_larger_than_a_batch_are_refused():
    batcher = make_batcher(FakeModel(), max_batch_size=2)
    with pytest.raises(ValueError, match=r"expected 1\.\.2"):
        asyncio.run(batcher.run(*request([1.0, 2.0, 3.0])))


def test_the_worker_restarts_on_a_new_event_loop():
    model = FakeModel()
    batcher = make_batcher(model)
    for marker in (1.0, 2.0):
        out = asyncio.run(submit(batcher, [marker]))
        assert out["boxes"][0, 0, 0] == marker
