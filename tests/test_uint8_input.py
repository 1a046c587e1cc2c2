"""V2 ``UINT8`` ``[N, H, W, 3]`` input: decoded pixels sent as a tensor, validated like encoded images.

The tensor forms follow the Open Inference Protocol: JSON ``data`` (flat, row-major, or nested), the
binary tensor extension, and gRPC ``raw_input_contents`` / ``uint_contents`` (kserve/kserve
``python/kserve/kserve/protocol/infer_type.py``: ``InferRequest.from_grpc`` puts
``raw_input_contents[i]`` into ``inputs[i]._raw_data``; ``get_content`` reads ``uint_contents`` for UINT8).
Server tests compare with the direct detector on the same pixels, so the decode-free path must give
exactly the detections of a lossless PNG of the same image.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse
from serving_fixtures import MODEL_NAME, SERVER_MAX_IMAGE_PIXELS

from predictor.serving import codecs
from predictor.serving.images import ImageError, ImageLimits, check_pixel_array

V2 = f"/v2/models/{MODEL_NAME}/infer"
RNG = np.random.default_rng(16)


def uint8_request(pixels: np.ndarray, *, raw: bool = False, nested: bool = False, grpc_: bool = False):
    data = None if raw else (pixels.tolist() if nested else pixels.ravel().tolist())
    inp = InferInput("images", list(pixels.shape), "UINT8", data=data)
    raw_inputs = [pixels.tobytes()] if raw else None
    return InferRequest(MODEL_NAME, [inp], raw_inputs=raw_inputs, from_grpc=grpc_)


def parse(request: InferRequest) -> codecs.ParsedRequest:
    return codecs.parse_v2(request, max_batch_size=4, max_detections=100)


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("form", ["flat", "nested", "raw"])
def test_uint8_tensor_parses_into_one_pixel_payload_per_image(form):
    pixels = RNG.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    parsed = parse(uint8_request(pixels, raw=form == "raw", nested=form == "nested"))
    assert parsed.protocol == "v2" and len(parsed.images) == 2
    for i, payload in enumerate(parsed.images):
        assert isinstance(payload, codecs.PixelPayload) and payload.field == f"images[{i}]"
        assert payload.pixels.dtype == np.uint8
        np.testing.assert_array_equal(payload.pixels, pixels[i])


def test_uint8_raw_contents_are_not_copied():
    pixels = RNG.integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
    request = uint8_request(pixels, raw=True)
    payload = parse(request).images[0]
    assert np.shares_memory(payload.pixels, np.frombuffer(request.inputs[0]._raw_data, np.uint8))


@pytest.mark.parametrize(
    "shape, data, message",
    [
        ([1, 4, 4], [0] * 48, "shape [N, H, W, 3]"),
        ([1, 4, 4, 4], [0] * 64, "shape [N, H, W, 3]"),
        ([1, 0, 4, 3], [], "zero size"),
        ([1, 4, 4, 3], [0] * 47, "needs 48 values, got 47"),
        ([1, 2, 2, 3], [0] * 11 + [256], "0..255"),
        ([1, 2, 2, 3], [0] * 11 + [-1], "0..255"),
        ([1, 2, 2, 3], [0.5] * 12, "integers"),
        ([1, 2, 2, 3], ["a"] * 12, "integers"),
        ([1, 2, 2, 3], "abc", "list of integers"),
        ([1, 2, 2, 3], None, "no data"),
        ([5, 1, 1, 3], [0] * 15, "5 images, the limit is 4"),
        ([0, 1, 1, 3], [], "no images"),
        (["x", 1, 1, 3], [0] * 3, "list of integers"),
    ],
)
def test_bad_uint8_tensors_are_400_naming_the_input(shape, data, message):
    inp = InferInput("pixels", shape, "UINT8", data=data)
    with pytest.raises(InvalidInput) as e:
        parse(InferRequest(MODEL_NAME, [inp]))
    assert e.value.reason.startswith("pixels: ") and message in e.value.reason


def test_raw_uint8_contents_of_the_wrong_length_are_400():
    inp = InferInput("images", [1, 4, 4, 3], "UINT8")
    request = InferRequest(MODEL_NAME, [inp], raw_inputs=[b"\0" * 47], from_grpc=True)
    with pytest.raises(InvalidInput, match="images: shape \\[1, 4, 4, 3\\] needs 48 bytes, got 47"):
        parse(request)


def test_pixel_arrays_are_checked_against_the_image_caps():
    limits = ImageLimits(max_pixels=100, max_side=20)
    check_pixel_array(np.zeros((10, 10, 3), np.uint8), limits)
    with pytest.raises(ImageError, match="too many pixels"):
        check_pixel_array(np.zeros((11, 10, 3), np.uint8), limits)
    with pytest.raises(ImageError, match="larger than 20"):
        check_pixel_array(np.zeros((1, 21, 3), np.uint8), limits)
    with pytest.raises(ImageError, match="uint8"):
        check_pixel_array(np.zeros((2, 2, 3), np.int16), limits)
    with pytest.raises(ImageError, match=r"\[H, W, 3\]"):
        check_pixel_array(np.zeros((2, 2, 4), np.uint8), limits)


# ----------------------------------------------------------------------------- the real server
def rest_arrays(body: dict) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "INT32": np.int32, "BYTES": object}
    return {
        o["name"]: np.array(o["data"], dtypes[o["datatype"]]).reshape(o["shape"]) for o in body["outputs"]
    }


def check_same_detections(arrays: dict[str, np.ndarray], expected: list) -> None:
    for i, e in enumerate(expected):
        n = len(e.scores)
        assert arrays["num_detections"][i] == n
        np.testing.assert_allclose(arrays["detection_scores"][i, :n], e.scores, atol=1e-5)
        np.testing.assert_allclose(arrays["detection_boxes"][i, :n], e.boxes, atol=1e-3)
        np.testing.assert_array_equal(arrays["detection_classes"][i, :n], e.classes)


@pytest.fixture(scope="module")
def same_size_images(shapes_images):
    """Two held-out images cropped to one size (a UINT8 batch has one H, W)."""
    h = min(im.shape[0] for im in shapes_images[:2])
    w = min(im.shape[1] for im in shapes_images[:2])
    return np.stack([im[:h, :w] for im in shapes_images[:2]])


def test_v2_rest_uint8_json_gives_the_detections_of_the_same_pixels(
    client, same_size_images, direct_detector
):
    body = {"inputs": [{"name": "images", "shape": list(same_size_images.shape), "datatype": "UINT8",
                        "data": same_size_images.ravel().tolist()}],
            "parameters": {"score_threshold": 0.05}}  # fmt: skip
    r = client.post(V2, json=body)
    assert r.status_code == 200, r.text
    expected = direct_detector.detect(list(same_size_images), score_threshold=0.05)
    assert sum(len(e.scores) for e in expected) > 0, "a comparison of empty results proves nothing"
    check_same_detections(rest_arrays(r.json()), expected)


def test_grpc_uint8_raw_input_contents(stub, same_size_images, direct_detector):
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=list(same_size_images.shape)
    )
    request = pb.ModelInferRequest(
        model_name=MODEL_NAME, inputs=[tensor], raw_input_contents=[same_size_images.tobytes()],
        parameters={"score_threshold": pb.InferParameter(string_param="0.05")},
    )  # fmt: skip
    response = InferResponse.from_grpc(stub.ModelInfer(request))
    arrays = {o.name: o.as_numpy() for o in response.outputs}
    check_same_detections(arrays, direct_detector.detect(list(same_size_images), score_threshold=0.05))


def test_uint8_images_over_the_pixel_cap_are_400_naming_the_image(client, stub):
    import orjson

    side = int(SERVER_MAX_IMAGE_PIXELS**0.5) + 1  # side * side > the server's pixel cap
    raw = bytes(side * side * 3)
    header = orjson.dumps({"inputs": [{"name": "images", "shape": [1, side, side, 3], "datatype": "UINT8",
                                       "parameters": {"binary_data_size": len(raw)}}]})  # fmt: skip
    r = client.post(V2, content=header + raw, headers={"inference-header-content-length": str(len(header))})
    assert r.status_code == 400 and "images[0]: image has too many pixels" in r.text
    # as JSON numbers the same pixels would take ~290 MB parsed: 413 before they are (the admission
    # middleware charges JSON by its parse cost against --max_request_bytes, 64 MiB)
    body = {"inputs": [{"name": "images", "shape": [1, side, side, 3], "datatype": "UINT8",
                        "data": [0] * (side * side * 3)}]}  # fmt: skip
    r = client.post(V2, json=body)
    assert r.status_code == 413 and "binary tensor extension" in r.json()["error"], r.text
    # over gRPC (8 MiB messages) the side cap: a 1 x 65536 image
    tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype="UINT8", shape=[1, 1, 65536, 3])
    request = pb.ModelInferRequest(
        model_name=MODEL_NAME, inputs=[tensor], raw_input_contents=[bytes(65536 * 3)]
    )
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[0]: image is 65536x1, a side is larger than 65535 pixels" in e.value.details()


def test_uint8_bad_shape_over_the_server_is_400(client):
    body = {"inputs": [{"name": "images", "shape": [1, 2, 2, 4], "datatype": "UINT8", "data": [0] * 16}]}
    r = client.post(V2, json=body)
    assert r.status_code == 400 and "images: UINT8 images must have shape [N, H, W, 3]" in r.text


def test_v2_rest_uint8_binary_extension(client, same_size_images, direct_detector):
    """The binary tensor extension (kserve/kserve python/kserve/kserve/protocol/dataplane.py reads
    ``Inference-Header-Content-Length``; ``InferRequest.from_bytes`` takes ``binary_data_size`` bytes)."""
    import orjson

    raw = same_size_images.tobytes()
    header = orjson.dumps(
        {"inputs": [{"name": "images", "shape": list(same_size_images.shape), "datatype": "UINT8",
                     "parameters": {"binary_data_size": len(raw)}}],
         "parameters": {"score_threshold": 0.05}}
    )  # fmt: skip
    r = client.post(
        V2,
        content=header + raw,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert r.status_code == 200, r.text
    check_same_detections(
        rest_arrays(r.json()), direct_detector.detect(list(same_size_images), score_threshold=0.05)
    )


def test_grpc_uint8_uint_contents(stub, same_size_images, direct_detector):
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=list(same_size_images.shape),
        contents=pb.InferTensorContents(uint_contents=same_size_images.ravel().tolist()),
    )  # fmt: skip
    request = pb.ModelInferRequest(
        model_name=MODEL_NAME,
        inputs=[tensor],
        parameters={"score_threshold": pb.InferParameter(string_param="0.05")},
    )
    response = InferResponse.from_grpc(stub.ModelInfer(request))
    arrays = {o.name: o.as_numpy() for o in response.outputs}
    check_same_detections(arrays, direct_detector.detect(list(same_size_images), score_threshold=0.05))


def test_grpc_uint8_values_over_255_are_invalid_argument(stub):
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="px",
        datatype="UINT8",
        shape=[1, 1, 1, 3],
        contents=pb.InferTensorContents(uint_contents=[0, 1, 300]),
    )
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor]))
    assert (
        e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "px: data must hold integers 0..255" in e.value.details()
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=True) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(-2, 5) | st.text(max_size=2), max_size=5),
    data=_json_values,
    raw=st.none() | st.binary(max_size=64),
    grpc_=st.booleans(),
)
def test_any_uint8_tensor_parses_or_is_invalid_input(shape, data, raw, grpc_):
    """Whatever shape, data or raw contents a client sends, parsing gives pixels or a 400, never a crash."""
    inp = InferInput("images", shape, "UINT8", data=data)
    request = InferRequest(MODEL_NAME, [inp], raw_inputs=[raw] if raw is not None else None, from_grpc=grpc_)
    try:
        parsed = parse(request)
    except InvalidInput as e:
        assert e.reason.startswith("images")
        return
    for payload in parsed.images:
        assert payload.pixels.dtype == np.uint8 and payload.pixels.ndim == 3 and payload.pixels.shape[2] == 3
