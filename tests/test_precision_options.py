"""``--xla`` and ``--mixed_precision`` on the CPU: the flags reach the detector, and its detections stay
within a stated tolerance of float32 on the shipped demo model's held-out images."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from serving_fixtures import b64, encode_image

from predictor.serving.model import SSDPredictor
from predictor.serving.options import ServingOptions, build_parser
from predictor.ssd.detector import Detector, ImageDetections

# (flags, largest box difference in pixels, largest score difference) against float32.
# XLA fuses the same float32 ops: equal up to float rounding. float16 keeps 11 significant bits,
# bfloat16 8 (the heads and the L2 norm compute in float32 either way).
TOLERANCES = {
    "xla": (["--xla"], 0.01, 1e-4),
    "float16": (["--mixed_precision", "float16"], 1.0, 0.01),
    "bfloat16": (["--mixed_precision", "bfloat16"], 2.0, 0.03),
}


@pytest.fixture(scope="module")
def images(shapes_images) -> list[np.ndarray]:
    return shapes_images[:4]


@pytest.fixture(scope="module")
def float32_detections(demo_model_dir, images) -> list[ImageDetections]:
    return Detector.from_dir(str(demo_model_dir), max_batch_size=4).detect(images)


def predictor_from_flags(model_dir, flags: list[str]) -> SSDPredictor:
    args = build_parser().parse_args(["--max_batch_size", "4", *flags])
    return SSDPredictor("ssd", ServingOptions.from_args(args, str(model_dir)))


@pytest.mark.parametrize("option", sorted(TOLERANCES))
def test_option_reaches_the_detector_and_stays_within_tolerance_of_float32(
    option, demo_model_dir, images, float32_detections
):
    flags, box_tol, score_tol = TOLERANCES[option]
    model = predictor_from_flags(demo_model_dir, flags)
    try:
        detector = model.build()
        expected_policy = {"xla": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[option]
        assert detector.xla is (option == "xla")
        convs = [layer for layer in detector.model.layers if layer.__class__.__name__ == "Conv2D"]
        assert convs and {layer.dtype_policy.name for layer in convs} == {expected_policy}

        got = detector.detect(images)
        assert sum(len(d.scores) for d in float32_detections) > 0
        for ref, det in zip(float32_detections, got, strict=True):
            assert det.classes.tolist() == ref.classes.tolist()
            np.testing.assert_allclose(det.boxes, ref.boxes, atol=box_tol, rtol=0)
            np.testing.assert_allclose(det.scores, ref.scores, atol=score_tol, rtol=0)

        # Served through the KServe pipeline (V1), the answer is the same detector's.
        assert model.load()
        body = {"instances": [b64(encode_image(images[0], "PNG"))]}
        response, _ = asyncio.run(model(body, headers={"content-type": "application/json"}))
        served = orjson.loads(response)["predictions"][0]
        assert [d["class_id"] for d in served] == got[0].classes.tolist()
        np.testing.assert_allclose([d["score"] for d in served], got[0].scores, atol=6e-5)  # 4 decimals
    finally:
        model.close()
