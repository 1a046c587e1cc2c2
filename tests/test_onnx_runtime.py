"""``--runtime onnxruntime``: the network in ONNX Runtime (the project's ONNX export of it), the
post-processing the Detector's, answers like ``Detector.detect`` (TensorFlow) on the shipped demo model.

Tolerance (the same as ``--xla``'s, tests/test_precision_options.py): the same classes in the same
order, boxes within 0.01 px, scores within 1e-4. ONNX Runtime's kernels round differently from
TensorFlow's (network outputs within ~1e-5), nothing else differs: the post-processing is the same
TensorFlow function on the same candidates.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_fixtures import MODEL_NAME, b64, encode_image, start_server

from predictor.serving import codecs
from predictor.serving.model import SSDPredictor
from predictor.serving.options import ServingOptions, build_parser
from predictor.ssd.detector import Detector, ImageDetections

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

BOX_PX, SCORE = 0.01, 1e-4
#: (score threshold, NMS threshold, classes) per request; None: the model's default.
CONTROLS = [
    (None, None, None),
    (0.05, 0.9, None),
    (0.05, 0.2, ["square", "star"]),
    (0.3, None, [1, "circle"]),
]


@pytest.fixture(scope="module")
def tf_detector(demo_model_dir) -> Detector:
    return Detector.from_dir(str(demo_model_dir), max_batch_size=8)


@pytest.fixture(scope="module")
def ort_detector(tf_detector):
    from predictor.ssd.onnx_runtime import OrtDetector

    tf_detector.detect([np.zeros((8, 8, 3), np.uint8)])  # traced first: the count must not carry over
    return OrtDetector.from_detector(tf_detector, threads=2).open()


def assert_same(got: ImageDetections, ref: ImageDetections) -> None:
    """Same classes in the same order, boxes and scores within the tolerance."""
    assert got.classes.tolist() == ref.classes.tolist()
    np.testing.assert_allclose(got.scores, ref.scores, atol=SCORE, rtol=0)
    np.testing.assert_allclose(got.boxes.reshape(-1, 4), ref.boxes, atol=BOX_PX, rtol=0)


def test_ort_detector_matches_tensorflow_with_per_image_controls(tf_detector, ort_detector, shapes_images):
    rng = np.random.default_rng(3)
    s, classes = tf_detector.input_size, len(tf_detector.class_names)
    resized = [tf_detector.resize(im) for im in shapes_images]
    total = 0
    for n in (1, 3, 8):  # 3: the post-processing pads to bucket 4, the network runs 3 rows
        # the held-out images, then random pixels (many low-score candidates at these thresholds)
        images = np.stack([*resized, *rng.integers(0, 256, (n, s, s, 3)).astype(np.float32)][:n])
        hw = rng.uniform(50, 900, (n, 2)).astype(np.float32)
        thr = rng.uniform(0.01, 0.2, n).astype(np.float32)
        caps = rng.integers(1, 12, n).astype(np.int32)
        nms = rng.uniform(0.2, 0.9, n).astype(np.float32)
        mask = rng.random((n, classes)) < 0.7
        ref = tf_detector.run_batch(images, hw, thr, caps, nms, mask)
        got = ort_detector.run_batch(images, hw, thr, caps, nms, mask)
        assert got["num_detections"].tolist() == ref["num_detections"].tolist()
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
        for i, k in enumerate(ref["num_detections"].tolist()):
            assert_same(
                ImageDetections(got["boxes"][i, :k], got["scores"][i, :k], got["classes"][i, :k]),
                ImageDetections(ref["boxes"][i, :k], ref["scores"][i, :k], ref["classes"][i, :k]),
            )
            total += k
    assert total > 20  # the comparison had detections to compare
    assert ort_detector.trace_count == 1  # one post-processing trace for every batch size and control


def test_ort_detector_threads_do_not_spin(ort_detector):
    """The served session's idle intra-op threads sleep instead of busy-waiting: a server's decode
    threads and event loop share its cores (ONNX Runtime's ``session.intra_op.allow_spinning``)."""
    options = ort_detector.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_ort_options_that_only_tensorflow_has_are_refused(demo_model_dir):
    for flags in (["--xla"], ["--mixed_precision", "float16"]):
        args = build_parser().parse_args(["--runtime", "onnxruntime", *flags])
        model = SSDPredictor("ssd", ServingOptions.from_args(args, str(demo_model_dir)))
        try:
            with pytest.raises(ValueError, match="--runtime onnxruntime runs the float32 network"):
                model.build()
        finally:
            model.close()


@pytest.fixture(scope="module")
def ort_server(demo_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("ort_server") / "server.log"
    server = start_server(demo_model_dir, log_path, "--runtime", "onnxruntime", "--max_batch_size", "8")
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def _expected(detector: Detector, images, score=None, nms=None, classes=None) -> list[ImageDetections]:
    mask = codecs.class_mask(classes, detector.class_names)
    return detector.detect(images, score_threshold=score, nms_threshold=nms, class_mask=mask)


def test_served_with_onnxruntime_matches_the_tensorflow_detector(ort_server, tf_detector, shapes_images):
    log = ort_server.log()
    assert "runtime onnxruntime;" in log  # the start-up configuration line
    assert "runtime onnxruntime 1." in log and "CPUExecutionProvider" in log  # the session really ran
    # the batcher knows the network does not pad: it sends whole calls (tests/test_batcher_runtime.py)
    assert "the network runs the real images only (no padding): calls are not split for it" in log
    images = shapes_images[:4]
    pngs = [encode_image(im, "PNG") for im in images]
    seen = 0
    with httpx.Client(base_url=ort_server.url, timeout=120) as client:
        for score, nms, classes in CONTROLS:
            named = {"score_threshold": score, "nms_threshold": nms, "classes": classes}
            params = {k: v for k, v in named.items() if v is not None}
            body = {"instances": [b64(p) for p in pngs], "parameters": params}
            r = client.post(f"/v1/models/{MODEL_NAME}:predict", json=body)
            assert r.status_code == 200, r.text
            expected = _expected(tf_detector, images, score, nms, classes)
            for got, ref in zip(r.json()["predictions"], expected, strict=True):
                # V1 rounds scores to 4 decimals and coordinates to 2 (protocol/detections.py)
                boxes = np.reshape([[p[k] for k in ("xmin", "ymin", "xmax", "ymax")] for p in got], (-1, 4))
                scores = np.asarray([p["score"] for p in got], np.float32)
                got_classes = [p["class_id"] for p in got]
                assert got_classes == ref.classes.tolist()
                np.testing.assert_allclose(scores, ref.scores, atol=SCORE + 5e-5, rtol=0)
                np.testing.assert_allclose(boxes, ref.boxes, atol=BOX_PX + 5e-3, rtol=0)
                seen += len(got)
    assert seen > 10

    # gRPC (V2), one image, a class filter: the raw little-endian outputs
    ref = _expected(tf_detector, images[2:3], 0.05, 0.45, ["circle", "square"])[0]
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[pngs[2]])
    )
    params = {"score_threshold": "0.05", "nms_threshold": "0.45", "classes": "circle,square"}
    request = pb.ModelInferRequest(
        model_name=MODEL_NAME,
        inputs=[tensor],
        parameters={k: pb.InferParameter(string_param=v) for k, v in params.items()},
    )
    with grpc.insecure_channel(ort_server.grpc_target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    out = dict(zip([o.name for o in response.outputs], response.raw_output_contents, strict=True))
    assert np.frombuffer(out["detection_classes"], "<i4").tolist() == ref.classes.tolist()
    np.testing.assert_allclose(np.frombuffer(out["detection_scores"], "<f4"), ref.scores, atol=SCORE)
    np.testing.assert_allclose(
        np.frombuffer(out["detection_boxes"], "<f4").reshape(-1, 4), ref.boxes, atol=BOX_PX
    )
