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

from predictor.protocol import tensors
from predictor.protocol.wire import V2_OUTPUTS
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
    assert (req.protocol, req.controls) == ("v1", codecs.Controls(score_threshold=0.25, max_detections=3))


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
    assert codecs.parse_controls(params, 10, strict=True) == codecs.Controls(*expected)


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
        codecs.parse_controls(params, 10, strict=True)


def test_v2_parameters_ignore_protocol_keys():
    params = {"binary_data_output": True, "max_detections": 2}
    assert codecs.parse_controls(params, 10, strict=False) == codecs.Controls(max_detections=2)


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
    assert rest.controls.score_threshold == 0.7 and rest.infer_request.id == "r1"
    grpc_req = codecs.parse_v2(
        v2_request(
            [b"\x89PNG"], from_grpc=True, parameters={"max_detections": pb.InferParameter(int64_param=3)}
        ),
        **LIMITS,
    )
    assert grpc_req.protocol == "grpc" and grpc_req.images[0] == ImagePayload("images[0]", b"\x89PNG", False)
    assert grpc_req.controls == codecs.Controls(max_detections=3)
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


# ----------------------------------------------------------------------------- exact values
# Whole messages and whole parsed requests, not fragments: a changed word, bound or field shows.
KNOWN = "score_threshold, max_detections, nms_threshold, classes"


def reason(fn, *args, **kwargs) -> str:
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    return info.value.reason


def test_protocol_of_and_parse_request_dispatch():
    assert codecs.protocol_of(v2_request(["A"])) == "v2"
    assert codecs.protocol_of(v2_request([b"A"], from_grpc=True)) == "grpc"
    assert codecs.protocol_of({"instances": []}) == "v1" and codecs.protocol_of(b"") == "v1"
    v2 = codecs.parse_request(v2_request(["A"], parameters={"max_detections": 10}), None, **LIMITS)
    assert (v2.protocol, v2.controls.max_detections) == ("v2", 10)
    assert reason(codecs.parse_request, v2_request(["A"] * 5), None, **LIMITS) == (
        "images: 5 images, the limit is 4 per request"
    )
    assert reason(
        codecs.parse_request, v2_request(["A"], parameters={"max_detections": 11}), None, **LIMITS
    ) == ("parameters.max_detections: must be within 1..10, got 11")
    body = b'{"instances": ["AAAA"], "parameters": {"max_detections": 10}}'
    # the Content-Type header decides: an image media type makes even "{..." one image
    as_image = codecs.parse_request(body, {"content-type": "image/png"}, **LIMITS)
    assert as_image == codecs.ParsedRequest("v1", (ImagePayload("instances[0]", body, None),))
    as_json = codecs.parse_request(body, {"x-other": "1"}, **LIMITS)
    assert as_json == codecs.ParsedRequest(
        "v1", (ImagePayload("instances[0]", "AAAA", True),), codecs.Controls(max_detections=10)
    )
    assert codecs.parse_request(body, None, **LIMITS) == as_json
    assert reason(codecs.parse_request, {"instances": ["A"] * 5}, None, **LIMITS) == (
        "instances: 5 images, the limit is 4 per request"
    )
    assert reason(
        codecs.parse_request, {"instances": ["A"], "parameters": {"max_detections": 11}}, None, **LIMITS
    )


def test_v1_whole_parsed_request():
    body = {
        "instances": [{"image_bytes": {"b64": "QQ=="}}],
        "parameters": {"score_threshold": 0.5, "max_detections": 2, "nms_threshold": 0.25, "classes": "cat"},
    }
    assert codecs.parse_v1(body, **LIMITS) == codecs.ParsedRequest(
        "v1", (ImagePayload("instances[0]", "QQ==", True),), codecs.Controls(0.5, 2, 0.25, ("cat",))
    )
    for raw in (bytearray(b"\xff\xd8x"), memoryview(b"\xff\xd8x")):
        (payload,) = codecs.parse_v1(raw, "", **LIMITS).images
        assert type(payload.data) is bytes and payload == ImagePayload("instances[0]", b"\xff\xd8x", False)
    parsed = codecs.parse_v1(bytearray(b' {"instances": ["B"]}'), "", **LIMITS)
    assert parsed.images == (ImagePayload("instances[0]", "B", True),)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], 'expected a JSON object {"instances": [...]}, got a list'),
        ({}, 'missing "instances" (a list of images); the body has keys: none'),
        ({"b": 1, "a": 2}, 'missing "instances" (a list of images); the body has keys: a, b'),
        ({"k" * 300: 1}, 'missing "instances" (a list of images); the body has keys: ' + "k" * 200),
        ({"instances": {}}, "instances: expected a list of images, got an object"),
        ({"instances": []}, "instances: no images"),
        ({"instances": [1]}, 'instances[0]: expected a base64 string or {"b64": "..."}, got a number'),
        (
            {"instances": [{}]},
            'instances[0]: expected exactly one of "b64", "image", "image_bytes" (found none)',
        ),
        (
            {"instances": [{"b64": "A", "image": "B", "image_bytes": "C"}]},
            'instances[0]: expected exactly one of "b64", "image", "image_bytes" '
            "(found b64 and image and image_bytes)",
        ),
        ({"instances": ["A", {"image": {"x": "A"}}]}, 'instances[1].image: expected {"b64": "<base64>"}'),
        (
            {"instances": [{"image": {"b64": "A", "x": 1}}]},
            'instances[0].image: expected {"b64": "<base64>"}',
        ),
        (
            {"instances": [{"image_bytes": {"b64": 5}}]},
            "instances[0].image_bytes.b64: expected a base64 string, got a number",
        ),
        ({"instances": [{"b64": {"b64": "A"}}]}, "instances[0].b64: expected a base64 string, got an object"),
        ({"instances": [{"image": True}]}, "instances[0].image: expected a base64 string, got a boolean"),
        (
            {"instances": ["A"], "parameters": {"zz": 1, "aa": 2}},
            f"parameters: unknown key 'aa' (known: {KNOWN})",
        ),
        (
            {"instances": ["A"], "parameters": {"q" * 100: 1}},
            f"parameters: unknown key {'q' * 64!r} (known: {KNOWN})",
        ),
        ({"instances": ["A"], "parameters": "x"}, "parameters: expected an object, got a string"),
        (
            {"instances": ["A"], "parameters": {"nms_threshold": 2}},
            "parameters.nms_threshold: must be within [0, 1], got 2.0",
        ),
        (
            {"instances": ["A"], "parameters": {"classes": []}},
            "parameters.classes: expected at least one class name or id",
        ),
    ],
)
def test_v1_exact_errors(body, message):
    assert reason(codecs.parse_v1, body, **LIMITS) == message


@pytest.mark.parametrize(
    ("body", "content_type", "is_json"),
    [
        (b"\xff\xd8", "Application/JSON", True),
        (b'{"a": 1}', " IMAGE/PNG ; q=1", False),
        (b'{"a": 1}', "Application/Octet-Stream", False),
        (
            b'\t\r\n{"a": 1}',
            "text/plain; charset=json",
            True,
        ),  # parameters do not count, leading space does not
        (b"x{", "text/plain", False),
    ],
)
def test_v1_body_is_json_media_type_normalised(body, content_type, is_json):
    assert codecs.v1_body_is_json(body, content_type) is is_json


def test_load_json_message():
    assert reason(codecs.load_json, b"{", "w" * 400) == "invalid JSON " + "w" * 287  # capped at 300
    assert reason(codecs.load_json, b"{", "inference header").startswith("invalid JSON inference header: ")
    assert reason(codecs.load_json, b"[1,]").startswith("invalid JSON body: ")
    assert codecs.load_json(memoryview(b'{"a": [1, 2.5]}')) == {"a": [1, 2.5]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"RIFF\x00\x00\x00\x00WEBX", None),
        (b"RIFX\x00\x00\x00\x00WEBP", None),
        (b"RIFF\x00\x00\x00\x00WEBPVP8L" + b"\x00" * 100, "WEBP"),
        (b"xxBM", None),  # signatures are prefixes
        (bytearray(b"\x89PNG\r\n"), "PNG"),
        (memoryview(b"GIF87a"), "GIF"),
    ],
)
def test_image_signature_edges(data, expected):
    assert codecs.image_signature(data) == expected


def test_v2_whole_parsed_requests():
    rest = v2_request(
        ["QQ==", "Qg=="],
        parameters={
            "score_threshold": "0.5",
            "max_detections": 3,
            "nms_threshold": 0.7,
            "classes": ["cat", 2],
        },
    )
    assert codecs.parse_v2(rest, **LIMITS) == codecs.ParsedRequest(
        "v2",
        (ImagePayload("images[0]", "QQ==", True), ImagePayload("images[1]", "Qg==", True)),
        codecs.Controls(0.5, 3, 0.7, ("cat", 2)), rest,
    )  # fmt: skip
    grpc_params = {
        "nms_threshold": pb.InferParameter(string_param="0.2"),
        "classes": pb.InferParameter(string_param="dog"),
    }
    grpc_req = v2_request([bytearray(b"QQ=="), "Qg=="], from_grpc=True, parameters=grpc_params, name="x" * 80)
    parsed = codecs.parse_v2(grpc_req, **LIMITS)
    assert parsed == codecs.ParsedRequest(
        "grpc",
        (ImagePayload("x" * 64 + "[0]", b"QQ==", None), ImagePayload("x" * 64 + "[1]", "Qg==", True)),
        codecs.Controls(None, None, 0.2, ("dog",)), grpc_req,
    )  # fmt: skip
    assert type(parsed.images[0].data) is bytes
    # a single element given bare (not in a list) is one image
    assert codecs.parse_v2(v2_request("QQ==", shape=[1]), **LIMITS).images == (
        ImagePayload("images[0]", "QQ==", True),
    )
    assert (
        codecs.parse_v2(v2_request([b"QQ=="], shape=[1, 1], name=""), **LIMITS).images[0].field
        == "inputs[0][0]"
    )


@pytest.mark.parametrize(
    ("request_fn", "message"),
    [
        (lambda: InferRequest("m", []), "expected exactly one input (BYTES, shape [N]), got 0"),
        (
            lambda: InferRequest("m", [InferInput("a", [1], "BYTES", ["A"])] * 2),
            "expected exactly one input (BYTES, shape [N]), got 2",
        ),
        (
            lambda: v2_request([1.0], datatype="FP32"),
            "images: datatype must be BYTES (encoded images), got 'FP32'",
        ),
        (
            lambda: v2_request([1.0], datatype="FP32", name=""),
            "inputs[0]: datatype must be BYTES (encoded images), got 'FP32'",
        ),
        (lambda: v2_request(["A"], shape="1"), "images: shape must be a list of integers, got '1'"),
        (lambda: v2_request(["A"], shape=5), "images: shape must be a list of integers, got 5"),
        (lambda: v2_request(["A"], shape=[]), "images: shape must be [N] (or [N, 1]), got []"),
        (lambda: v2_request(["A"], shape=[1, 2]), "images: shape must be [N] (or [N, 1]), got [1, 2]"),
        (lambda: v2_request(["A"], shape=[1, 1, 1]), "images: shape must be [N] (or [N, 1]), got [1, 1, 1]"),
        (lambda: v2_request(["A"], shape=[0]), "images: no images"),
        (lambda: v2_request(["A"] * 5), "images: 5 images, the limit is 4 per request"),
        (lambda: v2_request(["A", "B"], shape=[3]), "images: shape [3] needs 3 elements, got 2"),
        (lambda: v2_request(["A", 5]), "images[1]: expected an image (base64 string or bytes), got a number"),
        (
            lambda: v2_request([["A"], ["B", "C"]], shape=[2, 1]),
            "images: nested data must be [[image], [image], ...]",
        ),
        (lambda: v2_request(None, shape=[1]), "images: no data"),
        (
            lambda: v2_request(["A"], parameters={"score_threshold": " x "}),
            "parameters.score_threshold: expected a number, got ' x '",
        ),
        (
            lambda: v2_request(["A"], parameters={"classes": {}}),
            "parameters.classes: expected a list of class names or ids, got an object",
        ),
    ],
)
def test_v2_exact_errors(request_fn, message):
    assert reason(codecs.parse_v2, request_fn(), **LIMITS) == message


def uint8_request(shape, data=None, raw=None, from_grpc=False, parameters=None):
    inp = InferInput("px", shape, "UINT8", data=data)
    raw_inputs = None if raw is None else [raw]
    return InferRequest("m", [inp], raw_inputs=raw_inputs, from_grpc=from_grpc, parameters=parameters)


def test_uint8_whole_parsed_requests():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)
    parsed = codecs.parse_v2(uint8_request([2, 2, 2, 3], data=pixels.ravel().tolist()), **LIMITS)
    assert parsed.protocol == "v2" and [p.field for p in parsed.images] == ["px[0]", "px[1]"]
    for i in range(2):
        assert parsed.images[i].pixels.dtype == np.uint8
        np.testing.assert_array_equal(parsed.images[i].pixels, pixels[i])
    nested = codecs.parse_v2(
        uint8_request(
            [2, 2, 2, 3], data=pixels.tolist(), parameters={"score_threshold": 0.5, "max_detections": 2}
        ),
        **LIMITS,
    )
    np.testing.assert_array_equal(nested.images[1].pixels, pixels[1])
    assert nested.controls == codecs.Controls(0.5, 2)
    grpc_params = {"max_detections": pb.InferParameter(int64_param=4)}
    raw = codecs.parse_v2(
        uint8_request([2, 2, 2, 3], raw=pixels.tobytes(), from_grpc=True, parameters=grpc_params), **LIMITS
    )
    assert raw.protocol == "grpc" and raw.controls == codecs.Controls(max_detections=4)
    np.testing.assert_array_equal(raw.images[1].pixels, pixels[1])
    extremes = codecs.parse_v2(uint8_request([1, 1, 1, 3], data=[0, 255, 7]), **LIMITS)
    assert extremes.images[0].pixels.tolist() == [[[0, 255, 7]]]


@pytest.mark.parametrize(
    ("shape", "data", "raw", "message"),
    [
        ("ab", [1], None, "px: shape must be a list of integers, got 'ab'"),
        ([1, None, 1, 3], [1], None, "px: shape must be a list of integers, got [1, None, 1, 3]"),
        ([1, 1, 3], [1, 2, 3], None, "px: UINT8 images must have shape [N, H, W, 3], got [1, 1, 3]"),
        ([1, 1, 1, 4], [1, 2, 3, 4], None, "px: UINT8 images must have shape [N, H, W, 3], got [1, 1, 1, 4]"),
        ([1, -1, 1, 3], [1, 2, 3], None, "px: UINT8 images must have shape [N, H, W, 3], got [1, -1, 1, 3]"),
        ([1, 0, 2, 3], [], None, "px: images have zero size 2x0"),
        ([1, 2, 0, 3], [], None, "px: images have zero size 0x2"),
        ([0, 1, 1, 3], [], None, "px: no images"),
        ([5, 1, 1, 3], [1] * 15, None, "px: 5 images, the limit is 4 per request"),
        ([1, 1, 2, 3], None, b"\x00" * 5, "px: shape [1, 1, 2, 3] needs 6 bytes, got 5"),
        ([1, 1, 2, 3], None, None, "px: no data"),
        ([1, 1, 1, 3], "abc", None, "px: data must be a list of integers 0..255, got a string"),
        ([1, 1, 2, 3], [1] * 5, None, "px: shape [1, 1, 2, 3] needs 6 values, got 5"),
        ([1, 1, 1, 3], [[1, 2]], None, "px: shape [1, 1, 1, 3] needs 3 values, got 2"),
        (
            [2, 1, 1, 3],
            [[1, 2, 3], [4, 5]],
            None,
            "px: data must be a flat or [N, H, W, 3] nested list of integers",
        ),
        ([1, 1, 1, 3], [1.0, 2.0, 3.0], None, "px: data must hold integers 0..255, got float64 values"),
        ([1, 1, 1, 3], [0, 256, 3], None, "px: data must hold integers 0..255, got 0..256"),
        ([1, 1, 1, 3], [-1, 255, 3], None, "px: data must hold integers 0..255, got -1..255"),
    ],
)
def test_uint8_exact_errors(shape, data, raw, message):
    assert reason(codecs.parse_v2, uint8_request(shape, data=data, raw=raw), **LIMITS) == message


def test_split_raw_bytes_exact():
    assert codecs.split_raw_bytes(b"") == []
    assert codecs.split_raw_bytes(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c") == [b"ab", b"c"]
    assert (
        reason(codecs.split_raw_bytes, b"\x01\x00\x00")
        == "input: malformed raw BYTES contents (truncated length prefix)"
    )
    assert reason(codecs.split_raw_bytes, struct.pack("<I", 2) + b"a", "im") == (
        "im: malformed raw BYTES contents (element longer than the data)"
    )
    items = codecs.split_raw_bytes(bytearray(struct.pack("<I", 1) + b"z"))
    assert items == [b"z"] and type(items[0]) is bytes


def test_grpc_parameters_plain_values_pass_through():
    assert codecs.grpc_parameters({}) == {}
    assert codecs.grpc_parameters({"a": 3, "b": "x"}) == {"a": 3, "b": "x"}
    unset = pb.InferParameter()
    assert codecs.grpc_parameters({"u": unset}) == {
        "u": codecs.UnreadableParameter("an InferParameter with no value")
    }
    assert codecs.grpc_parameters({"b": pb.InferParameter(bool_param=False)}) == {"b": False}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"score_threshold": " 0.25 ", "max_detections": " 3 "}, (0.25, 3)),
        ({"max_detections": "2.0"}, (None, 2)),
        ({"max_detections": 1}, (None, 1)),
        ({"score_threshold": 1}, (1.0, None)),
    ],
)
def test_parameters_exact_values(params, expected):
    got = codecs.parse_controls(params, 10, strict=True)
    assert got == codecs.Controls(*expected)
    assert got.max_detections is None or type(got.max_detections) is int


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([1], "parameters: expected an object, got a list"),
        ({"score_threshold": "x" * 40}, f"parameters.score_threshold: expected a number, got {'x' * 32!r}"),
        (
            {"score_threshold": None, "max_detections": [1]},
            "parameters.max_detections: expected a number, got a list",
        ),
        ({"score_threshold": -0.5}, "parameters.score_threshold: must be within [0, 1], got -0.5"),
        ({"score_threshold": 10**400}, "parameters.score_threshold: must be within [0, 1], got inf"),
        ({"score_threshold": -(10**400)}, "parameters.score_threshold: must be within [0, 1], got -inf"),
        ({"score_threshold": False}, "parameters.score_threshold: expected a number, got a boolean"),
        ({"max_detections": 10**400}, "parameters.max_detections: expected an integer, got inf"),
        ({"max_detections": 2.5}, "parameters.max_detections: expected an integer, got 2.5"),
        ({"max_detections": 0}, "parameters.max_detections: must be within 1..10, got 0"),
        ({"max_detections": 1e300}, "parameters.max_detections: must be within 1..10, got 1e+300"),
        ({"max_detections": "-3"}, "parameters.max_detections: must be within 1..10, got -3"),
    ],
)
def test_parameters_exact_errors(params, message):
    assert reason(codecs.parse_controls, params, 10, strict=True) == message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, (None, None)),
        ({"nms_threshold": 0, "classes": " cat , 12 ,dog"}, (0.0, ("cat", 12, "dog"))),
        ({"nms_threshold": " 1 ", "classes": [" cat ", 7, "3"]}, (1.0, ("cat", 7, 3))),
        ({"classes": ["x"] * 1000}, (None, ("x",) * 1000)),
    ],
)
def test_controls_exact_values(params, expected):
    got = codecs.parse_controls(params, 10, strict=False)
    assert (got.nms_threshold, got.classes) == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"nms_threshold": 1.5}, "parameters.nms_threshold: must be within [0, 1], got 1.5"),
        ({"nms_threshold": "nan"}, "parameters.nms_threshold: must be within [0, 1], got nan"),
        (
            {"nms_threshold": None, "classes": True},
            "parameters.classes: expected a list of class names or ids, got a boolean",
        ),
        ({"classes": 2.5}, "parameters.classes: expected a list of class names or ids, got a number"),
        ({"classes": []}, "parameters.classes: expected at least one class name or id"),
        ({"classes": ["x"] * 1001}, "parameters.classes: 1001 entries, the limit is 1000"),
        ({"classes": ["cat", "  "]}, "parameters.classes[1]: expected a class name or id, got a string"),
        ({"classes": "cat,"}, "parameters.classes[1]: expected a class name or id, got a string"),
        ({"classes": [1, False]}, "parameters.classes[1]: expected a class name or id, got a boolean"),
        ({"classes": [[1]]}, "parameters.classes[0]: expected a class name or id, got a list"),
    ],
)
def test_controls_exact_errors(params, message):
    assert reason(codecs.parse_controls, params, 10, strict=False) == message


def test_class_mask_exact():
    assert codecs.class_mask(("dog", 1, "dog"), NAMES).tolist() == [False, True, True]
    assert codecs.class_mask((2,), NAMES).dtype == bool
    assert reason(codecs.class_mask, ("background",), NAMES) == (
        "parameters.classes[0]: unknown class 'background' (known: cat, dog)"
    )
    assert (
        reason(codecs.class_mask, ("cat", 3), NAMES)
        == "parameters.classes[1]: class id 3 is out of range 1..2"
    )
    assert (
        reason(codecs.class_mask, (-1,), NAMES) == "parameters.classes[0]: class id -1 is out of range 1..2"
    )
    many = ("background", *(f"class-{i:04d}" for i in range(100)))
    message = reason(codecs.class_mask, ("z" * 80,), many)
    assert (
        message == f"parameters.classes[0]: unknown class {'z' * 64!r} (known: {', '.join(many[1:])[:500]})"
    )


def test_payload_bytes_size_rule_for_unknown_bytes():
    from predictor.protocol.base64text import max_base64_chars

    limit = max_base64_chars(3)
    text = b"QUJD" + b"\n" * (limit - 4)  # exactly the longest base64 text of 3 bytes: decoded
    assert codecs.payload_bytes(ImagePayload("f", text, None), 3) == b"ABC"
    longer = text + b"\n"  # one character more: taken as the file itself
    assert codecs.payload_bytes(ImagePayload("f", longer, None), 3) == longer
    assert codecs.payload_bytes(ImagePayload("f", "QUJD", True), 3) == b"ABC"


def test_json_output_sets_plain_json_data():
    out = codecs._JsonOutput("x", [2, 2], "FP32", parameters={"binary_data_size": 16, "other": 1})
    out.set_data_from_numpy(np.array([[1.5, 2], [3, 4]], np.float32), binary_data=False)
    assert out.data == [1.5, 2.0, 3.0, 4.0] and out._raw_data is None
    assert out.parameters == {"other": 1}
    bare = codecs._JsonOutput("y", [1], "INT32")
    bare.set_data_from_numpy(np.array([5], np.int32), binary_data=False)
    assert bare.data == [5]
    with pytest.raises(ValueError, match=re.escape("x: array shape (3,) != [2, 2]")):
        out.set_data_from_numpy(np.zeros(3, np.float32), binary_data=False)
    out.set_data_from_numpy(np.array([[1, 2], [3, 4]], np.float32), binary_data=True)
    assert out._raw_data == np.array([1, 2, 3, 4], "<f4").tobytes()
    # like KServe's InferOutput, binary is the default
    default = codecs._JsonOutput("z", [2], "INT32", parameters={"other": 1})
    default.set_data_from_numpy(np.array([7, 8], np.int32))
    assert default._raw_data == struct.pack("<2i", 7, 8)
    # parameters without binary_data_size stay as they are
    plain = codecs._JsonOutput("p", [2], "INT32", parameters={"other": 1})
    plain.set_data_from_numpy(np.array([7, 8], np.int32), binary_data=False)
    assert plain.data == [7, 8] and plain.parameters == {"other": 1}


def test_v2_arrays_exact():
    dets = detections()
    dets.classes[0, 1] = 9  # an id beyond the names: label clipped to the last name
    arrays, label_index = codecs.v2_arrays(dets, NAMES)
    assert label_index.tolist() == [[2, 2], [3, 3]]
    assert arrays["detection_labels"].tolist() == [["dog", "dog"], ["", ""]]
    assert (
        arrays["detection_classes"].tolist() == [[2, 9], [0, 0]]
        and arrays["detection_classes"].dtype == np.int32
    )
    assert arrays["num_detections"].tolist() == [2, 0] and arrays["num_detections"].dtype == np.int32
    np.testing.assert_array_equal(arrays["detection_boxes"][0], dets.boxes[0, :2])
    assert arrays["detection_boxes"].dtype == np.float32 and not arrays["detection_boxes"][1].any()
    assert arrays["detection_scores"].tolist() == [[pytest.approx(0.98771), 0.5], [0.0, 0.0]]


def test_encode_v2_rest_binary_and_no_request():
    request = v2_request(["A", "B"], parameters={"binary_data_output": True})
    response = codecs.encode_v2(detections(), NAMES, "m", request)
    assert response._use_binary_outputs is True
    body, json_length = response.to_rest()
    assert json_length is not None
    bare = codecs.encode_v2(detections(), NAMES, "model-x", None)
    assert bare.id == "" and bare.model_name == "model-x" and bare._use_binary_outputs is False
    body, json_length = bare.to_rest()
    assert json_length is None and {o["name"] for o in body["outputs"]} == {n for n, _ in codecs.V2_OUTPUTS}


def test_encode_v2_grpc_raw_bytes_exact():
    request = v2_request([b"a", b"b"], from_grpc=True)
    request.id = "g-1"
    response = codecs.encode_v2(detections(), NAMES, "m", request)
    assert response.id == "g-1" and response.from_grpc and response.model_name == "m"
    assert response.to_grpc().model_name == "m"
    assert [(o.name, o.datatype, o.shape) for o in response.outputs] == [
        ("num_detections", "INT32", [2]),
        ("detection_boxes", "FP32", [2, 2, 4]),
        ("detection_scores", "FP32", [2, 2]),
        ("detection_classes", "INT32", [2, 2]),
        ("detection_labels", "BYTES", [2, 2]),
    ]
    raw = response.to_grpc().raw_output_contents
    assert raw[0] == struct.pack("<2i", 2, 0)
    assert raw[2] == np.array([0.98771, 0.5, 0, 0], "<f4").tobytes()
    assert raw[3] == struct.pack("<4i", 2, 1, 0, 0)
    lengths = [struct.pack("<I", n) for n in (3, 3, 0, 0)]
    assert raw[4] == lengths[0] + b"dog" + lengths[1] + b"cat" + lengths[2] + lengths[3]


def test_metadata_types_exact():
    assert codecs.output_types() == [
        {"name": "num_detections", "datatype": "INT32", "shape": [-1]},
        {"name": "detection_boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
        {"name": "detection_scores", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "detection_classes", "datatype": "INT32", "shape": [-1, -1]},
        {"name": "detection_labels", "datatype": "BYTES", "shape": [-1, -1]},
    ]
    assert codecs.PARAMETER_NAMES == ("score_threshold", "max_detections", "nms_threshold", "classes")
    assert codecs.MAX_CLASS_FILTER == 1000 and codecs.INPUT_NAME == "images"


def test_encode_v1_padding_rows_never_shift_the_next_image():
    boxes = np.arange(3 * 3 * 4, dtype=np.float32).reshape(3, 3, 4)
    scores = np.array([[0.9, 0.0, 0.0], [0.0, 0.0, 0.0], [0.8, 0.7, 0.0]], np.float32)
    classes = np.array([[1, 0, 0], [0, 0, 0], [2, 1, 0]], np.int32)
    dets = ResponseDetections(boxes, scores, classes, np.array([1, 0, 2]))
    out = orjson.loads(codecs.encode_v1(dets, NAMES))
    assert [[(p["label"], p["score"], p["xmin"]) for p in image] for image in out["predictions"]] == [
        [("cat", 0.9, 0.0)],
        [],
        [("dog", 0.8, 24.0), ("cat", 0.7, 28.0)],
    ]
    assert out["predictions"][2][1] == {
        "label": "cat", "class_id": 1, "score": 0.7, "xmin": 28.0, "ymin": 29.0, "xmax": 30.0, "ymax": 31.0,
    }  # fmt: skip


def test_raw_lengths_are_unsigned_and_raw_numbers_take_the_wire_dtype():
    # a length with the high bit set is 2 GiB or more (uint32), not negative: more than the data
    for length in (2**31, 2**32 - 1):
        assert reason(codecs.split_raw_bytes, struct.pack("<I", length) + b"abcd") == (
            "input: malformed raw BYTES contents (element longer than the data)"
        )
    assert tensors.serialize_tensor(np.array([1, -2], np.int64), "INT32") == struct.pack("<2i", 1, -2)
    assert tensors.serialize_tensor(np.array([0.5, 2.0], np.float64), "FP32") == struct.pack("<2f", 0.5, 2.0)


def test_v1_content_type_parameters_never_make_the_media_type():
    # only the part before the first ";" is the media type: octet-stream is one image, even with "json" after
    body = b'{"instances": ["A"]}'
    assert codecs.v1_body_is_json(body, "application/octet-stream; q=json") is False
    assert codecs.v1_body_is_json(body, "image/png; a=1; b=json") is False
    assert codecs.v1_body_is_json(body, "application/octet-stream; charset=json; a=1") is False


def test_messages_with_long_values_are_capped():
    assert (
        reason(codecs.parse_v2, v2_request(["A"], shape="s" * 300), **LIMITS)
        == ("images: shape must be a list of integers, got '" + "s" * 300)[:200]
    )


def test_malformed_raw_contents_name_the_input():
    request = InferRequest("m", [InferInput("pics", [1], "BYTES")], raw_inputs=[b"\x05\x00"], from_grpc=True)
    assert (
        reason(codecs.parse_v2, request, **LIMITS)
        == "pics: malformed raw BYTES contents (truncated length prefix)"
    )


def test_json_type_of_other_values_is_the_python_type_name():
    assert codecs._json_type(b"x") == "bytes" and codecs._json_type(1j) == "complex"


def test_v2_arrays_of_no_images_and_out_of_range_class_ids():
    empty = ResponseDetections(
        np.zeros((0, 3, 4), np.float32), np.zeros((0, 3)), np.zeros((0, 3), np.int32), np.zeros(0)
    )
    arrays, label_index = codecs.v2_arrays(empty, NAMES)
    assert arrays["detection_boxes"].shape == (0, 0, 4) and label_index.shape == (0, 0)
    # ids below 1 in valid rows (never produced by the detector) are clipped to the first name
    odd = ResponseDetections(
        np.zeros((1, 2, 4), np.float32), np.ones((1, 2)), np.array([[-1, 0]], np.int32), np.array([2])
    )
    arrays, label_index = codecs.v2_arrays(odd, NAMES)
    assert label_index.tolist() == [[0, 0]] and arrays["detection_labels"].tolist() == [
        ["background", "background"]
    ]


def test_uint8_requests_keep_the_request_and_ignore_protocol_parameters():
    request = uint8_request(
        [1, 1, 1, 3], data=[1, 2, 3], parameters={"binary_data_output": True, "max_detections": 2}
    )
    parsed = codecs.parse_v2(request, **LIMITS)
    assert parsed.infer_request is request and parsed.controls.max_detections == 2


def test_uint8_shape_messages_are_capped():
    long_text = "q" * 300
    assert (
        reason(codecs.parse_v2, uint8_request(long_text, data=[1]), **LIMITS)
        == ("px: shape must be a list of integers, got '" + long_text)[:200]
    )
    assert (
        reason(codecs.parse_v2, uint8_request([1] * 100, data=[1]), **LIMITS)
        == (f"px: UINT8 images must have shape [N, H, W, 3], got {[1] * 100}")[:200]
    )


def test_v2_requests_ignore_protocol_parameters():
    request = v2_request(["A"], parameters={"binary_data_output": True, "score_threshold": 0.5})
    assert codecs.parse_v2(request, **LIMITS).controls.score_threshold == 0.5


# ----------------------------------------------------------------------------- one parse of the controls
ALL_PARAMS = {"score_threshold": "0.5", "max_detections": 3, "nms_threshold": "0.25", "classes": "cat,2"}
ALL_CONTROLS = codecs.Controls(0.5, 3, 0.25, ("cat", 2))


def test_every_v2_input_form_gets_every_control():
    """BYTES and UINT8, JSON and raw contents, REST and gRPC: one parse of the same parameters."""
    grpc_params = {k: pb.InferParameter(string_param=str(v)) for k, v in ALL_PARAMS.items()}
    pixels = np.zeros((1, 2, 2, 3), np.uint8)
    forms = [
        v2_request(["QQ=="], parameters=ALL_PARAMS),
        v2_request([b"QQ=="], from_grpc=True, parameters=grpc_params),
        uint8_request([1, 2, 2, 3], data=pixels.ravel().tolist(), parameters=ALL_PARAMS),
        uint8_request([1, 2, 2, 3], raw=pixels.tobytes(), parameters=ALL_PARAMS),
        uint8_request([1, 2, 2, 3], raw=pixels.tobytes(), from_grpc=True, parameters=grpc_params),
    ]
    for request in forms:
        assert codecs.parse_v2(request, **LIMITS).controls == ALL_CONTROLS


def test_raw_v1_body_takes_its_controls_from_the_query():
    png = b"\x89PNG...."
    query = tuple((k, str(v)) for k, v in ALL_PARAMS.items())
    parsed = codecs.parse_v1(codecs.V1Body(png, query), "image/png", **LIMITS)
    assert parsed.controls == ALL_CONTROLS and parsed.images[0].data == png
    assert codecs.parse_v1(codecs.V1Body(png), "image/png", **LIMITS).controls == codecs.Controls()
    repeated = codecs.V1Body(png, (("classes", "cat"), ("classes", "2")))
    assert codecs.parse_v1(repeated, "", **LIMITS).controls == codecs.Controls(classes=("cat", 2))
    assert reason(codecs.parse_v1, codecs.V1Body(png, (("nms", "1"),)), "", **LIMITS) == (
        "parameters: unknown key 'nms' (known: score_threshold, max_detections, nms_threshold, classes)"
    )
    twice = codecs.V1Body(png, (("score_threshold", "0.1"), ("score_threshold", "0.2")))
    assert (
        reason(codecs.parse_v1, twice, "", **LIMITS)
        == "parameters.score_threshold: given more than once in the query"
    )
    json_with_query = codecs.V1Body(b'{"instances": ["QQ=="]}', (("score_threshold", "0.1"),))
    assert reason(codecs.parse_v1, json_with_query, "application/json", **LIMITS) == (
        "query parameter 'score_threshold': a JSON body carries its controls in \"parameters\"; "
        "query parameters are for a raw image body"
    )
    long_key = codecs.V1Body(b'{"instances": ["QQ=="]}', (("k" * 100, "1"),))
    assert reason(codecs.parse_v1, long_key, "application/json", **LIMITS).startswith(
        f"query parameter '{'k' * 64}': a JSON body"
    )


def _triton_parameter(field: int, wire: bytes) -> pb.InferParameter:
    """An InferParameter as tritonclient serialises it, read with KServe's proto (field 4/5 unknown)."""
    return pb.InferParameter.FromString(bytes([field << 3 | (1 if field == 4 else 0)]) + wire)


def test_triton_double_and_uint64_parameters_are_read_from_unknown_fields():
    double = _triton_parameter(4, struct.pack("<d", 0.375))
    uint64 = _triton_parameter(5, bytes([0x87, 0x01]))  # varint 135
    assert double.WhichOneof("parameter_choice") is None  # KServe's proto does not know them
    assert codecs.grpc_parameters({"a": double, "b": uint64}) == {"a": 0.375, "b": 135}
    request = v2_request(
        [b"QQ=="],
        from_grpc=True,
        parameters={"score_threshold": double, "max_detections": _triton_parameter(5, b"\x07")},
    )
    assert codecs.parse_v2(request, **LIMITS).controls == codecs.Controls(0.375, 7)


def test_unreadable_grpc_parameter_kinds_are_400_naming_the_kinds_that_work():
    kinds = "bool_param, int64_param, string_param, double_param, uint64_param"
    bytes_kind = pb.InferParameter.FromString(b"\x32\x01x")  # field 6, length-delimited: no such kind
    request = v2_request([b"QQ=="], from_grpc=True, parameters={"nms_threshold": bytes_kind})
    assert reason(codecs.parse_v2, request, **LIMITS) == (
        "parameters.nms_threshold: an InferParameter of unknown kind (field 6, wire type 2); "
        f"send one of {kinds}"
    )
    unset = v2_request([b"QQ=="], from_grpc=True, parameters={"classes": pb.InferParameter()})
    assert reason(codecs.parse_v2, unset, **LIMITS) == (
        f"parameters.classes: an InferParameter with no value; send one of {kinds}"
    )
    # a parameter the server does not read may be of any kind
    other = v2_request([b"QQ=="], from_grpc=True, parameters={"priority": bytes_kind})
    assert codecs.parse_v2(other, **LIMITS).controls == codecs.Controls()


def test_query_parameters_join_classes_and_refuse_other_repeats():
    assert codecs.query_parameters([]) is None
    assert codecs.query_parameters([("classes", "circle"), ("score_threshold", "0.5"), ("classes", "7")]) == {
        "classes": "circle,7",
        "score_threshold": "0.5",
    }
    long = "k" * 100
    with pytest.raises(InvalidInput) as refused:
        codecs.query_parameters([(long, "1"), (long, "2")])
    assert str(refused.value) == f"parameters.{'k' * 64}: given more than once in the query"


def test_grpc_parameter_edge_kinds():
    """A negative double (its sign bit set in the unsigned 64-bit field) reads back; a known field number
    on the wrong wire type is unreadable, not misread."""
    assert codecs.grpc_parameter_value(_triton_parameter(4, struct.pack("<d", -0.5))) == -0.5
    double_as_varint = pb.InferParameter.FromString(bytes([4 << 3 | 0]) + b"\x07")
    request = v2_request([b"QQ=="], from_grpc=True, parameters={"nms_threshold": double_as_varint})
    assert reason(codecs.parse_v2, request, **LIMITS).startswith(
        "parameters.nms_threshold: an InferParameter of unknown kind (field 4, wire type 0); send one of "
    )


@pytest.mark.parametrize("from_grpc", [False, True])
def test_encode_v2_names_the_model_version(from_grpc):
    request = v2_request([b"QQ==", b"QQ=="], from_grpc=from_grpc)
    assert codecs.encode_v2(detections(), NAMES, "m", request, model_version="7").model_version == "7"
