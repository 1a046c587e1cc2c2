"""The production post-processing against an independent NumPy reference written from the spec
(tests/reference_postprocess.py): random network outputs, several image sizes, thresholds, top-k, NMS
thresholds and caps, and the whole Detector path of a random model."""

from __future__ import annotations

import numpy as np
import pytest
from reference_postprocess import ReferenceDetection, reference_postprocess

from predictor.ssd.postprocess import postprocess


def random_case(seed: int, anchors: int = 240, classes: int = 5):
    """Anchors scattered over the image (centres may leave it, as the last cells' do), offsets and logits
    spread enough that many boxes overlap, some leave the image and scores cross the thresholds."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.1, 1.1, (anchors, 2))
    sides = rng.uniform(0.02, 0.6, (anchors, 2))
    anchor_array = np.concatenate([centres, sides], axis=1).astype(np.float32)
    loc = rng.normal(0, 2, (2, anchors, 4)).astype(np.float32)
    logits = rng.normal(0, 2.5, (2, anchors, 1 + classes)).astype(np.float32)
    return loc, logits, anchor_array


def assert_same(production: dict, b: int, expected: list[ReferenceDetection]) -> None:
    n = int(production["num_detections"][b])
    assert n == len(expected), (n, len(expected))
    got_classes = production["classes"][b, :n].tolist()
    assert got_classes == [d.label for d in expected]
    np.testing.assert_allclose(production["scores"][b, :n], [d.score for d in expected], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        production["boxes"][b, :n], np.array([d.box for d in expected]).reshape(n, 4), rtol=1e-4, atol=2e-3
    )
    assert not production["scores"][b, n:].any() and not production["boxes"][b, n:].any()


@pytest.mark.parametrize(
    ("seed", "threshold", "nms", "top_k", "max_det"),
    [
        (0, 0.05, 0.45, 400, 200),  # the spec's defaults but a low threshold: hundreds of candidates
        (1, 0.2, 0.45, 60, 200),  # top-k cuts the candidates
        (2, 0.1, 0.3, 400, 15),  # the cap cuts the survivors
        (3, 0.5, 0.6, 400, 200),  # at most one class per anchor can pass 0.5
        (4, 0.01, 0.45, 100, 40),
        (5, 0.3, 0.1, 400, 200),  # aggressive NMS
    ],
)
def test_postprocess_matches_the_numpy_reference(seed, threshold, nms, top_k, max_det):
    loc, logits, anchors = random_case(seed)
    image_hw = np.array([[480.0, 640.0], [333.0, 250.0]], np.float32)
    det = postprocess(
        loc, logits, anchors, image_hw, threshold, nms_threshold=nms, top_k=top_k, max_detections=max_det
    )
    production = {k: v.numpy() for k, v in det._asdict().items()}
    for b in range(2):
        expected = reference_postprocess(
            loc[b], logits[b], anchors, tuple(image_hw[b]), threshold,
            nms_threshold=nms, top_k=top_k, max_detections=max_det,
        )  # fmt: skip
        assert expected, "the case should produce detections"
        assert_same(production, b, expected)


def test_per_image_thresholds_and_caps_match_the_reference():
    loc, logits, anchors = random_case(11)
    image_hw = np.array([[300.0, 300.0], [1080.0, 1920.0]], np.float32)
    det = postprocess(loc, logits, anchors, image_hw, [0.1, 0.4], [7, 200], max_detections=200)
    production = {k: v.numpy() for k, v in det._asdict().items()}
    for b, (threshold, cap) in enumerate([(0.1, 7), (0.4, 200)]):
        expected = reference_postprocess(loc[b], logits[b], anchors, tuple(image_hw[b]), threshold)[:cap]
        assert_same(production, b, expected)


def test_detector_matches_the_reference_on_raw_network_outputs(random_tiny_model_dir, shapes_images):
    """The whole production path (pre-processing, network, Detector's post-processing with the model's
    anchors and thresholds) against the reference applied to the same network's raw outputs."""
    from predictor.ssd.detector import Detector
    from predictor.ssd.preprocess import subtract_means

    detector = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=4)
    images = shapes_images[:3]
    resized = np.stack([detector.resize(im) for im in images])
    hw = np.array([im.shape[:2] for im in images], np.float32)
    out = detector.run_batch(resized, hw)
    raw = detector.model(subtract_means(resized, detector.config.means), training=False)
    anchors = detector.anchors.numpy()
    for b in range(len(images)):
        loc, logits = raw["loc"][b].numpy(), raw["logits"][b].numpy()
        expected = reference_postprocess(
            loc, logits, anchors, tuple(hw[b]), detector.score_threshold,
            nms_threshold=detector.nms_threshold, top_k=detector.top_k,
            max_detections=detector.max_detections,
        )  # fmt: skip
        assert expected
        assert_same(out, b, expected)


@pytest.mark.parametrize(
    ("thresholds", "counts"),
    [
        ((0.9, 0.99), (32, None)),  # exactly 32 candidates in image 0 (4 of them leave the image): 32 slots
        ((0.9, 0.9), (32, 33)),  # one more than 32: 128 slots
        ((0.6, 0.6), (111, 126)),  # 128 slots
        ((0.5, 0.5), (152, 153)),  # more than the largest slot: every anchor decoded, top 400
    ],
)
def test_each_candidate_size_matches_the_reference_and_the_unsized_path(thresholds, counts):
    """Post-processing sizes its candidates to the most any image has (32, 128 or every anchor; module
    docstring's "Sizing"), testing box size after top-k on the sized branches: each branch, at its
    boundaries, gives the reference's detections and exactly those of ``candidate_slots=()``."""
    loc, logits, anchors = random_case(21)
    image_hw = np.array([[480.0, 640.0], [333.0, 250.0]], np.float32)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    passed = ((exp / exp.sum(-1, keepdims=True))[..., 1:] > np.array(thresholds)[:, None, None]).sum((1, 2))
    assert [c for c, want in zip(passed.tolist(), counts, strict=True) if want is not None] == [
        c for c in counts if c is not None
    ]
    det = postprocess(loc, logits, anchors, image_hw, list(thresholds), top_k=400, max_detections=200)
    unsized = postprocess(
        loc, logits, anchors, image_hw, list(thresholds), top_k=400, max_detections=200, candidate_slots=()
    )
    production = {k: v.numpy() for k, v in det._asdict().items()}
    for key, value in unsized._asdict().items():
        np.testing.assert_array_equal(production[key], value.numpy(), err_msg=key)
    for b in range(2):
        expected = reference_postprocess(loc[b], logits[b], anchors, tuple(image_hw[b]), thresholds[b])
        assert expected
        assert_same(production, b, expected)
