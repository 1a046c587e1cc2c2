"""The real server (``python -m predictor`` on loopback): protocols, errors, batching, metrics.

Every detection is checked against a direct :class:`~predictor.ssd.detector.Detector` call on the same
image (the server decodes lossless PNGs, so the pixels are identical).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import InferResponse
from serving_fixtures import (
    MODEL_NAME,
    SERVER_MAX_BATCH,
    SERVER_MAX_IMAGE_BYTES,
    SERVER_TRIM_IDLE_S,
    b64,
    encode_image,
    forge_gif_size,
    forge_jpeg_size,
    forge_png_size,
)

from predictor.protocol.binary_ext import serialize_tensor

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"


# ----------------------------------------------------------------------------- clients and oracles
@pytest.fixture(scope="module")
def client(ssd_server):
    with httpx.Client(base_url=ssd_server.url, timeout=120, limits=httpx.Limits(max_connections=100)) as c:
        yield c


@pytest.fixture(autouse=True)
def no_internal_errors(ssd_server):
    """After every test here: nothing it sent made the server log a traceback or answer 500."""
    start = len(ssd_server.log())
    yield
    log = ssd_server.log()[start:]
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 300) : at + 3000]
    assert '"status":500' not in log


@pytest.fixture(scope="module")
def stub(ssd_server):
    channel = grpc.insecure_channel(
        ssd_server.grpc_target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def pngs(shapes_images) -> list[bytes]:
    return [encode_image(im, "PNG") for im in shapes_images]


class Oracle:
    """Single-image results of the direct detector, cached by (image, threshold, cap)."""

    def __init__(self, detector, images: list[np.ndarray]) -> None:
        self.detector = detector
        self.images = images
        self._cache: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, index: int, score_threshold: float | None = None, max_detections: int | None = None):
        key = (index, score_threshold, max_detections)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self.detector.detect(
                    [self.images[index]], score_threshold=score_threshold, max_detections=max_detections
                )[0]
            return self._cache[key]


@pytest.fixture(scope="module")
def oracle(direct_detector, shapes_images) -> Oracle:
    return Oracle(direct_detector, shapes_images)


def check_v1_image(predictions: list[dict], expected, class_names) -> None:
    """V1 boxes of one image equal the direct result (scores rounded to 4, coordinates to 2 decimals)."""
    assert len(predictions) == len(expected.scores)
    if not predictions:
        return
    scores = np.array([p["score"] for p in predictions])
    boxes = np.array([[p["xmin"], p["ymin"], p["xmax"], p["ymax"]] for p in predictions])
    classes = np.array([p["class_id"] for p in predictions])
    np.testing.assert_allclose(scores, expected.scores, atol=1e-4)
    np.testing.assert_allclose(boxes, expected.boxes, atol=6e-3)
    np.testing.assert_array_equal(classes, expected.classes)
    assert [p["label"] for p in predictions] == [class_names[c] for c in classes]
    assert all(isinstance(p["score"], float) and isinstance(p["class_id"], int) for p in predictions)
    assert np.all(np.diff(scores) <= 0), "not sorted by score"


def check_v2_arrays(arrays: dict[str, np.ndarray], expected: list, class_names) -> None:
    """V2 outputs (``K = max count``, zero/empty padding) equal the direct results image by image."""
    num = arrays["num_detections"]
    k = max(len(e.scores) for e in expected)
    assert arrays["detection_boxes"].shape == (len(expected), k, 4)
    assert arrays["detection_scores"].shape == arrays["detection_classes"].shape == (len(expected), k)
    assert arrays["detection_labels"].shape == (len(expected), k)
    for i, e in enumerate(expected):
        n = len(e.scores)
        assert num[i] == n
        np.testing.assert_allclose(arrays["detection_scores"][i, :n], e.scores, atol=1e-5)
        np.testing.assert_allclose(arrays["detection_boxes"][i, :n], e.boxes, atol=1e-3)
        np.testing.assert_array_equal(arrays["detection_classes"][i, :n], e.classes)
        labels = [x.decode() if isinstance(x, bytes) else x for x in arrays["detection_labels"][i].tolist()]
        assert labels[:n] == [class_names[c] for c in e.classes]
        assert set(labels[n:]) <= {""}
        assert not arrays["detection_scores"][i, n:].any() and not arrays["detection_boxes"][i, n:].any()


def v2_rest_arrays(body: dict) -> dict[str, np.ndarray]:
    out = {}
    for o in body["outputs"]:
        dtype = {"FP32": np.float32, "INT32": np.int32, "BYTES": object}[o["datatype"]]
        out[o["name"]] = np.array(o["data"], dtype=dtype).reshape(o["shape"])
    return out


def grpc_request(images: list[bytes], parameters: dict[str, Any] | None = None) -> pb.ModelInferRequest:
    params = {}
    for key, value in (parameters or {}).items():
        params[key] = (
            pb.InferParameter(int64_param=value)
            if isinstance(value, int)
            else pb.InferParameter(string_param=str(value))
        )
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images",
        datatype="BYTES",
        shape=[len(images)],
        contents=pb.InferTensorContents(bytes_contents=images),
    )
    return pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor], parameters=params)


def raw_grpc_request(
    images: list[bytes],
    *,
    raw: bytes | None = None,
    raw_count: int = 1,
    also_contents: bool = False,
    shape: list[int] | None = None,
) -> pb.ModelInferRequest:
    """The images in ``raw_input_contents`` (uint32 LE length + bytes each), optionally inconsistent."""
    data = raw if raw is not None else serialize_tensor(np.array(images, dtype=object), "BYTES")
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=shape or [len(images)]
    )
    if also_contents:
        tensor.contents.bytes_contents.extend(images)
    return pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor], raw_input_contents=[data] * raw_count)


def grpc_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {o.name: o.as_numpy() for o in InferResponse.from_grpc(response).outputs}


def v2_body(items: list[str], parameters: dict | None = None, **input_fields) -> dict:
    tensor = {"name": "images", "datatype": "BYTES", "shape": [len(items)], "data": items, **input_fields}
    body: dict[str, Any] = {"inputs": [tensor]}
    if parameters is not None:
        body["parameters"] = parameters
    return body


# ----------------------------------------------------------------------------- health and metadata
def test_readiness_was_503_while_warming_up(ssd_server):
    """The HTTP server answers during warm-up: readiness 503 first, 200 once every bucket is traced."""
    statuses = [s for s in ssd_server.ready_statuses if s]
    assert statuses[0] == 503 and statuses[-1] == 200, ssd_server.ready_statuses


def test_health_readiness_and_metadata(client, stub):
    assert client.get("/").json() == {"status": "alive"}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 200
    assert client.get(f"/v1/models/{MODEL_NAME}").json()["ready"] is True
    assert client.get("/v2/models/nope/ready").status_code == 404
    meta = client.get(f"/v2/models/{MODEL_NAME}").json()
    assert meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("num_detections", "INT32", [-1]),
        ("detection_boxes", "FP32", [-1, -1, 4]),
        ("detection_scores", "FP32", [-1, -1]),
        ("detection_classes", "INT32", [-1, -1]),
        ("detection_labels", "BYTES", [-1, -1]),
    ]
    grpc_meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME))
    assert [t.name for t in grpc_meta.outputs] == [o["name"] for o in meta["outputs"]]
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME)).ready


# ----------------------------------------------------------------------------- request forms
@pytest.mark.parametrize(
    "form",
    [
        lambda s: s,
        lambda s: {"b64": s},
        lambda s: {"image": {"b64": s}},
        lambda s: {"image_bytes": {"b64": s}},
    ],
    ids=["string", "b64", "image.b64", "image_bytes.b64"],
)
def test_v1_instance_forms(client, pngs, oracle, direct_detector, form):
    r = client.post(V1, json={"instances": [form(b64(pngs[0])), form(b64(pngs[1]))]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    predictions = r.json()["predictions"]
    assert len(predictions) == 2
    for i in range(2):
        check_v1_image(predictions[i], oracle(i), direct_detector.class_names)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_v1_raw_body(client, shapes_images, direct_detector, fmt):
    import io

    from PIL import Image

    data = encode_image(shapes_images[2], fmt)
    r = client.post(V1, content=data, headers={"content-type": f"image/{fmt.lower()}"})
    assert r.status_code == 200, r.text
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # JPEG: the same libjpeg decode
    expected = direct_detector.detect([decoded])[0]
    check_v1_image(r.json()["predictions"][0], expected, direct_detector.class_names)


def test_v1_json_with_charset_and_parameters(client, pngs, oracle, direct_detector):
    body = orjson.dumps(
        {"instances": [b64(pngs[3])], "parameters": {"score_threshold": 0.5, "max_detections": 5}}
    )
    r = client.post(V1, content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text
    check_v1_image(r.json()["predictions"][0], oracle(3, 0.5, 5), direct_detector.class_names)


def test_v2_rest(client, pngs, oracle, direct_detector):
    r = client.post(V2, json=v2_body([b64(pngs[0]), b64(pngs[4])], {"max_detections": 9}))
    assert r.status_code == 200, r.text
    arrays = v2_rest_arrays(r.json())
    check_v2_arrays(arrays, [oracle(0, None, 9), oracle(4, None, 9)], direct_detector.class_names)


def test_v2_rest_accepts_n_by_1_shape(client, pngs, oracle, direct_detector):
    body = v2_body([[b64(pngs[1])]])
    body["inputs"][0]["shape"] = [1, 1]
    r = client.post(V2, json=body)
    assert r.status_code == 200, r.text
    check_v2_arrays(v2_rest_arrays(r.json()), [oracle(1)], direct_detector.class_names)


def test_v2_rest_json_without_content_type(client, pngs, oracle, direct_detector):
    """tritonclient sends JSON V2 bodies with no Content-Type: still JSON."""
    r = client.post(
        V2, content=orjson.dumps(v2_body([b64(pngs[0]), b64(pngs[2])])), headers={"content-type": ""}
    )
    assert r.status_code == 200, r.text
    assert (
        r.headers["content-type"] == "application/json" and "inference-header-content-length" not in r.headers
    )
    check_v2_arrays(v2_rest_arrays(r.json()), [oracle(0), oracle(2)], direct_detector.class_names)


@pytest.mark.parametrize("as_base64", [False, True], ids=["image-files", "base64-text"])
def test_v2_binary_extension_both_ways(client, pngs, oracle, direct_detector, as_base64):
    """Binary input (elements: the PNG files, or their base64 text), every output binary."""
    items = [b64(p).encode() if as_base64 else p for p in pngs[:3]]
    request = binary_body(items)
    header_length = int(request["headers"]["inference-header-content-length"])
    header = orjson.loads(request["content"][:header_length])
    header["parameters"] = {"binary_data_output": True, "max_detections": 5}
    head = orjson.dumps(header)
    body = head + request["content"][header_length:]
    r = client.post(V2, content=body, headers={"inference-header-content-length": str(len(head))})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    json_length = int(r.headers["inference-header-content-length"])
    outputs = orjson.loads(r.content[:json_length])["outputs"]
    assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in outputs)
    arrays = {o.name: o.as_numpy() for o in InferResponse.from_bytes(r.content, json_length).outputs}
    expected = [oracle(i, None, 5) for i in range(3)]
    check_v2_arrays(arrays, expected, direct_detector.class_names)


def test_v2_requested_outputs_choose_binary_or_json_each(client, pngs, oracle, direct_detector):
    """Only the requested outputs, in the requested order; ``binary_data`` per output overrides
    ``binary_data_output``."""
    body = v2_body([b64(pngs[1])], {"binary_data_output": True})
    body["outputs"] = [
        {"name": "detection_labels", "parameters": {"binary_data": False}},
        {"name": "num_detections"},
    ]
    r = client.post(V2, json=body)
    assert r.status_code == 200, r.text
    json_length = int(r.headers["inference-header-content-length"])
    outputs = orjson.loads(r.content[:json_length])["outputs"]
    assert [o["name"] for o in outputs] == ["detection_labels", "num_detections"]
    assert "data" in outputs[0] and outputs[1]["parameters"] == {"binary_data_size": 4}
    assert np.frombuffer(r.content[json_length:], "<i4").tolist() == [len(oracle(1).scores)]
    names = direct_detector.class_names
    assert outputs[0]["data"][: len(oracle(1).scores)] == [names[c] for c in oracle(1).classes]


def test_v2_grpc(stub, pngs, oracle, direct_detector):
    response = stub.ModelInfer(
        grpc_request([pngs[5], pngs[0]], {"score_threshold": 0.6, "max_detections": 4})
    )
    expected = [oracle(5, 0.6, 4), oracle(0, 0.6, 4)]
    check_v2_arrays(grpc_arrays(response), expected, direct_detector.class_names)


def test_v2_grpc_raw_input_contents(stub, pngs, oracle, direct_detector):
    import struct

    raw = b"".join(struct.pack("<I", len(p)) + p for p in pngs[:2])
    tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[2])
    request = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor], raw_input_contents=[raw])
    check_v2_arrays(
        grpc_arrays(stub.ModelInfer(request)), [oracle(0), oracle(1)], direct_detector.class_names
    )


# ----------------------------------------------------------------------------- bad inputs
def _png8() -> bytes:
    return encode_image(np.full((8, 8, 3), 120, np.uint8), "PNG")


def _jpeg8() -> bytes:
    return encode_image(np.full((16, 16, 3), 120, np.uint8), "JPEG")


def _gif8() -> bytes:
    return encode_image(np.full((8, 8, 3), 120, np.uint8), "GIF")


# (id, request builder(good_b64) -> (path, kwargs), expected status, expected message part)
BAD_INPUTS: list[tuple[str, Callable[[str], tuple[str, dict]], int, str]] = [
    (
        "invalid_base64",
        lambda g: (V1, {"json": {"instances": [g, "!!not base64!!"]}}),
        400,
        "instances[1]: invalid base64",
    ),
    (
        "not_an_image",
        lambda g: (V1, {"json": {"instances": [b64(b"hello, no image here")]}}),
        400,
        "instances[0]: not an image",
    ),
    ("truncated_png", lambda g: (V1, {"json": {"instances": [g, b64(_png8()[:40])]}}), 400, "instances[1]:"),
    (
        "truncated_jpeg",
        lambda g: (V1, {"json": {"instances": [b64(_jpeg8()[:200])]}}),
        400,
        "instances[0]: not a decodable image",
    ),
    ("empty_string", lambda g: (V1, {"json": {"instances": [g, g, ""]}}), 400, "instances[2]: empty image"),
    (
        "empty_raw_body",
        lambda g: (V1, {"content": b"", "headers": {"content-type": "image/png"}}),
        400,
        "instances[0]: empty image",
    ),
    (
        "raw_garbage_body",
        lambda g: (V1, {"content": bytes(300), "headers": {"content-type": "image/jpeg"}}),
        400,
        "instances[0]: not an image",
    ),
    (
        "png_pixel_bomb",
        lambda g: (V1, {"json": {"instances": [b64(forge_png_size(_png8(), 40000, 40000))]}}),
        400,
        "instances[0]: image has too many pixels",
    ),
    (
        "jpeg_pixel_bomb",
        lambda g: (V1, {"json": {"instances": [b64(forge_jpeg_size(_jpeg8(), 60000, 60000))]}}),
        400,
        "instances[0]: image has too many pixels",
    ),
    (
        "gif_pixel_bomb",
        lambda g: (V1, {"json": {"instances": [b64(forge_gif_size(_gif8(), 65535, 65535))]}}),
        400,
        "instances[0]: image has too many pixels",
    ),
    (
        "png_over_the_server_cap",
        lambda g: (V1, {"json": {"instances": [g, b64(forge_png_size(_png8(), 3000, 3000))]}}),
        400,
        "instances[1]: image has too many pixels: 3000x3000 = 9000000, the limit is 4000000",
    ),
    (
        "png_zero_width",
        lambda g: (V1, {"json": {"instances": [b64(forge_png_size(_png8(), 0, 8))]}}),
        400,
        "instances[0]:",
    ),
    (
        "oversize_encoded",
        lambda g: (V1, {"json": {"instances": [b64(bytes(SERVER_MAX_IMAGE_BYTES + 1))]}}),
        400,
        f"instances[0]: encoded image is {SERVER_MAX_IMAGE_BYTES + 1} bytes, the limit is 2000000",
    ),
    (
        "too_many_instances",
        lambda g: (V1, {"json": {"instances": [g] * (SERVER_MAX_BATCH + 1)}}),
        400,
        f"{SERVER_MAX_BATCH + 1} images, the limit is {SERVER_MAX_BATCH}",
    ),
    ("no_instances", lambda g: (V1, {"json": {"instances": []}}), 400, "instances: no images"),
    ("instances_not_a_list", lambda g: (V1, {"json": {"instances": {"b64": g}}}), 400, "instances"),
    ("missing_instances", lambda g: (V1, {"json": {"inputs": [g]}}), 400, 'missing "instances"'),
    ("body_is_a_list", lambda g: (V1, {"json": [g]}), 400, "expected a JSON object"),
    (
        "instance_is_a_number",
        lambda g: (V1, {"json": {"instances": [g, 42]}}),
        400,
        "instances[1]: expected a base64 string",
    ),
    (
        "nested_b64_not_a_string",
        lambda g: (V1, {"json": {"instances": [{"image": {"b64": 5}}]}}),
        400,
        "instances[0].image.b64: expected a base64 string",
    ),
    (
        "two_image_keys",
        lambda g: (V1, {"json": {"instances": [{"b64": g, "image_bytes": {"b64": g}}]}}),
        400,
        "instances[0]: expected exactly one",
    ),
    (
        "invalid_json",
        lambda g: (V1, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        400,
        "invalid JSON body",
    ),
    (
        "v1_invalid_json_without_content_type",
        lambda g: (V1, {"content": b'{"instances": [', "headers": {"content-type": ""}}),
        400,
        "invalid JSON body",
    ),
    (
        "v1_huge_integer",
        lambda g: (
            V1,
            raw_json('{"instances": ["' + g + '"], "parameters": {"max_detections": ' + "9" * 400 + "}}"),
        ),
        400,
        "invalid JSON body: number is infinity",
    ),
    ("v1_nan", lambda g: (V1, raw_json('{"instances": [NaN]}')), 400, "invalid JSON body"),
    (
        "v1_infinity",
        lambda g: (V1, raw_json('{"instances": ["' + g + '"], "parameters": {"score_threshold": Infinity}}')),
        400,
        "invalid JSON body",
    ),
    ("v1_deep_nesting", lambda g: (V1, raw_json("[" * 100_000 + "]" * 100_000)), 400, "depth limit exceeded"),
    (
        "v1_float_for_int",
        lambda g: (V1, {"json": {"instances": [g], "parameters": {"max_detections": 1e300}}}),
        400,
        "parameters.max_detections: must be within 1..100, got 1e+300",
    ),
    (
        "threshold_above_1",
        lambda g: (V1, {"json": {"instances": [g], "parameters": {"score_threshold": 1.5}}}),
        400,
        "parameters.score_threshold: must be within [0, 1]",
    ),
    (
        "threshold_not_a_number",
        lambda g: (V1, {"json": {"instances": [g], "parameters": {"score_threshold": [1]}}}),
        400,
        "parameters.score_threshold: expected a number",
    ),
    (
        "max_detections_zero",
        lambda g: (V1, {"json": {"instances": [g], "parameters": {"max_detections": 0}}}),
        400,
        "parameters.max_detections: must be within 1..100",
    ),
    (
        "max_detections_above_server_max",
        lambda g: (V1, {"json": {"instances": [g], "parameters": {"max_detections": 101}}}),
        400,
        "1..100",
    ),
    (
        "max_detections_fraction",
        lambda g: (V1, {"json": {"instances": [g], "parameters": {"max_detections": 2.5}}}),
        400,
        "expected an integer",
    ),
    (
        "unknown_parameter",
        lambda g: (V1, {"json": {"instances": [g], "parameters": {"scor_threshold": 0.5}}}),
        400,
        "unknown key 'scor_threshold'",
    ),
    (
        "v2_wrong_datatype",
        lambda g: (
            V2,
            {"json": {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [1.0]}]}},
        ),
        400,
        "datatype must be BYTES",
    ),
    ("v2_wrong_shape", lambda g: (V2, {"json": v2_body([g, g], shape=[1, 2])}), 400, "shape must be [N]"),
    (
        "v2_shape_data_mismatch",
        lambda g: (V2, {"json": v2_body([g, g], shape=[3])}),
        400,
        "needs 3 elements, got 2",
    ),
    (
        "v2_two_inputs",
        lambda g: (V2, {"json": {"inputs": [v2_body([g])["inputs"][0]] * 2}}),
        400,
        "exactly one input",
    ),
    ("v2_invalid_base64", lambda g: (V2, {"json": v2_body([g, "%%%"])}), 400, "images[1]: invalid base64"),
    ("v2_not_an_image", lambda g: (V2, {"json": v2_body([b64(b"GIF89a-not-really")])}), 400, "images[0]:"),
    (
        "v2_bad_threshold",
        lambda g: (V2, {"json": v2_body([g], {"score_threshold": -0.1})}),
        400,
        "score_threshold",
    ),
    ("v2_too_many", lambda g: (V2, {"json": v2_body([g] * (SERVER_MAX_BATCH + 1))}), 400, "the limit is"),
    (
        "v2_huge_integer",
        lambda g: (
            V2,
            raw_json(
                orjson.dumps(v2_body([g])).decode()[:-1]
                + ', "parameters": {"max_detections": %s}}' % ("9" * 400)
            ),
        ),
        400,
        "invalid JSON inference header: number is infinity",
    ),
    (
        "v2_nan_shape",
        lambda g: (
            V2,
            raw_json('{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [NaN], "data": []}]}'),
        ),
        400,
        "invalid JSON",
    ),
    (
        "v2_deep_nesting",
        lambda g: (V2, raw_json('{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}")),
        400,
        "depth limit exceeded",
    ),
    (
        "v2_float_shape",
        lambda g: (V2, {"json": v2_body([g], shape=[1.0])}),
        400,
        "inputs[0].shape[0]: expected an integer, got a number",
    ),
    (
        "v2_bool_shape",
        lambda g: (V2, {"json": v2_body([g], shape=[True])}),
        400,
        "inputs[0].shape[0]: expected an integer, got a boolean",
    ),
    (
        "v2_negative_shape",
        lambda g: (V2, {"json": v2_body([g], shape=[-1])}),
        400,
        "inputs[0].shape[0]: must be within 0..",
    ),
    (
        "v2_absurd_shape",
        lambda g: (V2, {"json": v2_body([g], shape=[2**62])}),
        400,
        f"images: {2**62} images, the limit is",
    ),
    (
        "v2_shape_over_int64",
        lambda g: (V2, {"json": v2_body([g], shape=[2**63])}),
        400,
        "inputs[0].shape[0]: must be within 0..",
    ),
    ("v2_inputs_empty", lambda g: (V2, {"json": {"inputs": []}}), 400, "inputs: expected a non-empty list"),
    ("v2_no_inputs", lambda g: (V2, {"json": {"instances": [g]}}), 400, "inputs: expected a non-empty list"),
    (
        "v2_input_not_an_object",
        lambda g: (V2, {"json": {"inputs": [g]}}),
        400,
        "inputs[0]: expected a tensor object",
    ),
    (
        "v2_name_not_a_string",
        lambda g: (V2, {"json": v2_body([g], name=5)}),
        400,
        "inputs[0].name: expected a string",
    ),
    (
        "v2_no_data",
        lambda g: (V2, {"json": {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}]}}),
        400,
        "inputs[0]: no data",
    ),
    (
        "v2_unknown_output",
        lambda g: (V2, {"json": {**v2_body([g]), "outputs": [{"name": "boxes"}]}}),
        400,
        "outputs[0].name: unknown output 'boxes'",
    ),
    (
        "v2_binary_data_not_a_bool",
        lambda g: (
            V2,
            {
                "json": {
                    **v2_body([g]),
                    "outputs": [{"name": "num_detections", "parameters": {"binary_data": "yes"}}],
                }
            },
        ),
        400,
        "outputs[0].parameters.binary_data: expected true or false",
    ),
    (
        "v2_binary_data_output_not_a_bool",
        lambda g: (V2, {"json": v2_body([g], {"binary_data_output": 1})}),
        400,
        "parameters.binary_data_output: expected true or false",
    ),
    (
        "v2_header_length_not_a_number",
        lambda g: (V2, binary_body([_png8()], header_length="12a")),
        400,
        "Inference-Header-Content-Length: expected a byte count",
    ),
    (
        "v2_header_length_past_the_body",
        lambda g: (V2, binary_body([_png8()], header_length="100000")),
        400,
        "Inference-Header-Content-Length: 100000 is more than the body's",
    ),
    (
        "v2_binary_size_past_the_body",
        lambda g: (V2, binary_body([_png8()], size_delta=+1)),
        400,
        "inputs[0].parameters.binary_data_size:",
    ),
    (
        "v2_binary_bytes_left_over",
        lambda g: (V2, binary_body([_png8()], size_delta=-1)),
        400,
        "1 bytes after the binary data",
    ),
    (
        "v2_binary_size_negative",
        lambda g: (V2, binary_body([_png8()], size=-5)),
        400,
        "binary_data_size: expected a byte count",
    ),
    (
        "v2_binary_and_data",
        lambda g: (V2, binary_body([_png8()], data=[g])),
        400,
        "both data and parameters.binary_data_size",
    ),
    (
        "v2_binary_truncated_length_prefix",
        lambda g: (V2, binary_body([], raw=b"\x01\x00")),
        400,
        "images: malformed raw BYTES contents (truncated length prefix)",
    ),
    (
        "v2_binary_element_longer_than_data",
        lambda g: (V2, binary_body([], raw=struct.pack("<I", 1000) + b"abc")),
        400,
        "element longer than the data",
    ),
    (
        "v2_binary_element_count",
        lambda g: (V2, binary_body([_png8(), _png8()], shape=[3])),
        400,
        "needs 3 elements, got 2",
    ),
    (
        "v2_binary_not_an_image",
        lambda g: (V2, binary_body([_png8(), b"\x00\x01garbage"])),
        400,
        "images[1]: not an image",
    ),
    (
        "v2_versioned_route",
        lambda g: (f"/v2/models/{MODEL_NAME}/versions/1/infer", {"json": v2_body([g])}),
        404,
        "model_version '1': model 'ssd' is served at version 'sha-",
    ),
    ("v2_binary_bad_base64", lambda g: (V2, binary_body([b"QUJD$"])), 400, "images[0]: not an image"),
]


def raw_json(text: str) -> dict:
    """A request whose body is this exact text (JSON that json= could not produce)."""
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def binary_body(
    images: list[bytes],
    *,
    header_length: str | None = None,
    size_delta: int = 0,
    size: int | None = None,
    data: list | None = None,
    raw: bytes | None = None,
    shape: list[int] | None = None,
) -> dict:
    """A V2 binary-extension request (``images`` as a raw BYTES tensor), optionally made inconsistent."""
    tensor_bytes = raw if raw is not None else serialize_tensor(np.array(images, dtype=object), "BYTES")
    size = len(tensor_bytes) + size_delta if size is None else size
    tensor: dict[str, Any] = {"name": "images", "datatype": "BYTES", "shape": shape or [max(1, len(images))]}
    tensor["parameters"] = {"binary_data_size": size}
    if data is not None:
        tensor["data"] = data
    header = orjson.dumps({"inputs": [tensor]})
    headers = {"inference-header-content-length": header_length or str(len(header))}
    return {"content": header + tensor_bytes, "headers": headers}


@pytest.mark.parametrize(
    ("build", "status", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_a_client_error_and_the_server_stays_healthy(client, pngs, build, status, message):
    good = b64(pngs[0])
    path, kwargs = build(good)
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.text
    after = client.post(V1, json={"instances": [good]})
    assert after.status_code == 200, after.text


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: grpc_request([p, b"garbage"]), "images[1]: not an image"),
        (lambda p: grpc_request([p], {"score_threshold": "high"}), "parameters.score_threshold"),
        (lambda p: grpc_request([p], {"max_detections": 1000}), "parameters.max_detections"),
        (
            lambda p: pb.ModelInferRequest(
                model_name=MODEL_NAME,
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="x",
                        datatype="INT32",
                        shape=[1],
                        contents=pb.InferTensorContents(int_contents=[1]),
                    )
                ],
            ),
            "datatype must be BYTES",
        ),
        (
            lambda p: raw_grpc_request([p], raw_count=2),
            "does not match the expected number of raw input contents",
        ),
        (
            lambda p: raw_grpc_request([p], raw=struct.pack("<I", len(p) + 9) + p),
            "element longer than the data",
        ),
        (
            lambda p: raw_grpc_request([p], raw=struct.pack("<I", len(p)) + p + b"\x01"),
            "truncated length prefix",
        ),
        (lambda p: raw_grpc_request([p], also_contents=True), "contents field must not be specified"),
        (lambda p: raw_grpc_request([p, p], shape=[3]), "needs 3 elements, got 2"),
        (lambda p: raw_grpc_request([p], shape=[-4]), "images: no images"),
        (lambda p: raw_grpc_request([p], shape=[2**62]), f"images: {2**62} images, the limit is"),
        (lambda p: raw_grpc_request([p], shape=[1, -1]), "images: shape must be [N]"),
        (
            lambda p: grpc_request([p], {"max_detections": 2**63 - 1}),
            "parameters.max_detections: must be within",
        ),
        (
            lambda p: grpc_request([p], {"score_threshold": "nan"}),
            "parameters.score_threshold: must be within",
        ),
        (
            lambda p: grpc_request([p], {"score_threshold": "1e999"}),
            "parameters.score_threshold: must be within",
        ),
        (
            lambda p: grpc_request([p], {"max_detections": "9" * 400}),
            "parameters.max_detections: expected an integer",
        ),
    ],
    ids=[
        "garbage_bytes",
        "threshold_not_a_number",
        "max_detections_too_big",
        "wrong_datatype",
        "raw_count_mismatch",
        "raw_length_prefix_too_long",
        "raw_length_prefix_truncated",
        "contents_and_raw_both_set",
        "raw_shape_data_mismatch",
        "negative_shape",
        "absurd_shape",
        "negative_second_dim",
        "max_detections_int64_max",
        "threshold_nan",
        "threshold_infinite",
        "max_detections_400_digits",
    ],
)
def test_grpc_bad_input_is_invalid_argument(stub, pngs, build, message):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(build(pngs[0]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert grpc_arrays(stub.ModelInfer(grpc_request([pngs[0]])))["num_detections"].shape == (1,)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2"),
        ("GET", "/v2/models/ssd"),
        ("GET", "/v2/models/ssd/ready"),
        ("GET", "/v1/models/ssd"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
        ("POST", V1),
        ("POST", V2),
    ],
)
def test_every_route_answers_with_a_request_id(client, method, path):
    """x-request-id on every route: echoed when the client sent one, made up otherwise."""
    body = {"json": {"instances": "x"}} if method == "POST" else {}
    echoed = client.request(method, path, headers={"x-request-id": "trace-me-7"}, **body)
    assert echoed.headers["x-request-id"] == "trace-me-7", (path, echoed.status_code)
    made = client.request(method, path, **body).headers["x-request-id"]
    assert made and made != "trace-me-7"


def test_error_responses_carry_a_request_id_and_are_logged(client, ssd_server):
    r = client.post(V1, json={"instances": ["@@@"]}, headers={"x-request-id": "req-4242"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "req-4242"
    lines = [ln for ln in ssd_server.log().splitlines() if '"request_id":"req-4242"' in ln]
    assert len(lines) == 1, lines
    logged = orjson.loads(lines[0][lines[0].index("{") :])
    assert logged["status"] == 400 and logged["protocol"] == "v1" and "instances[0]" in logged["error"]
    assert "Traceback" not in ssd_server.log().split("req-4242")[-1][:2000]
    generated = client.post(V1, json={"instances": "x"}).headers["x-request-id"]
    assert generated and generated in ssd_server.log()


# ----------------------------------------------------------------------------- concurrency
def test_32_concurrent_requests_each_get_their_own_detections(
    client, ssd_server, pngs, oracle, direct_detector
):
    """How many model calls 32 requests share depends on when they arrive; that they coalesce is
    shown deterministically with the model held (tests/test_shutdown.py)."""

    def one(i: int):
        return i, client.post(V1, json={"instances": [b64(pngs[i % len(pngs)])]})

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    for i, r in results:
        assert r.status_code == 200, r.text
        check_v1_image(r.json()["predictions"][0], oracle(i % len(pngs)), direct_detector.class_names)


def test_64_concurrent_requests_of_mixed_sizes_protocols_and_parameters(
    client, stub, pngs, oracle, direct_detector
):
    names = direct_detector.class_names
    rng = np.random.default_rng(64)
    jobs = []
    for i in range(64):
        protocol = ("v1", "raw", "v2", "grpc")[i % 4]
        count = 1 if protocol == "raw" else int(rng.integers(1, 5))
        images = [int(x) for x in rng.integers(0, len(pngs), count)]
        params = {"score_threshold": 0.5, "max_detections": 7} if (i % 3 == 0 and protocol != "raw") else {}
        jobs.append((protocol, images, params))

    def run(job):
        protocol, images, params = job
        expected = [oracle(k, params.get("score_threshold"), params.get("max_detections")) for k in images]
        if protocol == "grpc":
            check_v2_arrays(
                grpc_arrays(stub.ModelInfer(grpc_request([pngs[k] for k in images], params))), expected, names
            )
            return
        if protocol == "raw":
            r = client.post(V1, content=pngs[images[0]], headers={"content-type": "image/png"})
        elif protocol == "v1":
            body = {"instances": [{"b64": b64(pngs[k])} for k in images]}
            r = client.post(V1, json={**body, "parameters": params} if params else body)
        else:
            r = client.post(V2, json=v2_body([b64(pngs[k]) for k in images], params or None))
        assert r.status_code == 200, r.text
        if protocol == "v2":
            check_v2_arrays(v2_rest_arrays(r.json()), expected, names)
        else:
            for preds, e in zip(r.json()["predictions"], expected, strict=True):
                check_v1_image(preds, e, names)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(run, jobs))  # re-raises the first failed check


def test_a_bad_request_in_a_batch_fails_alone(client, ssd_server, pngs, oracle, direct_detector):
    bodies = [{"instances": [b64(pngs[i % len(pngs)])]} for i in range(12)]
    bodies[5] = {"instances": [b64(pngs[0]), b64(b"not an image at all")]}
    bodies[9] = {"instances": [b64(pngs[0])], "parameters": {"max_detections": -1}}
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: client.post(V1, json=b), bodies))
    for i, r in enumerate(responses):
        if i == 5:
            assert r.status_code == 400 and "instances[1]" in r.json()["error"]
        elif i == 9:
            assert r.status_code == 400 and "max_detections" in r.json()["error"]
        else:
            assert r.status_code == 200, r.text
            check_v1_image(r.json()["predictions"][0], oracle(i % len(pngs)), direct_detector.class_names)
    assert ssd_server.metric("ssd_queue_images") == 0


def test_no_retracing_after_warm_up(client, ssd_server, pngs):
    """Warm-up traced once for every bucket; requests of every size afterwards trace nothing new."""
    assert ssd_server.metric("ssd_traces_total") == 1
    for n in (1, 3, 5, 7, 9, 17, 32):
        r = client.post(V1, json={"instances": [b64(pngs[i % len(pngs)]) for i in range(n)]})
        assert r.status_code == 200, r.text
    assert ssd_server.metric("ssd_traces_total") == 1


def test_prometheus_metrics(client, ssd_server, pngs):
    """Each request moves exactly its own counters (read before and after: the server is shared)."""
    samples = {
        "v1_200": ("ssd_requests_total", 'protocol="v1",status="200"'),
        "v1_400": ("ssd_request_errors_total", 'protocol="v1",status="400"'),
        "v2_400": ("ssd_requests_total", 'protocol="v2",status="400"'),
        "v1_images": ("ssd_images_total", 'protocol="v1"'),
        "batches": ("ssd_batch_size_count", ""),
        "batched_images": ("ssd_batch_size_sum", ""),
    }
    before = {k: ssd_server.metric(*v) for k, v in samples.items()}
    assert client.post(V1, json={"instances": [b64(pngs[0]), b64(pngs[1])]}).status_code == 200
    assert client.post(V1, json={"instances": ["!"]}).status_code == 400
    assert client.post(V2, json={"inputs": []}).status_code == 400
    delta = {k: ssd_server.metric(*v) - before[k] for k, v in samples.items()}
    assert delta == {"v1_200": 1, "v1_400": 1, "v2_400": 1, "v1_images": 2, "batches": 1, "batched_images": 2}
    assert ssd_server.metric("ssd_model_ready") == 1
    assert ssd_server.metric("ssd_queue_images") == 0
    text = client.get("/metrics").text
    assert "request_predict_seconds" in text  # KServe's own histograms are still there


def test_the_heap_is_trimmed_once_per_idle_spell(client, ssd_server, pngs):
    """--malloc_trim_idle_s: after a request, once nothing has been in flight for 0.3 s, one
    malloc_trim; reading /metrics (no body) is not a request, so no second trim follows."""
    before = ssd_server.metric("ssd_heap_trims_total")
    assert client.post(V1, json={"instances": [b64(pngs[0])]}).status_code == 200
    deadline = time.monotonic() + 20
    while ssd_server.metric("ssd_heap_trims_total") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    trims = ssd_server.metric("ssd_heap_trims_total")
    assert trims > before
    time.sleep(4 * SERVER_TRIM_IDLE_S)
    assert ssd_server.metric("ssd_heap_trims_total") == trims
    assert ssd_server.metric("ssd_heap_trimmed_bytes_total") > 0
    assert f"trimmed after {SERVER_TRIM_IDLE_S:g} s idle" in ssd_server.log_path.read_text()


def test_an_oversized_body_is_refused_before_it_is_read(ssd_server):
    import socket

    head = (
        f"POST {V1} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", ssd_server.http_port), timeout=10) as s:
        s.sendall(head.encode())  # and never the body
        reply = s.makefile("rb")
        status = reply.readline().split()[1]
        headers = dict(line.strip().split(b": ", 1) for line in iter(reply.readline, b"\r\n"))
        body = orjson.loads(reply.read(int(headers[b"content-length"])))
    assert status == b"413"
    assert body["error"] == "request body is 1000000000 bytes, the limit is 67108864 (--max_request_bytes)"
    assert ssd_server.metric("ssd_request_errors_total", 'protocol="v1",status="413"') >= 1
