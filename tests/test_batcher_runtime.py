"""A model that does not pad to its bucket (``pads_to_bucket`` False: ``--runtime onnxruntime``, whose
network runs the real images only) gets whole calls from the batcher: no split to avoid padding, no
wait to fill it. On the virtual clock (tests/virtual_clock.py), with the fake model of test_batcher."""

from __future__ import annotations

import numpy as np
import pytest
from test_batcher import CPU_TIMINGS, FakeModel, make_batcher, nine_queued_behind_a_held_call
from virtual_clock import run

from predictor.serving.batcher import DynamicBatcher
from predictor.ssd.detector import Detector
from predictor.ssd.onnx_runtime import OrtDetector


def test_the_runtimes_say_whether_they_pad():
    assert Detector.pads_to_bucket is True and OrtDetector.pads_to_bucket is False
    assert DynamicBatcher(FakeModel()).pads_to_bucket is True  # the default: TensorFlow's detector


@pytest.mark.parametrize(("pads", "calls"), [(True, [1, 8, 1]), (False, [1, 9])])
def test_nine_queued_images_run_as_one_call_when_the_model_does_not_pad(pads, calls):
    """Nine one-image requests queue while the model holds a call, CPU timings (a bucket of 16 costs
    twice one of 8): a padding model gets 8 then 1, one that does not pad all nine at once."""
    model = FakeModel()
    batcher = make_batcher(
        model,
        threaded=True,
        max_batch_size=16,
        batch_wait_s=0.0,
        bucket_seconds=CPU_TIMINGS,
        pads_to_bucket=pads,
    )
    assert batcher._efficient_prefix([1] * 9) == (8 if pads else 9)

    _, rest = run(nine_queued_behind_a_held_call(batcher, model))
    assert [call["n"] for call in model.calls] == calls
    assert [r["boxes"][0, 0, 0] for r in rest] == list(map(float, range(9)))
    assert batcher.queued_images == 0 and batcher.admitted_images == 0


@pytest.mark.parametrize(("pads", "starts_at"), [(True, 0.02), (False, 0.0)])
def test_no_wait_for_decoding_images_when_the_model_does_not_pad(pads, starts_at):
    """Seven images queued and one still decoding (it never ends during the call) fit bucket 8, timed
    at 0.08 s: a padding model's call waits for it, at most a quarter of that (virtual t = 0.02); one
    that does not pad runs at once (t = 0)."""
    model = FakeModel()
    batcher = make_batcher(
        model, max_batch_size=16, batch_wait_s=0.0, bucket_seconds=CPU_TIMINGS, pads_to_bucket=pads
    )
    images = [np.full((4, 4, 3), k, np.float32) for k in range(7)]
    hw, thr, caps = np.full((7, 2), 10, np.float32), np.full(7, 0.5, np.float32), np.full(7, 3, np.int32)

    async def main() -> dict:
        with batcher.admit(8), batcher.decoding(1):
            return await batcher.run(images, hw, thr, caps)

    out = run(main())
    assert [call["n"] for call in model.calls] == [7]
    assert model.calls[0]["t"] == pytest.approx(starts_at)
    assert out["boxes"][:, 0, 0].tolist() == list(map(float, range(7)))
