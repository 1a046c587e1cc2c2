"""Per-request detection controls: the NMS IoU threshold and the class filter, from the compiled
post-processing up to the V1, V2 REST and gRPC APIs of a real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from serving_fixtures import MODEL_NAME, b64, encode_image
from test_postprocess import _setup

from predictor.serving import codecs
from predictor.ssd.detector import Detector
from predictor.ssd.postprocess import postprocess

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"


# ----------------------------------------------------------------------------- compiled post-processing
def test_nms_threshold_per_image_in_one_batch():
    anchors, logits, loc = _setup()  # A (class 1, 0.9) and B (class 1, 0.8) overlap with IoU ~0.95
    det = postprocess(
        np.concatenate([loc, loc]),
        np.concatenate([logits, logits]),
        anchors,
        [[100.0, 200.0]] * 2,
        0.5,
        nms_threshold=[0.45, 0.99],
        max_detections=5,
    )
    assert det.num_detections.numpy().tolist() == [3, 4]
    np.testing.assert_allclose(det.scores[0, :3], [0.9, 0.7, 0.6], atol=1e-5)
    np.testing.assert_allclose(det.scores[1, :4], [0.9, 0.8, 0.7, 0.6], atol=1e-5)


def test_class_mask_filters_before_top_k():
    anchors, logits, loc = _setup()
    # top_k=1: without the mask the single candidate is A (class 1, 0.9); the mask must not let excluded
    # classes use up the candidate budget, so image 0 gets F (class 3, 0.6).
    mask = np.array([[False, False, False, True], [True, True, True, True]])
    det = postprocess(
        np.concatenate([loc, loc]),
        np.concatenate([logits, logits]),
        anchors,
        [[100.0, 200.0]] * 2,
        0.5,
        class_mask=mask,
        top_k=1,
        max_detections=5,
    )
    assert det.num_detections.numpy().tolist() == [1, 1]
    assert det.classes.numpy()[:, 0].tolist() == [3, 1]
    np.testing.assert_allclose(det.scores.numpy()[:, 0], [0.6, 0.9], atol=1e-5)


def test_background_column_of_the_mask_is_ignored():
    anchors, logits, loc = _setup()
    all_fg = postprocess(loc, logits, anchors, [[100.0, 200.0]], 0.5, class_mask=[[False, True, True, True]])
    assert int(all_fg.num_detections[0]) == 3


# ----------------------------------------------------------------------------- detector
@pytest.fixture(scope="module")
def detector(random_tiny_model_dir) -> Detector:
    det = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=4)
    det.warmup()
    return det


def test_controls_never_retrace(detector, shapes_images):
    traced = detector.trace_count
    c = len(detector.class_names)
    for n, nms, allowed in [(1, 0.1, [1]), (3, 0.9, [2, 3]), (4, 0.45, list(range(1, c))), (2, 1.0, [5])]:
        mask = np.isin(np.arange(c), allowed)
        for d in detector.detect(shapes_images[:n], score_threshold=0.05, nms_threshold=nms, class_mask=mask):
            assert set(d.classes.tolist()) <= set(allowed)
    assert detector.trace_count == traced


def test_class_filter_equals_filtering_the_full_answer_when_nothing_is_cut(detector, shapes_images):
    image = shapes_images[0]
    full = detector.detect([image], score_threshold=0.6)[0]
    assert len(full.scores) < detector.top_k and len(full.scores) < detector.max_detections
    wanted = int(full.classes[0])
    mask = np.arange(len(detector.class_names)) == wanted
    only = detector.detect([image], score_threshold=0.6, class_mask=mask)[0]
    keep = full.classes == wanted
    np.testing.assert_array_equal(only.classes, full.classes[keep])
    np.testing.assert_allclose(only.scores, full.scores[keep], atol=1e-6)
    np.testing.assert_allclose(only.boxes, full.boxes[keep], atol=1e-3)


def test_higher_nms_threshold_keeps_more_boxes(detector, shapes_images):
    image = shapes_images[1]
    strict = detector.detect([image], score_threshold=0.9, nms_threshold=0.1)[0]
    loose = detector.detect([image], score_threshold=0.9, nms_threshold=0.95)[0]
    assert len(strict.scores) < len(loose.scores) < detector.max_detections


# ----------------------------------------------------------------------------- request parsing
CLASS_NAMES = ("background", "circle", "square", "triangle")


@pytest.mark.parametrize(
    ("params", "nms", "classes"),
    [
        ({}, None, None),
        ({"nms_threshold": 0.3}, 0.3, None),
        ({"nms_threshold": "1"}, 1.0, None),
        ({"classes": ["circle", 3]}, None, ("circle", 3)),
        ({"classes": "circle, 2"}, None, ("circle", 2)),
        ({"classes": 2}, None, (2,)),
    ],
)
def test_parse_controls(params, nms, classes):
    got = codecs.parse_controls(params, 10, strict=False)
    assert (got.nms_threshold, got.classes) == (nms, classes)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"nms_threshold": 1.5}, "parameters.nms_threshold"),
        ({"nms_threshold": -0.1}, "parameters.nms_threshold"),
        ({"nms_threshold": "x"}, "parameters.nms_threshold"),
        ({"nms_threshold": True}, "parameters.nms_threshold"),
        ({"nms_threshold": float("nan")}, "parameters.nms_threshold"),
        ({"classes": []}, "parameters.classes"),
        ({"classes": ""}, r"parameters.classes\[0\]"),
        ({"classes": {"a": 1}}, "parameters.classes"),
        ({"classes": ["circle", None]}, r"parameters.classes\[1\]"),
        ({"classes": [True]}, r"parameters.classes\[0\]"),
        ({"classes": ["x"] * 1001}, "parameters.classes"),
    ],
)
def test_bad_controls_name_the_field(params, field):
    with pytest.raises(InvalidInput, match=field):
        codecs.parse_controls(params, 10, strict=False)


def test_class_mask_resolves_names_and_ids():
    assert codecs.class_mask(None, CLASS_NAMES) is None
    assert codecs.class_mask(("square", 1), CLASS_NAMES).tolist() == [False, True, True, False]
    with pytest.raises(InvalidInput, match=r"parameters.classes\[1\]: unknown class 'dog' \(known: circle"):
        codecs.class_mask(("circle", "dog"), CLASS_NAMES)
    with pytest.raises(InvalidInput, match=r"parameters.classes\[0\]: class id 4 is out of range 1..3"):
        codecs.class_mask((4,), CLASS_NAMES)
    with pytest.raises(InvalidInput, match=r"class id 0"):
        codecs.class_mask((0,), CLASS_NAMES)


def test_v1_strict_keys_accept_the_new_parameters():
    body = {"instances": ["AAAA"], "parameters": {"nms_threshold": 0.6, "classes": ["circle"]}}
    req = codecs.parse_v1(body, max_batch_size=4, max_detections=10)
    assert (req.controls.nms_threshold, req.controls.classes) == (0.6, ("circle",))


# ----------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def png(shapes_images) -> bytes:
    return encode_image(shapes_images[1], "PNG")


def _expected(direct_detector, image, nms=None, classes=None):
    mask = codecs.class_mask(classes, direct_detector.class_names)
    return direct_detector.detect([image], score_threshold=0.05, nms_threshold=nms, class_mask=mask)[0]


def _grpc_request(png: bytes, params: dict[str, str]) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[png])
    )
    parameters = {k: pb.InferParameter(string_param=v) for k, v in params.items()}
    return pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor], parameters=parameters)


def test_v1_controls_match_the_direct_detector(client, direct_detector, shapes_images, png):
    for nms, classes in [(0.9, None), (None, ["square", "star"]), (0.2, [1, "triangle"])]:
        params = {"score_threshold": 0.05, **({"nms_threshold": nms} if nms is not None else {})}
        if classes is not None:
            params["classes"] = classes
        r = client.post(V1, json={"instances": [b64(png)], "parameters": params})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]
        expected = _expected(direct_detector, shapes_images[1], nms, classes)
        assert len(got) == len(expected.scores) > 0
        assert [p["class_id"] for p in got] == expected.classes.tolist()
        np.testing.assert_allclose([p["score"] for p in got], expected.scores, atol=1e-4)


def test_v2_rest_and_grpc_controls(client, stub, direct_detector, shapes_images, png):
    expected = _expected(direct_detector, shapes_images[1], 0.8, ["circle", "cross"])
    assert len(expected.scores) > 0
    body = {
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(png)]}],
        # V2 parameter values are scalars (kserve/protocol/rest/v2_datamodels.py InferParameter): a string
        "parameters": {"score_threshold": 0.05, "nms_threshold": 0.8, "classes": "circle,cross"},
    }
    r = client.post(V2, json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert outputs["detection_classes"] == expected.classes.tolist()
    params = {"score_threshold": "0.05", "nms_threshold": "0.8", "classes": "circle,cross"}
    response = stub.ModelInfer(_grpc_request(png, params), timeout=60)
    names = [o.name for o in response.outputs]
    classes = np.frombuffer(response.raw_output_contents[names.index("detection_classes")], "<i4")
    assert classes.tolist() == expected.classes.tolist()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"nms_threshold": 2}, "parameters.nms_threshold"),
        ({"classes": ["circle", "dog"]}, r"parameters.classes\[1\]: unknown class 'dog'"),
        ({"classes": [99]}, r"parameters.classes\[0\]: class id 99"),
        ({"classes": []}, "parameters.classes"),
    ],
)
def test_bad_controls_get_400_on_every_protocol(client, stub, png, params, field):
    import re

    r = client.post(V1, json={"instances": [b64(png)], "parameters": params})
    assert r.status_code == 400 and re.search(field, r.json()["error"]), r.text
    # V2 REST and gRPC parameters are scalars: the class filter travels as "a,b"
    scalars = {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in params.items()}
    body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(png)]}]}
    r = client.post(V2, json={**body, "parameters": scalars})
    assert r.status_code == 400 and re.search(field, r.json()["error"]), r.text
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(_grpc_request(png, scalars), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(field, info.value.details()), info.value.details()
