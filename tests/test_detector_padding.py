"""``Detector(pad_batches=False)`` (``--batch_padding exact``, the CPU's ``auto``): a detector that runs
each call at its exact size computes no padded image, still traces once, and detects what the padding
detector does; the flag reaches the detector and the batcher, and ``exact`` is refused with XLA."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
import tensorflow as tf
from serving_fixtures import b64, encode_image

from predictor.serving.model import SSDPredictor, pads_batches
from predictor.serving.options import ServingOptions, build_parser
from predictor.ssd.detector import Detector


def recorded(det: Detector) -> list[int]:
    """Batch sizes the detector's traced function is called with from now on."""
    fn, sizes = det._graph, []

    def recording(images, *args):
        sizes.append(int(images.shape[0]))
        return fn(images, *args)

    det._graph = recording
    return sizes


@pytest.fixture(scope="module")
def detectors(random_tiny_model_dir) -> tuple[Detector, Detector]:
    """(padding, exact) detectors on the same network, both warmed up."""
    padded = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=8)
    exact = Detector(padded.config, padded.model, max_batch_size=8, pad_batches=False)
    padded.warmup()
    exact.warmup()
    return padded, exact


def test_an_unpadded_call_computes_its_own_rows_only(detectors, shapes_images):
    """Calls of 7, 3, 5, 1 and 9 images run the network on 7, 3, 5, 1, then 8 + 1 rows (the largest
    bucket still caps a call), where the padding detector runs 8, 4, 8, 1, 8 + 1; one trace serves all."""
    padded, exact = detectors
    assert padded.pads_to_bucket is True and exact.pads_to_bucket is False
    images = [padded.resize(im) for im in shapes_images]
    sizes = {"padded": recorded(padded), "exact": recorded(exact)}
    for n in (7, 3, 5, 1, 9):
        rows = [images[i % len(images)] for i in range(n)]
        hw = np.asarray([shapes_images[i % len(images)].shape[:2] for i in range(n)], np.float32)
        ran = len(sizes["padded"]), len(sizes["exact"])
        out_p, out_e = padded.run_batch(rows, hw), exact.run_batch(rows, hw)
        # rows_computed (the ssd_computed_images_total increment) is what the network really ran
        assert padded.rows_computed(n) == sum(sizes["padded"][ran[0] :])
        assert exact.rows_computed(n) == sum(sizes["exact"][ran[1] :])
        assert out_e["num_detections"].shape == (n,) and out_p["num_detections"].shape == (n,)
        assert out_e["num_detections"].tolist() == out_p["num_detections"].tolist()
        assert sum(out_e["num_detections"]) > 0
        np.testing.assert_array_equal(out_e["classes"], out_p["classes"])
        np.testing.assert_allclose(out_e["scores"], out_p["scores"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out_e["boxes"], out_p["boxes"], rtol=1e-5, atol=1e-3)
    assert sizes == {"padded": [8, 4, 8, 1, 8, 1], "exact": [7, 3, 5, 1, 8, 1]}
    assert exact.trace_count == 1 and padded.trace_count == 1


def test_xla_needs_padding(random_tiny_model_dir, monkeypatch):
    """XLA compiles per batch size: the detector and ``--batch_padding exact`` refuse it without padding,
    ``auto`` pads with it, and on a GPU; on a CPU it does not pad."""
    with pytest.raises(ValueError, match="pad_batches"):
        Detector.from_dir(str(random_tiny_model_dir), xla=True, pad_batches=False)
    model = predictor_from_flags(random_tiny_model_dir, ["--xla", "--batch_padding", "exact"])
    with pytest.raises(ValueError, match=r"--batch_padding exact .* --xla off"):
        model.build()
    assert pads_batches(predictor_from_flags(random_tiny_model_dir, ["--xla"]).options) is True
    plain = predictor_from_flags(random_tiny_model_dir, []).options
    with monkeypatch.context() as m:  # whatever devices this machine has: auto follows TensorFlow's list
        m.setattr(tf.config, "list_logical_devices", lambda kind=None: [])
        assert pads_batches(plain) is False  # a CPU
        m.setattr(tf.config, "list_logical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
        assert pads_batches(plain) is True  # a GPU
    with pytest.raises(SystemExit):
        predictor_from_flags(random_tiny_model_dir, ["--batch_padding", "none"])


@pytest.mark.parametrize(("physical", "logical", "pads"), [(1, 0, False), (0, 0, False), (1, 1, True)])
def test_auto_pads_only_on_a_gpu_tensorflow_uses(random_tiny_model_dir, monkeypatch, physical, logical, pads):
    """``auto`` follows TensorFlow's *logical* GPUs: a GPU it lists as physical but will not run ops on
    (hidden with ``tf.config.set_visible_devices``, or one TensorFlow does not use)
    leaves calls exact, as on a CPU; and ``--xla`` on such a host is not refused for want of libdevice."""
    from predictor.ssd import detector as detector_module

    def devices(n: int):
        return lambda kind=None: [f"/device:GPU:{i}" for i in range(n)] if kind == "GPU" else []

    monkeypatch.setattr(tf.config, "list_physical_devices", devices(physical))
    monkeypatch.setattr(tf.config, "list_logical_devices", devices(logical))
    assert pads_batches(predictor_from_flags(random_tiny_model_dir, []).options) is pads
    monkeypatch.setattr(detector_module, "find_libdevice", lambda *_: None)
    if logical:
        with pytest.raises(RuntimeError, match="libdevice"):
            Detector.from_dir(str(random_tiny_model_dir), xla=True)
    else:
        assert Detector.from_dir(str(random_tiny_model_dir), xla=True).xla is True


def predictor_from_flags(model_dir, flags: list[str]) -> SSDPredictor:
    args = build_parser().parse_args(["--max_batch_size", "4", *flags])
    return SSDPredictor("ssd", ServingOptions.from_args(args, str(model_dir)))


@pytest.mark.parametrize(
    ("flags", "pads", "computed"),
    [
        (["--batch_padding", "bucket"], True, [4]),
        (["--batch_padding", "exact"], False, [3]),
        ([], False, [3]),
    ],
)
def test_the_flag_reaches_the_detector_and_the_batcher(
    random_tiny_model_dir, shapes_images, flags, pads, computed, monkeypatch, caplog
):
    """A V1 request of three images through the KServe pipeline: the padding server computes bucket 4,
    the one with ``--batch_padding exact`` (the CPU's default, ``auto``) three rows, and both answer the
    detector's own detections; ``ssd_computed_images_total`` grows by the rows computed (4 or 3) while
    ``ssd_batch_size_sum`` grows by the 3 images. The server logs which, the line the planner and
    ``bench.simulate_check`` read (``plan.measured_padding``)."""
    import logging

    from prometheus_client import REGISTRY

    from predictor.tools.plan import measured_padding

    caplog.set_level(logging.INFO, logger="predictor.serving.model")

    def metric(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [])  # a CPU, here or not
    model = predictor_from_flags(random_tiny_model_dir, flags)
    try:
        assert model.load()
        detector = model.build()
        assert detector.pads_to_bucket is pads and model._batcher.pads_to_bucket is pads
        assert measured_padding(caplog.text) == ("bucket" if pads else "exact")
        sizes = recorded(detector)
        expected = detector.detect(shapes_images[:3])
        assert sizes == computed
        body = {"instances": [b64(encode_image(im, "PNG")) for im in shapes_images[:3]]}
        before = metric("ssd_computed_images_total"), metric("ssd_batch_size_sum")
        response, _ = asyncio.run(model(body, headers={"content-type": "application/json"}))
        assert sizes == computed * 2
        assert metric("ssd_computed_images_total") - before[0] == computed[0]
        assert metric("ssd_batch_size_sum") - before[1] == 3
        served = orjson.loads(response)["predictions"]
        assert sum(len(s) for s in served) > 0
        for s, ref in zip(served, expected, strict=True):
            assert [d["class_id"] for d in s] == ref.classes.tolist()
            np.testing.assert_allclose([d["score"] for d in s], ref.scores, atol=6e-5)
    finally:
        model.close()


def test_onnx_runtime_never_pads_the_network(detectors):
    """``--runtime onnxruntime`` runs the network on the real rows whatever ``--batch_padding`` says:
    built from a padding detector, it still tells the batcher it does not pad."""
    from predictor.ssd.onnx_runtime import OrtDetector

    padded, exact = detectors
    assert OrtDetector.from_detector(padded).pads_to_bucket is False
    assert OrtDetector.from_detector(exact).pads_to_bucket is False
    # ssd_computed_images_total counts the real images only; 9 > the largest bucket (8): 8 + 1 rows
    assert [OrtDetector.from_detector(padded).rows_computed(n) for n in (3, 9)] == [3, 9]
    assert [padded.rows_computed(n) for n in (3, 9, 17)] == [4, 9, 17]
    assert [padded.rows_computed(n) for n in (5, 11)] == [8, 8 + 4]  # buckets 1, 2, 4, 8
