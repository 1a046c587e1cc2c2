"""Request parsing and response encoding (no server, no TensorFlow)."""

from __future__ import annotations

import re
import struct

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from predictor.protocol.detections import V2_OUTPUTS
from predictor.serving import codecs
from predictor.serving.codecs import ImagePayload, ResponseDetections

NAMES = ("background", "cat", "dog")
LIMITS = {"max_batch_size": 4, "max_detections": 10}


def detections() -> ResponseDetections:
    """Two images: 2 detections and 0 detections, padded to D = 3."""
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [1.234, 2.345, 30.0049, 40.0]
    boxes[0, 1] = [5.0, 6.0, 7.5, 8.25]
    scores = np.array([[0.98771, 0.5, 0.0], [0.0, 0.0, 0.0]], np.float32)
    classes = np.array([[2, 1, 0], [0, 0, 0]], np.int32)
    return ResponseDetections(boxes, scores, classes, np.array([2, 0], np.int32))


# ----------------------------------------------------------------------------- V1 requests
def test_v1_forms():
    body = {
        "instances": ["AAAA", {"b64": "BBBB"}, {"image": {"b64": "CCCC"}}, {"image_bytes": {"b64": "DDDD"}}],
        "parameters": {"score_threshold": 0.25, "max_detections": 3},
    }
    req = codecs.parse_v1(body, **LIMITS)
    assert [p.data for p in req.images] == ["AAAA", "BBBB", "CCCC", "DDDD"]
    assert [p.field for p in req.images] == [f"instances[{i}]" for i in range(4)]
    assert all(p.is_base64 for p in req.images)
    assert (req.protocol, req.score_threshold, req.max_detections) == ("v1", 0.25, 3)


def test_v1_raw_body_and_json_bytes():
    raw = codecs.parse_v1(b"\xff\xd8jpeg", "image/jpeg", **LIMITS)
    assert raw.images == (ImagePayload("instances[0]", b"\xff\xd8jpeg", False),)
    as_json = codecs.parse_v1(b'{"instances": ["AAAA"]}', "application/json; charset=utf-8", **LIMITS)
    assert as_json.images[0].data == "AAAA"
    with pytest.raises(InvalidInput, match="invalid JSON body"):
        codecs.parse_v1(b"{", "application/json; charset=utf-8", **LIMITS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "expected a JSON object"),
        ("AAAA", "expected a JSON object"),
        ({}, 'missing "instances"'),
        ({"instances": "AAAA"}, "instances: expected a list"),
        ({"instances": []}, "instances: no images"),
        ({"instances": ["A"] * 5}, "5 images, the limit is 4"),
        ({"instances": ["A", None]}, "instances[1]: expected a base64 string"),
        ({"instances": [{"b64": 1}]}, "instances[0].b64: expected a base64 string"),
        ({"instances": [{"image": {"b64": "A", "x": 1}}]}, "instances[0].image"),
        ({"instances": [{}]}, "found none"),
        ({"instances": [{"b64": "A", "image": "B"}]}, "found b64 and image"),
        ({"instances": ["A"], "parameters": [1]}, "parameters: expected an object"),
    ],
)
def test_v1_errors(body, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        codecs.parse_v1(body, **LIMITS)


def test_v1_image_value_may_be_a_plain_string():
    req = codecs.parse_v1({"instances": [{"image": "AAAA"}]}, **LIMITS)
    assert req.images[0].data == "AAAA"


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, (None, None)),
        ({}, (None, None)),
        ({"score_threshold": 0}, (0.0, None)),
        ({"score_threshold": 1.0, "max_detections": 10}, (1.0, 10)),
        ({"score_threshold": "0.3", "max_detections": "2"}, (0.3, 2)),
        ({"max_detections": 4.0}, (None, 4)),
    ],
)
def test_parameters_valid(params, expected):
    assert codecs.parse_parameters(params, 10, strict=True) == expected


@pytest.mark.parametrize(
    "params",
    [
        {"score_threshold": -0.01},
        {"score_threshold": 1.01},
        {"score_threshold": float("nan")},
        {"score_threshold": True},
        {"score_threshold": "x"},
        {"score_threshold": [0.5]},
        {"max_detections": 0},
        {"max_detections": 11},
        {"max_detections": 1.5},
        {"max_detections": float("inf")},
        {"max_detections": False},
        {"other": 1},
    ],
)
def test_parameters_invalid(params):
    with pytest.raises(InvalidInput, match=r"^parameters"):
        codecs.parse_parameters(params, 10, strict=True)


def test_v2_parameters_ignore_protocol_keys():
    assert codecs.parse_parameters({"binary_data_output": True, "max_detections": 2}, 10, strict=False) == (
        None,
        2,
    )


def test_grpc_parameters():
    params = {
        "score_threshold": pb.InferParameter(string_param="0.4"),
        "max_detections": pb.InferParameter(int64_param=5),
        "flag": pb.InferParameter(bool_param=True),
    }
    assert codecs.grpc_parameters(params) == {"score_threshold": "0.4", "max_detections": 5, "flag": True}
    assert codecs.grpc_parameters(None) == {}


# ----------------------------------------------------------------------------- V2 requests
def v2_request(data, shape=None, datatype="BYTES", from_grpc=False, parameters=None, name="images"):
    shape = [len(data)] if shape is None else shape
    inp = InferInput(name, shape, datatype, data=data)
    return InferRequest("m", [inp], request_id="r1", from_grpc=from_grpc, parameters=parameters)


def test_v2_rest_and_grpc():
    rest = codecs.parse_v2(v2_request(["AAAA", "BBBB"], parameters={"score_threshold": 0.7}), **LIMITS)
    assert rest.protocol == "v2" and [p.data for p in rest.images] == ["AAAA", "BBBB"]
    assert rest.images[1].field == "images[1]" and rest.images[1].is_base64
    assert rest.score_threshold == 0.7 and rest.infer_request.id == "r1"
    grpc_req = codecs.parse_v2(
        v2_request(
            [b"\x89PNG"], from_grpc=True, parameters={"max_detections": pb.InferParameter(int64_param=3)}
        ),
        **LIMITS,
    )
    assert grpc_req.protocol == "grpc" and grpc_req.images[0] == ImagePayload("images[0]", b"\x89PNG", False)
    assert grpc_req.max_detections == 3
    nested = codecs.parse_v2(v2_request([["AAAA"], ["BBBB"]], shape=[2, 1]), **LIMITS)
    assert [p.data for p in nested.images] == ["AAAA", "BBBB"]


def test_v2_grpc_raw_contents():
    request = InferRequest(
        "m",
        [InferInput("images", [2], "BYTES")],
        raw_inputs=[struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)],
        from_grpc=True,
    )
    assert [p.data for p in codecs.parse_v2(request, **LIMITS).images] == [b"abc", b""]


@pytest.mark.parametrize(
    ("request_fn", "message"),
    [
        (lambda: v2_request([1.0], datatype="FP32"), "datatype must be BYTES"),
        (lambda: v2_request(["A", "B"], shape=[1, 2]), "shape must be [N]"),
        (lambda: v2_request(["A", "B"], shape=[3]), "needs 3 elements, got 2"),
        (lambda: v2_request([], shape=[0]), "no images"),
        (lambda: v2_request(["A"] * 5), "limit is 4"),
        (lambda: v2_request([5]), "images[0]: expected an image (base64 string or bytes), got a number"),
        (lambda: v2_request([None]), "images[0]: expected an image (base64 string or bytes), got null"),
        (lambda: v2_request(["A"], shape=[True]), "images: shape must be a list of integers"),
        (lambda: v2_request(["A"], shape=[1.0]), "images: shape must be a list of integers"),
        (lambda: v2_request(["A"], shape=[-1]), "images: no images"),
        (lambda: v2_request(["A"], shape=[10**30]), "images: 1000000000000000000000000000000 images"),
        (lambda: v2_request(["A"], parameters={"max_detections": 10**400}), "parameters.max_detections"),
        (lambda: v2_request(["A"], parameters={"max_detections": float("nan")}), "expected an integer"),
        (lambda: v2_request(["A"], parameters={"score_threshold": float("inf")}), "within [0, 1]"),
        (lambda: v2_request(["A"], parameters={"score_threshold": "1e999"}), "within [0, 1]"),
        (lambda: v2_request([["A", "B"]], shape=[1]), "nested data"),
        (lambda: InferRequest("m", []), "exactly one input"),
        (lambda: v2_request(["A"], parameters={"score_threshold": 3}), "score_threshold"),
    ],
)
def test_v2_errors(request_fn, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        codecs.parse_v2(request_fn(), **LIMITS)


@pytest.mark.parametrize("raw", [b"\x01\x00", struct.pack("<I", 10) + b"abc"])
def test_malformed_raw_bytes(raw):
    with pytest.raises(InvalidInput, match="malformed raw BYTES"):
        codecs.split_raw_bytes(raw, "images")


def test_payload_bytes():
    assert codecs.payload_bytes(ImagePayload("f", "aGVsbG8=", True), 100) == b"hello"
    assert codecs.payload_bytes(ImagePayload("f", b"raw", False), 100) == b"raw"
    # bytes of unknown kind: base64 text when they are nothing else, else the file itself
    assert codecs.payload_bytes(ImagePayload("f", b"aGVsbG8=\n", None), 100) == b"hello"
    assert codecs.payload_bytes(ImagePayload("f", b"data:image/png;base64,aGVsbG8=", None), 100) == b"hello"
    assert codecs.payload_bytes(ImagePayload("f", b"\x00\x01not text", None), 100) == b"\x00\x01not text"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF89a..", "GIF"),
        (b"GIF87a..", "GIF"),
        (b"BM\x00\x00", "BMP"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"/9j/4AAQSkZJRg==", None),  # base64 of a JPEG
        (b"iVBORw0KGgo=", None),  # base64 of a PNG
        (b"R0lGODlh", None),  # base64 of a GIF
        (b"Qk0=", None),  # base64 of a BMP
        (b"UklGRg==", None),  # base64 of a WebP
        (b"", None),
    ],
)
def test_image_signature_tells_files_from_their_base64(data, expected):
    assert codecs.image_signature(data) == expected
    kind = codecs.bytes_payload("x", data).is_base64
    assert kind is (False if expected else None)


def test_image_signature_of_real_files(shapes_images):
    import base64

    from serving_fixtures import encode_image

    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        data = encode_image(shapes_images[0], fmt)
        assert codecs.image_signature(data) == fmt
        assert codecs.image_signature(base64.b64encode(data)) is None


@pytest.mark.parametrize(
    ("body", "content_type", "is_json"),
    [
        (b'{"instances": []}', "application/json", True),
        (b'{"instances": []}', "application/json; charset=utf-8", True),
        (b'{"instances": []}', "application/cloudevents+json", True),
        (b"\xff\xd8", "application/json", True),  # says JSON: parsed as JSON (and refused)
        (b'{"instances": []}', "", True),
        (b' \n {"instances": []}', "application/x-www-form-urlencoded", True),
        (b'{"instances": []}', "text/plain", True),
        (b"\xff\xd8\xff", "", False),
        (b"\xff\xd8\xff", "application/x-www-form-urlencoded", False),
        (b"/9j/4AAQ", "", False),
        (b'{"instances": []}', "image/jpeg", False),
        (b'{"instances": []}', "application/octet-stream", False),
        (b"", "", False),
    ],
)
def test_v1_body_is_json(body, content_type, is_json):
    assert codecs.v1_body_is_json(body, content_type) is is_json


def test_v1_raw_body_without_content_type_is_one_image():
    for content_type in ("", "application/x-www-form-urlencoded", "application/octet-stream", "image/png"):
        req = codecs.parse_v1(b"\x89PNG\r\n\x1a\n", content_type, **LIMITS)
        assert req.images == (ImagePayload("instances[0]", b"\x89PNG\r\n\x1a\n", False),)
    req = codecs.parse_v1(b'{"instances": ["AAAA"]}', "application/x-www-form-urlencoded", **LIMITS)
    assert req.images == (ImagePayload("instances[0]", "AAAA", True),)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"instances": ["A"], "parameters": {"max_detections": ' + b"9" * 400 + b"}}", "invalid JSON body"),
        (b'{"instances": [NaN]}', "invalid JSON body"),
        (b'{"instances": ["A"], "parameters": {"score_threshold": Infinity}}', "invalid JSON body"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON body"),
        (
            b'{"instances": ["A"], "parameters": {"max_detections": 2.5}}',
            "max_detections: expected an integer",
        ),
        (b'{"instances": ["A"], "parameters": {"max_detections": 1e300}}', "max_detections: must be within"),
    ],
)
def test_v1_hostile_json_is_invalid_input(body, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        codecs.parse_v1(body, "application/json", **LIMITS)


# ----------------------------------------------------------------------------- responses
def test_encode_v1():
    out = orjson.loads(codecs.encode_v1(detections(), NAMES))
    assert out == {
        "predictions": [
            [
                {
                    "label": "dog",
                    "class_id": 2,
                    "score": 0.9877,
                    "xmin": 1.23,
                    "ymin": 2.35,
                    "xmax": 30.0,
                    "ymax": 40.0,
                },
                {
                    "label": "cat",
                    "class_id": 1,
                    "score": 0.5,
                    "xmin": 5.0,
                    "ymin": 6.0,
                    "xmax": 7.5,
                    "ymax": 8.25,
                },
            ],
            [],
        ]
    }


def test_encode_v2_rest():
    request = v2_request(["A", "B"])
    response = codecs.encode_v2(detections(), NAMES, "m", request)
    body, json_length = response.to_rest()
    assert json_length is None and body["id"] == "r1" and body["model_name"] == "m"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == [name for name, _ in V2_OUTPUTS]
    assert outputs["num_detections"]["data"] == [2, 0]
    assert outputs["detection_boxes"]["shape"] == [2, 2, 4]
    assert outputs["detection_scores"]["data"] == pytest.approx([0.98771, 0.5, 0, 0])
    assert outputs["detection_classes"]["data"] == [2, 1, 0, 0]
    assert outputs["detection_labels"]["data"] == ["dog", "cat", "", ""]
    assert outputs["detection_boxes"]["data"][8:] == [0.0] * 8


def test_encode_v2_rest_requested_outputs():
    request = v2_request(["A", "B"])
    request.request_outputs = [RequestedOutput("num_detections")]
    body, _ = codecs.encode_v2(detections(), NAMES, "m", request).to_rest()
    assert [o["name"] for o in body["outputs"]] == ["num_detections"]


def test_encode_v2_grpc_round_trip():
    request = v2_request([b"a", b"b"], from_grpc=True)
    message = codecs.encode_v2(detections(), NAMES, "m", request).to_grpc()
    assert len(message.raw_output_contents) == len(V2_OUTPUTS)
    arrays = {o.name: o.as_numpy() for o in InferResponse.from_grpc(message).outputs}
    assert arrays["num_detections"].tolist() == [2, 0]
    assert arrays["detection_boxes"].shape == (2, 2, 4) and arrays["detection_boxes"].dtype == np.float32
    assert arrays["detection_labels"].tolist() == [[b"dog", b"cat"], [b"", b""]]
    assert arrays["detection_classes"].dtype == np.int32


def test_encode_v2_with_no_detections_at_all():
    empty = ResponseDetections(
        np.zeros((1, 3, 4), np.float32), np.zeros((1, 3)), np.zeros((1, 3), np.int32), np.zeros(1)
    )
    body, _ = codecs.encode_v2(empty, NAMES, "m", v2_request(["A"])).to_rest()
    assert {o["name"]: o["shape"] for o in body["outputs"]}["detection_boxes"] == [1, 0, 4]
    message = codecs.encode_v2(empty, NAMES, "m", v2_request([b"a"], from_grpc=True)).to_grpc()
    assert InferResponse.from_grpc(message).outputs[-1].as_numpy().shape == (1, 0)


def test_metadata_types():
    assert codecs.input_types() == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert [t["name"] for t in codecs.output_types()] == [name for name, _ in V2_OUTPUTS]
