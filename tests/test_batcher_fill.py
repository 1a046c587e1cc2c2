"""DynamicBatcher waits for images being decoded that would fill the slots a call pads
(``DynamicBatcher.decoding`` and ``_fill_wait``), with a fake model (no TensorFlow).

The model is held by a gate while requests queue, so which images each call takes does not depend on
timing; only the bounded wait's own test lets a short bound pass.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from predictor.serving import batcher as batcher_module
from predictor.serving.batcher import DynamicBatcher

S = 4  # image side


class GatedModel:
    """Records each call's markers (``image[0, 0, 0]``); every call waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[float]] = []

    def __call__(self, images, image_hw, score_threshold, max_detections):
        self.calls.append([float(image[0, 0, 0]) for image in images])
        if not self.gate.wait(120):
            raise RuntimeError("the test never opened the gate")
        b = len(images)
        return {
            "boxes": np.zeros((b, 1, 4), np.float32),
            "scores": np.zeros((b, 1), np.float32),
            "classes": np.zeros((b, 1), np.int32),
            "num_detections": np.zeros(b, np.int32),
        }


def make_batcher(model: GatedModel, timings: dict[int, float] | None) -> DynamicBatcher:
    return DynamicBatcher(
        model, max_batch_size=8, batch_wait_s=0.0, max_queue_images=64, bucket_seconds=timings
    )


async def one(batcher: DynamicBatcher, marker: float, decoded: asyncio.Event | None = None) -> None:
    """A one-image request as the model runs it: admitted, decoded (until ``decoded`` is set), then run."""
    with batcher.admit(1):
        with batcher.decoding(1):
            if decoded is not None:
                await decoded.wait()
        await batcher.run([np.full((S, S, 3), marker, np.float32)], np.full((1, 2), 10, np.float32),
                          np.full(1, 0.5, np.float32), np.full(1, 3, np.int32))  # fmt: skip


async def until(condition, what: str, guard_s: float = 120.0) -> None:
    """Yield to the event loop until ``condition()``; the deadline only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard_s
    while not condition():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.005)


async def seven_queued(model: GatedModel, batcher: DynamicBatcher) -> list[asyncio.Task]:
    """A first request is with the model (held by its gate) and seven more are queued: their tasks."""
    first = asyncio.create_task(one(batcher, 100.0))
    await until(lambda: len(model.calls) == 1, "the first request to reach the model")
    queued = [asyncio.create_task(one(batcher, float(k))) for k in range(7)]
    await until(lambda: batcher.queued_images == 7, "seven requests to be queued")
    return [first, *queued]


@pytest.mark.parametrize(
    ("timings", "late", "calls"),
    [
        # 7 queued + 1 decoding fit bucket 8: the call waits for the 8th instead of running it alone next
        ({1: 10.0, 2: 20.0, 4: 40.0, 8: 80.0}, 1, [1, 8]),
        # 7 + 2 do not fit bucket 8: the 7 run now, the 2 next
        ({1: 10.0, 2: 20.0, 4: 40.0, 8: 80.0}, 2, [1, 7, 2]),
        # no warm-up timings: never waits
        (None, 1, [1, 7, 1]),
    ],
)
def test_a_call_waits_for_decoding_images_that_fit_its_padding(timings, late, calls):
    model = GatedModel()
    batcher = make_batcher(model, timings)

    async def main():
        tasks = await seven_queued(model, batcher)
        decoded = asyncio.Event()
        tasks += [asyncio.create_task(one(batcher, 50.0 + k, decoded)) for k in range(late)]
        await until(lambda: batcher._decoding_images == late, "the late requests to start decoding")
        model.gate.set()
        if calls[1] == 7:  # the 7 run without waiting for the late ones
            # well before the 20 s a wait for them would last (the decodes only end after this)
            await until(lambda: len(model.calls) == 2, "the second call", guard_s=10.0)
        else:
            await asyncio.sleep(0.2)  # the second call would have started by now, had it not waited
            assert len(model.calls) == 1
        decoded.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert [len(c) for c in model.calls] == calls
    assert sorted(m for c in model.calls for m in c) == sorted(
        [100.0, *range(7), *(50.0 + k for k in range(late))]
    )
    assert batcher._decoding_images == 0 and batcher.queued_images == 0 and batcher.admitted_images == 0


def test_the_wait_for_decoding_images_is_bounded_by_a_fraction_of_the_call():
    """Bucket 8 timed at 0.2 s: a decode that never ends holds the call of 7 for at most 50 ms (the
    test only checks that the call runs while the decode is still going)."""
    model = GatedModel()
    batcher = make_batcher(model, {1: 0.025, 2: 0.05, 4: 0.1, 8: 0.2})
    assert batcher_module.FILL_WAIT_FRACTION == 0.25  # of 0.2 s: 50 ms

    async def main():
        tasks = await seven_queued(model, batcher)
        stuck = asyncio.Event()
        late = asyncio.create_task(one(batcher, 50.0, stuck))
        await until(lambda: batcher._decoding_images == 1, "the late request to start decoding")
        model.gate.set()
        await until(lambda: len(model.calls) == 2, "the call of seven, once the bounded wait is over")
        assert batcher._decoding_images == 1  # still decoding
        stuck.set()
        await asyncio.gather(*tasks, late)

    asyncio.run(main())
    assert [len(c) for c in model.calls] == [1, 7, 1]


def test_a_failed_decode_leaves_the_count_and_wakes_the_waiting_call():
    model = GatedModel()
    batcher = make_batcher(model, {1: 10.0, 2: 20.0, 4: 40.0, 8: 80.0})

    async def main():
        tasks = await seven_queued(model, batcher)
        failed = asyncio.Event()

        async def failing() -> None:
            with batcher.admit(1), batcher.decoding(1):
                await failed.wait()
                raise ValueError("corrupt image")

        bad = asyncio.create_task(failing())
        await until(lambda: batcher._decoding_images == 1, "the bad request to start decoding")
        model.gate.set()
        await asyncio.sleep(0.2)
        assert len(model.calls) == 1  # waiting for the image being decoded
        failed.set()
        await until(lambda: len(model.calls) == 2, "the call of seven once the decode failed")
        await asyncio.gather(*tasks)
        with pytest.raises(ValueError, match="corrupt"):
            await bad

    asyncio.run(main())
    assert [len(c) for c in model.calls] == [1, 7]
    assert batcher._decoding_images == 0 and batcher.admitted_images == 0
