"""The production post-processing against an independent NumPy reference written from the spec
(tests/reference_postprocess.py): random network outputs, several image sizes, thresholds, top-k, NMS
thresholds and caps, and the whole Detector path of a random model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from reference_postprocess import ReferenceDetection, reference_postprocess

from predictor.ssd.postprocess import postprocess, postprocess_with_path


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


# The branches of ``postprocess`` as ``(every_anchor, anchors scored, K, boxes decoded per image)``
# (:class:`~predictor.ssd.postprocess.PostprocessPath`) on ``random_case``'s 240 anchors, top-k 400.
Path = tuple[bool, int, int, int]


def few(k: int, n: int = 240) -> Path:
    """Only a tier of ``n`` anchors holding those that may pass scored, ``K`` a slot, only the ``K``
    candidates decoded."""
    return (False, n, k, k)


def every(k: int) -> Path:
    """Every anchor scored, ``K`` a slot, only the ``K`` candidates decoded."""
    return (True, 240, k, k)


def few_decoded(n: int = 240, k: int = 400) -> Path:
    """The ``n`` anchors of a tier scored and decoded, the top ``k`` of their pairs kept."""
    return (False, n, k, n)


#: Every anchor scored and decoded, the top 400 kept (``candidate_slots=()``'s computation).
EVERY_DECODED = (True, 240, 400, 240)


def run_with_path(*args, **kwargs) -> tuple[dict[str, np.ndarray], Path]:
    """``postprocess_with_path``'s detections as NumPy, asserted equal bit for bit to ``postprocess``'s
    (the serving graph, which computes no path), and its path as ``(every_anchor, scored, K, decoded)``."""
    det, path = postprocess_with_path(*args, **kwargs)
    production = {k: v.numpy() for k, v in det._asdict().items()}
    for key, value in postprocess(*args, **kwargs)._asdict().items():
        np.testing.assert_array_equal(production[key], value.numpy(), err_msg=key)
    return production, (bool(path.every_anchor), *(int(v) for v in path[1:]))


def sized_equals_unsized(
    loc, logits, anchors, image_hw, thresholds, path: Path, **kwargs
) -> dict[str, np.ndarray]:
    """Production post-processing (top-k 400, 200 detections; ``kwargs`` e.g. ``candidate_slots``)
    asserted to take ``path`` (``(every_anchor, scored, K, decoded)``) and to equal, bit for bit, the unsized
    path (``candidate_slots=()``, itself asserted to score and decode every anchor); its outputs as NumPy."""
    common = {"top_k": 400, "max_detections": 200}
    production, taken = run_with_path(loc, logits, anchors, image_hw, list(thresholds), **common, **kwargs)
    assert taken == path
    unsized, unsized_path = run_with_path(
        loc, logits, anchors, image_hw, list(thresholds), **common, candidate_slots=()
    )
    num_anchors = int(np.shape(anchors)[0])
    assert unsized_path == (True, num_anchors, 400, num_anchors)
    for key, value in unsized.items():
        np.testing.assert_array_equal(production[key], value, err_msg=key)
    return production


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
    ("seed", "threshold", "nms", "top_k", "max_det", "path"),
    [
        # the spec's defaults but a low threshold: hundreds of candidates
        (0, 0.05, 0.45, 400, 200, few_decoded()),
        (1, 0.2, 0.45, 60, 200, few_decoded(k=60)),  # top-k cuts the candidates
        (2, 0.1, 0.3, 400, 15, few_decoded()),  # the cap cuts the survivors
        (3, 0.5, 0.6, 400, 200, few_decoded()),  # at most one class per anchor can pass 0.5
        (4, 0.01, 0.45, 100, 40, few_decoded(k=100)),
        (5, 0.3, 0.1, 400, 200, few_decoded()),  # aggressive NMS
    ],
)
def test_postprocess_matches_the_numpy_reference(seed, threshold, nms, top_k, max_det, path):
    """Each case against the reference, and the branch it runs (random logits: more than 128
    candidates among the <= 256 anchors that may pass; the sized branches are the tests below)."""
    loc, logits, anchors = random_case(seed)
    image_hw = np.array([[480.0, 640.0], [333.0, 250.0]], np.float32)
    production, taken = run_with_path(
        loc, logits, anchors, image_hw, threshold, nms_threshold=nms, top_k=top_k, max_detections=max_det
    )
    assert taken == path
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
    production, taken = run_with_path(
        loc, logits, anchors, image_hw, [0.1, 0.4], [7, 200], max_detections=200
    )
    assert taken == few_decoded()
    for b, (threshold, cap) in enumerate([(0.1, 7), (0.4, 200)]):
        expected = reference_postprocess(loc[b], logits[b], anchors, tuple(image_hw[b]), threshold)[:cap]
        assert_same(production, b, expected)


# ------------------------------------------------------------ pre-processing, from the spec alone
# /work/shared/ssd-spec.md 2.1 and 1.5, written again here without the detector's functions: a bug in
# the detector's resize, mean subtraction or anchors makes the production path differ from this one.
SPEC_MEANS = (123.0, 117.0, 104.0)  # R, G, B (spec 2.1 step 2)


def spec_warp_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Spec 2.1 step 4: bilinear WARP to ``size x size``, TF1 ``align_corners=False``,
    ``half_pixel_centers=False``: output pixel ``i`` reads source ``i * in / out`` (float32), lerped
    between ``floor`` and ``floor + 1`` (clamped to the last pixel), rows then columns."""
    src = image.astype(np.float32)

    def taps(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.arange(size, dtype=np.float32) * np.float32(n_in / size)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (x - lo).astype(np.float32)

    y0, y1, wy = taps(image.shape[0])
    x0, x1, wx = taps(image.shape[1])
    top = src[y0][:, x0] + (src[y0][:, x1] - src[y0][:, x0]) * wx[None, :, None]
    bottom = src[y1][:, x0] + (src[y1][:, x1] - src[y1][:, x0]) * wx[None, :, None]
    return top + (bottom - top) * wy[:, None, None]


def spec_anchors(config) -> np.ndarray:
    """Spec 1.5: per layer, centres ``(row + 0.5) * step / input``, then per location a square of side
    ``s_min``, a square of side ``sqrt(s_min * s_max)``, one box per ratio ``r`` with ``h = s_min / sqrt(r)``
    and ``w = s_min * sqrt(r)``; row-major over (row, col, anchor), layers in order. ``(cy, cx, h, w)``."""
    rows = []
    for layer in config.feature_layers:
        s_min, s_max = layer.min_size / config.input_size, layer.max_size / config.input_size
        shapes = [(s_min, s_min), (np.sqrt(s_min * s_max),) * 2]
        shapes += [(s_min / np.sqrt(r), s_min * np.sqrt(r)) for r in layer.ratios]
        for row in range(layer.size):
            for col in range(layer.size):
                cy = (row + 0.5) * layer.step / config.input_size
                cx = (col + 0.5) * layer.step / config.input_size
                rows += [(cy, cx, h, w) for h, w in shapes]
    return np.asarray(rows, np.float64)


def test_detector_matches_the_reference_on_raw_network_outputs(random_tiny_model_dir, shapes_images):
    """The whole production path (``Detector.detect``: its resize, mean subtraction, network and
    post-processing with its anchors and thresholds) against this file's own pre-processing and anchors
    from the spec, the same network, and the NumPy reference post-processing."""
    from predictor.ssd.detector import Detector

    detector = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=4)
    config = detector.config
    assert tuple(config.means) == SPEC_MEANS and config.anchor_offset == 0.5
    images = shapes_images[:3]
    ours = np.stack([spec_warp_resize(im, config.input_size) for im in images])  # [N, S, S, 3]
    anchors = spec_anchors(config)
    np.testing.assert_allclose(detector.anchors.numpy(), anchors, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.stack([detector.resize(im) for im in images]), ours, atol=1e-3)
    raw = detector.model((ours - np.asarray(SPEC_MEANS, np.float32)).astype(np.float32), training=False)
    detected = detector.detect(images)
    hw = [im.shape[:2] for im in images]
    for b, got in enumerate(detected):
        expected = reference_postprocess(
            raw["loc"][b].numpy(), raw["logits"][b].numpy(), anchors.astype(np.float32), tuple(hw[b]),
            detector.score_threshold, nms_threshold=detector.nms_threshold, top_k=detector.top_k,
            max_detections=detector.max_detections,
        )  # fmt: skip
        assert expected
        production = {"num_detections": [len(got.scores)], "classes": got.classes[None],
                      "scores": got.scores[None], "boxes": got.boxes[None]}  # fmt: skip
        assert_same(production, 0, expected)


@pytest.mark.parametrize(
    ("thresholds", "counts", "path"),
    [
        # exactly 32 candidates in image 0 (4 of them leave the image): 32 slots
        ((0.9, 0.99), (32, None), few(32)),
        ((0.9, 0.9), (32, 33), few(64)),  # one more than 32: 64 slots
        ((0.8, 0.8), (58, 65), few(96)),  # 96 slots
        ((0.6, 0.6), (111, 126), few(128)),  # 128 slots
        # more than the largest slot: the anchors that may pass decoded, top 400
        ((0.5, 0.5), (152, 153), few_decoded()),
        ((0.05, 0.05), (564, 539), few_decoded()),  # more than top_k: the top 400 of those anchors' pairs
    ],
)
def test_each_candidate_size_matches_the_reference_and_the_unsized_path(thresholds, counts, path):
    """Post-processing sizes its candidates to the most any image has (32, 64, 96, 128 or ``top_k``;
    module docstring's "Sizing"), testing box size after top-k on the sized branches: each branch, at
    its boundaries, gives the reference's detections and exactly those of ``candidate_slots=()``.
    (240 anchors, fewer than ``CANDIDATE_ANCHORS``: only the pairs of the anchors that may pass are
    scored; the next test covers images with more such anchors.)"""
    loc, logits, anchors = random_case(21)
    image_hw = np.array([[480.0, 640.0], [333.0, 250.0]], np.float32)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    passed = ((exp / exp.sum(-1, keepdims=True))[..., 1:] > np.array(thresholds)[:, None, None]).sum((1, 2))
    assert [c for c, want in zip(passed.tolist(), counts, strict=True) if want is not None] == [
        c for c in counts if c is not None
    ]
    production = sized_equals_unsized(loc, logits, anchors, image_hw, thresholds, path)
    for b in range(2):
        expected = reference_postprocess(loc[b], logits[b], anchors, tuple(image_hw[b]), thresholds[b])
        assert expected
        assert_same(production, b, expected)


@pytest.mark.parametrize(
    ("thresholds", "anchors_to_score", "may_pass", "counts", "path"),
    [
        ((0.99, 0.99), 100, (70, 69), (8, 5), few(32, 100)),  # those anchors' pairs scored alone: 32 slots
        ((0.8, 0.8), 170, (163, 170), (58, 65), few(96, 170)),  # exactly as many anchors as scored: 96 slots
        ((0.8, 0.8), 169, (163, 170), (58, 65), every(96)),  # one more: every anchor scored, then 96 slots
        ((0.95, 0.99), 100, (118, 69), (22, 5), every(32)),  # every anchor scored, 32 slots
        # more candidates than the largest slot: those 210 anchors decoded, top 400 of their pairs
        ((0.5, 0.5), 210, (201, 199), (152, 153), few_decoded(210)),
        # and one anchor too many: every anchor scored and decoded
        ((0.5, 0.5), 200, (201, 199), (152, 153), EVERY_DECODED),
        # tiers of 50 and 200 anchors (800 > 240): more than 50 anchors may pass, the 200-anchor tier
        ((0.99, 0.99), 50, (70, 69), (8, 5), few(32, 200)),
        ((0.8, 0.8), 50, (163, 170), (58, 65), few(96, 200)),
        ((0.6, 0.6), 50, (195, 189), (111, 126), few(128, 200)),
        ((0.5, 0.5), 50, (201, 199), (152, 153), EVERY_DECODED),  # one more than the largest tier
    ],
)
def test_scoring_the_anchors_that_may_pass_matches_the_reference_and_the_unsized_path(
    monkeypatch, thresholds, anchors_to_score, may_pass, counts, path
):
    """Only the anchors whose best class's sigmoid(l_c - l_0) clears the threshold are scored when no
    image has more than ``CANDIDATE_ANCHORS`` of them (module docstring's "Sizing"; here 100-210 of 240,
    these random logits have many close classes), or than the next tier (4x, while below the 240
    anchors), else every anchor: each way, at the boundary, the reference's detections and exactly
    those of ``candidate_slots=()``."""
    from predictor.ssd import postprocess as module

    monkeypatch.setattr(module, "CANDIDATE_ANCHORS", anchors_to_score)
    monkeypatch.setattr(module, "TIER_ANCHOR_SHARE", 1)  # tiers up to the 240 anchors, not 240 / 8
    loc, logits, anchors = random_case(21)
    image_hw = np.array([[480.0, 640.0], [333.0, 250.0]], np.float32)
    gap = logits[..., 1:].max(-1).astype(np.float64) - logits[..., 0]
    assert tuple((1 / (1 + np.exp(-gap)) > np.array(thresholds)[:, None]).sum(1).tolist()) == may_pass
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    passed = (exp / exp.sum(-1, keepdims=True))[..., 1:] > np.array(thresholds)[:, None, None]
    assert tuple(passed.sum((1, 2)).tolist()) == counts
    production = sized_equals_unsized(loc, logits, anchors, image_hw, thresholds, path)
    for b in range(2):
        expected = reference_postprocess(loc[b], logits[b], anchors, tuple(image_hw[b]), thresholds[b])
        assert expected
        assert_same(production, b, expected)


def test_one_image_with_one_anchor_too_many_scores_every_anchor(monkeypatch):
    """When one image has one more anchor that may pass than ``CANDIDATE_ANCHORS``, every anchor is
    scored: that image's last such anchor (the one a sized pass would leave out) is made a sure
    detection here, so leaving it out loses a detection the reference and ``candidate_slots=()`` keep."""
    from predictor.ssd import postprocess as module

    loc, logits, anchors = random_case(21)
    thresholds = (0.8, 0.8)
    gap = logits[..., 1:].max(-1).astype(np.float64) - logits[..., 0]
    may_pass = np.flatnonzero(1 / (1 + np.exp(-gap[1])) > thresholds[1])
    last = int(may_pass[-1])
    logits[1, last] = -5.0
    logits[1, last, 3] = 10.0  # softmax 0.9999 for class 3: the bound and the score both pass
    loc[1, last] = 0.0  # the anchor's own box: inside the image, positive size
    monkeypatch.setattr(module, "CANDIDATE_ANCHORS", len(may_pass) - 1)
    image_hw = np.array([[480.0, 640.0], [333.0, 250.0]], np.float32)
    production = sized_equals_unsized(loc, logits, anchors, image_hw, thresholds, every(96))
    expected = reference_postprocess(loc[1], logits[1], anchors, tuple(image_hw[1]), thresholds[1])
    assert any(d.score > 0.999 and d.label == 3 for d in expected)
    assert_same(production, 1, expected)


def test_a_slot_larger_than_the_scored_anchors_hold_is_shrunk_to_them():
    """One foreground class and 600 anchors: ``CANDIDATE_ANCHORS`` (256) scored anchors hold at most 256
    candidates, so a custom slot of 300 is sized to 256 there (``top_k`` of 300 out of 256 would fail);
    the detections are those of ``candidate_slots=()``."""
    loc, logits, anchors = random_case(5, anchors=600, classes=1)
    image_hw = np.array([[480.0, 640.0], [333.0, 250.0]], np.float32)
    production = sized_equals_unsized(
        loc, logits, anchors, image_hw, (0.9, 0.9), (False, 256, 256, 256), candidate_slots=(300,)
    )
    assert int(production["num_detections"].max()) > 0


def test_the_anchors_that_may_pass_come_first_in_ascending_order():
    """``_anchors_that_may_pass``: the anchors whose bound clears the threshold, in ascending index order
    (equal scores then keep the lower anchor first, as on the unsized path), then others; and their count."""
    from predictor.ssd.postprocess import _anchors_that_may_pass

    logits = np.zeros((1, 10, 3), np.float32)
    logits[0, :, 0] = 5.0  # background everywhere ...
    for anchor in (7, 2, 9, 4):
        logits[0, anchor] = [0.0, 6.0, 0.0]  # ... except these: class 1's bound sigmoid(6) = 0.9975
    idx, count = _anchors_that_may_pass(tf.constant(logits), tf.constant([0.5]), None, 6)
    assert idx.numpy()[0, :4].tolist() == [2, 4, 7, 9]
    assert set(idx.numpy()[0, 4:].tolist()) <= {0, 1, 3, 5, 6, 8}
    assert int(count) == 4
