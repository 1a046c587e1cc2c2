"""Property-based fuzzing of the request codecs and the image decoder.

Every input ends in a result or ``kserve.errors.InvalidInput`` (HTTP 400), never another exception,
and Pillow never decodes an image larger than the pixel cap. Example counts come from the Hypothesis
profile named by ``HYPOTHESIS_PROFILE``: ``ci`` (default, 50 examples per test), ``dev`` (10) or
``fuzz`` (2000; ``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py``, the ``make fuzz`` target).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import struct
from collections import Counter
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image, ImageFile, WebPImagePlugin, features
from serving_fixtures import MODEL_NAME, forge_gif_size, forge_jpeg_size, forge_png_size

from predictor.protocol.detections import detections_from_v2
from predictor.protocol.tensors import serialize_tensor
from predictor.protocol.wire import V2_OUTPUTS
from predictor.serving import binary_ext_kserve, codecs
from predictor.serving.images import ImageLimits, decode_base64, decode_image

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "derandomize": False}
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("ci", max_examples=50, **_COMMON)
settings.register_profile("fuzz", max_examples=2000, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
fuzz_settings = settings(PROFILE)

PIXEL_CAP = 64 * 64
LIMITS = ImageLimits(max_bytes=64 * 1024, max_pixels=PIXEL_CAP, max_side=1024)


def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = {}
    for fmt, kwargs in [("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("BMP", {})]:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
        out[fmt] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("L").save(buf, format="PNG")
    out["PNG-L"] = buf.getvalue()
    if features.check("webp"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="WEBP")
        out["WEBP"] = buf.getvalue()
    return out


SEEDS = _seed_images()


class _PixelGuard:
    """Patches Pillow's decoders to fail when asked to decode more than the pixel cap."""

    def __enter__(self):
        def guarded(original):
            def load(image, *args, **kwargs):
                w, h = image.size
                assert w * h <= PIXEL_CAP, f"Pillow decoding {w}x{h} pixels, over the cap"
                return original(image, *args, **kwargs)

            return load

        self._patches = [
            mock.patch.object(ImageFile.ImageFile, "load", guarded(ImageFile.ImageFile.load)),
            mock.patch.object(
                WebPImagePlugin.WebPImageFile, "load", guarded(WebPImagePlugin.WebPImageFile.load)
            ),
        ]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in reversed(self._patches):
            p.stop()


def decode_ok_or_invalid(data: bytes) -> None:
    with _PixelGuard():
        try:
            out = decode_image(data, LIMITS)
        except InvalidInput:
            return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert 0 < out.shape[0] * out.shape[1] <= PIXEL_CAP


# ----------------------------------------------------------------------------- image decoder
@fuzz_settings
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    decode_ok_or_invalid(data)


@fuzz_settings
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_truncated_images(fmt, data):
    seed = SEEDS[fmt]
    decode_ok_or_invalid(seed[: data.draw(st.integers(0, len(seed) - 1))])


@fuzz_settings
@given(
    st.sampled_from(sorted(SEEDS)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=8)
)
def test_bit_flips(fmt, flips):
    data = bytearray(SEEDS[fmt])
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    decode_ok_or_invalid(bytes(data))


@fuzz_settings
@given(
    st.sampled_from(sorted(SEEDS)),
    st.integers(0, 10**6),
    st.binary(min_size=1, max_size=64),
    st.booleans(),
)
def test_spliced_bytes(fmt, position, chunk, replace):
    seed = SEEDS[fmt]
    at = position % len(seed)
    data = seed[:at] + chunk + seed[at + (len(chunk) if replace else 0) :]
    decode_ok_or_invalid(data)


@fuzz_settings
@given(st.sampled_from(["PNG", "JPEG", "GIF"]), st.integers(0, 65535), st.integers(0, 65535))
def test_forged_dimensions(fmt, width, height):
    forge = {"PNG": forge_png_size, "JPEG": forge_jpeg_size, "GIF": forge_gif_size}[fmt]
    decode_ok_or_invalid(forge(SEEDS[fmt], width, height))


@fuzz_settings
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_forged_huge_png_dimensions(width, height):
    decode_ok_or_invalid(forge_png_size(SEEDS["PNG"], width, height))


@fuzz_settings
@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
def test_forged_bmp_dimensions(width, height):
    data = bytearray(SEEDS["BMP"])
    data[18:26] = struct.pack("<ii", width, height)
    decode_ok_or_invalid(bytes(data))


@fuzz_settings
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_base64_text(text):
    try:
        out = decode_base64(text, 1000)
    except InvalidInput:
        return
    assert isinstance(out, bytes) and len(out) <= 1000


# ----------------------------------------------------------------------------- request codecs
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
INSTANCE = st.one_of(
    JSON,
    st.text(alphabet="ABCDabcd0123+/=", max_size=16),
    st.fixed_dictionaries({"b64": JSON}),
    st.fixed_dictionaries({"image": st.one_of(JSON, st.fixed_dictionaries({"b64": JSON}))}),
    st.fixed_dictionaries({"image_bytes": st.one_of(JSON, st.fixed_dictionaries({"b64": JSON}))}),
)
PARAMETERS = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "score_threshold": st.one_of(JSON, st.floats(-1, 2), st.text(max_size=6)),
            "max_detections": st.one_of(JSON, st.integers(-5, 300), st.floats(-5, 300)),
        },
    ),
)


B64_TEXT = st.text(alphabet="ABCDabcd0123+/=", min_size=1, max_size=16)
#: Every instance form V1 accepts, with the base64 text it carries.
VALID_INSTANCE = st.one_of(
    B64_TEXT.map(lambda t: (t, t)),
    B64_TEXT.map(lambda t: ({"b64": t}, t)),
    st.sampled_from(["image", "image_bytes"]).flatmap(
        lambda key: B64_TEXT.flatmap(lambda t: st.sampled_from([({key: t}, t), ({key: {"b64": t}}, t)]))
    ),
)
VALID_PARAMETERS = st.fixed_dictionaries(
    {}, optional={"score_threshold": st.floats(0, 1), "max_detections": st.integers(1, 100)}
)


@fuzz_settings
@given(st.lists(VALID_INSTANCE, min_size=1, max_size=4), st.one_of(st.none(), VALID_PARAMETERS))
def test_v1_valid_bodies_round_trip(instances, parameters):
    """Every valid body is accepted, each instance's text handed on untouched, the parameters kept."""
    body = {"instances": [item for item, _ in instances]}
    if parameters is not None:
        body["parameters"] = parameters
    request = codecs.parse_v1(body, max_batch_size=4, max_detections=100)
    assert [p.field for p in request.images] == [f"instances[{i}]" for i in range(len(instances))]
    assert [p.data for p in request.images] == [text for _, text in instances]
    assert all(p.is_base64 is True for p in request.images)
    params = parameters or {}
    assert request.controls.score_threshold == params.get("score_threshold")
    assert request.controls.max_detections == params.get("max_detections")


@fuzz_settings
@given(
    st.one_of(
        JSON,
        st.fixed_dictionaries(
            {"instances": st.lists(INSTANCE, max_size=6)}, optional={"parameters": PARAMETERS}
        ),
    )
)
def test_v1_json_bodies(body):
    """Anything else: accepted (then well-formed) or refused with a message naming where."""
    try:
        request = codecs.parse_v1(body, max_batch_size=4, max_detections=100)
    except InvalidInput as e:
        assert_names_a_field(e, ("instances", "parameters", "expected a JSON object", 'missing "instances"'))
        return
    assert [p.field for p in request.images] == [f"instances[{i}]" for i in range(len(body["instances"]))]
    assert request.controls.score_threshold is None or 0 <= request.controls.score_threshold <= 1
    assert request.controls.max_detections is None or 1 <= request.controls.max_detections <= 100


def assert_names_a_field(error: InvalidInput, fields: tuple[str, ...]) -> None:
    """A rejection says what is wrong, and where: one of ``fields`` appears in its message."""
    assert error.reason and any(f in error.reason for f in fields), error.reason


@fuzz_settings
@given(st.binary(max_size=200), st.sampled_from(["application/json", "image/jpeg", "", "text/json; x=y"]))
def test_v1_byte_bodies(body, content_type):
    """A raw body is JSON or one image, by the documented rule; one image is handed on byte for byte."""
    as_json = codecs.v1_body_is_json(body, content_type)
    try:
        request = codecs.parse_v1(body, content_type, max_batch_size=4, max_detections=100)
    except InvalidInput:
        assert as_json, "a body read as one image is never refused before decoding"
        return
    if not as_json:
        (payload,) = request.images
        assert payload.field == "instances[0]" and payload.data == body
    assert content_type != "image/jpeg" or not as_json


@fuzz_settings
@given(
    name=st.text(max_size=10),
    shape=st.lists(st.integers(-3, 6), max_size=3),
    datatype=st.sampled_from(["BYTES", "FP32", "INT32", "bytes", ""]),
    data=st.one_of(
        JSON, st.lists(st.binary(max_size=8), max_size=6), st.lists(st.text(max_size=8), max_size=6)
    ),
    from_grpc=st.booleans(),
    parameters=PARAMETERS,
)
def test_v2_requests(name, shape, datatype, data, from_grpc, parameters):
    params = parameters if isinstance(parameters, dict) or parameters is None else {"p": parameters}
    request = InferRequest(
        "m", [InferInput(name, shape, datatype, data=data)], from_grpc=from_grpc, parameters=params
    )
    try:
        parsed = codecs.parse_v2(request, max_batch_size=4, max_detections=100)
    except InvalidInput as e:
        assert_names_a_field(e, ("inputs[0]", "input", "parameters", name or "images"))
        return
    n = len(parsed.images)
    assert datatype.upper() == "BYTES" and list(shape) in ([n], [n, 1]) and 1 <= n <= 4
    elements = data if isinstance(data, list) else [data]  # a lone value is one element
    assert [p.data for p in parsed.images] == elements  # the elements, in order, untouched


@fuzz_settings
@given(
    st.lists(st.one_of(st.binary(min_size=1, max_size=8), B64_TEXT), min_size=1, max_size=4),
    st.booleans(),
    st.one_of(st.none(), VALID_PARAMETERS),
)
def test_v2_valid_requests_round_trip(elements, from_grpc, parameters):
    """A valid V2 tensor is accepted, its elements handed on in order, untouched, parameters kept."""
    tensor = InferInput("images", [len(elements)], "BYTES", data=elements)
    request = InferRequest("m", [tensor], from_grpc=from_grpc, parameters=parameters)
    parsed = codecs.parse_v2(request, max_batch_size=4, max_detections=100)
    assert parsed.protocol == ("grpc" if from_grpc else "v2") and parsed.infer_request is request
    assert [p.data for p in parsed.images] == elements
    assert len({p.field for p in parsed.images}) == len(elements)
    params = parameters or {}
    assert parsed.controls.score_threshold == params.get("score_threshold")
    assert parsed.controls.max_detections == params.get("max_detections")


@fuzz_settings
@given(st.binary(max_size=200))
def test_raw_bytes_tensor(raw):
    try:
        items = codecs.split_raw_bytes(raw)
    except InvalidInput as e:
        assert e.reason.startswith("input: malformed raw BYTES contents"), e.reason
        return
    assert b"".join(struct.pack("<I", len(i)) + i for i in items) == raw  # exact round trip


@fuzz_settings
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.integers(1, 6), st.data())
def test_responses_round_trip(counts, width, data):
    """Random detections -> V1 JSON and V2 arrays: every field of every detection, compared with what was
    encoded (scores rounded to 4 decimals, coordinates to 2, as the format says), the V2 padding zero /
    empty, and the client's reader of the V2 arrays gives the V1 records."""
    d = max(max(counts), 1)
    n = len(counts)
    boxes = np.asarray(
        data.draw(st.lists(st.floats(0, 5000, width=32), min_size=n * d * 4, max_size=n * d * 4)), np.float32
    ).reshape(n, d, 4)
    scores = np.sort(
        np.asarray(
            data.draw(st.lists(st.floats(0, 1, width=32), min_size=n * d, max_size=n * d)), np.float32
        ).reshape(n, d)
    )[:, ::-1]
    classes = np.asarray(
        data.draw(st.lists(st.integers(1, width), min_size=n * d, max_size=n * d)), np.int32
    ).reshape(n, d)
    dets = codecs.ResponseDetections(boxes, scores, classes, np.asarray(counts, np.int32))
    names = tuple(f"class {i}" for i in range(width + 1))
    expected = [
        [
            {
                "label": names[int(classes[i, j])],
                "class_id": int(classes[i, j]),
                "score": float(np.round(np.float64(scores[i, j]), 4)),
                **{
                    key: float(np.round(np.float64(boxes[i, j, c]), 2))
                    for c, key in enumerate(("xmin", "ymin", "xmax", "ymax"))
                },
            }
            for j in range(counts[i])
        ]
        for i in range(n)
    ]
    v1 = orjson.loads(codecs.encode_v1(dets, names))
    assert v1 == {"predictions": expected}
    assert all(
        list(r) == ["label", "class_id", "score", "xmin", "ymin", "xmax", "ymax"]
        for p in v1["predictions"]
        for r in p
    )

    arrays, label_index = codecs.v2_arrays(dets, names)
    k = max(counts)
    assert [name for name, _ in V2_OUTPUTS] == list(arrays)
    assert arrays["num_detections"].dtype == np.int32 and arrays["num_detections"].tolist() == counts
    valid = np.arange(k)[None, :] < np.asarray(counts)[:, None]  # [n, k]
    assert arrays["detection_boxes"].dtype == np.float32 and arrays["detection_boxes"].shape == (n, k, 4)
    np.testing.assert_array_equal(arrays["detection_boxes"], np.where(valid[..., None], boxes[:, :k], 0))
    assert arrays["detection_scores"].dtype == np.float32
    np.testing.assert_array_equal(arrays["detection_scores"], np.where(valid, scores[:, :k], 0))
    assert arrays["detection_classes"].dtype == np.int32
    np.testing.assert_array_equal(arrays["detection_classes"], np.where(valid, classes[:, :k], 0))
    labels = [
        [names[c] if ok else "" for c, ok in zip(row, vrow, strict=True)]
        for row, vrow in zip(classes[:, :k], valid, strict=True)
    ]
    assert arrays["detection_labels"].tolist() == labels
    assert [[([*names, ""])[x] for x in row] for row in label_index.tolist()] == labels
    assert detections_from_v2(arrays, n) == expected


def test_the_active_profile_is_the_one_asked_for():
    """``make fuzz`` (HYPOTHESIS_PROFILE=fuzz) really runs 2000 examples per property, CI 50: every
    property of this module carries the profile's settings, and two of them, run with a counting body
    in place of theirs, generate exactly that many examples."""
    asked = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    expected = {"dev": 10, "ci": 50, "fuzz": 2000}[asked]
    properties = {
        name: fn for name, fn in globals().items() if name.startswith("test_") and hasattr(fn, "hypothesis")
    }
    assert len(properties) >= 15, sorted(properties)
    for name, fn in properties.items():
        assert fn._hypothesis_internal_use_settings.max_examples == expected, name
    for fn in (test_arbitrary_bytes, test_v1_json_bodies):
        calls: list[tuple] = []
        original = fn.hypothesis.inner_test
        fn.hypothesis.inner_test = lambda *args, _calls=calls, **kwargs: _calls.append(args)
        try:
            fn()
        finally:
            fn.hypothesis.inner_test = original
        assert len(calls) == expected, fn.__name__


@fuzz_settings
@given(st.binary(max_size=300), st.one_of(st.none(), st.text(max_size=8)))
def test_binary_extension_bodies(body, header_length):
    with contextlib.suppress(InvalidInput):
        binary_ext_kserve.parse_request(body, header_length, "m", [n for n, _ in V2_OUTPUTS])


# ----------------------------------------------------------------------------- the real server
# Generated requests of every protocol against the running server (``ssd_server``): each answer is 200
# or 4xx (gRPC: OK, INVALID_ARGUMENT), never 5xx, and the server stays healthy. Each test sends at least
# SERVER_EXAMPLES requests of its protocol (4 x 500 = 2,000 by default; HYPOTHESIS_PROFILE=dev sends
# fewer) and counts them itself, so it claims the same alone, with -k, in any order or under xdist.
SERVER_EXAMPLES = {"dev": 50, "ci": 500, "fuzz": 2500}[os.environ.get("HYPOTHESIS_PROFILE", "ci")]
server_settings = settings(
    max_examples=SERVER_EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
V1_PATH = f"/v1/models/{MODEL_NAME}:predict"
V2_PATH = f"/v2/models/{MODEL_NAME}/infer"


def _small_images() -> list[bytes]:
    rgb = np.random.default_rng(1).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SMALL = _small_images()
B64 = [base64.b64encode(im).decode() for im in SMALL]
#: Bytes an element may hold: image files, their base64 text, corrupt and foreign bytes.
VALID_BYTES = st.sampled_from(SMALL + [b.encode() for b in B64])
ELEMENT_BYTES = st.one_of(
    VALID_BYTES,
    st.builds(lambda im, n: im[:n], st.sampled_from(SMALL), st.integers(0, 80)),
    st.binary(max_size=24),
)
ELEMENTS = st.one_of(st.lists(VALID_BYTES, min_size=1, max_size=3), st.lists(ELEMENT_BYTES, max_size=4))
HUGE = st.sampled_from([2**63, -(2**63) - 1, 10**30, 2**64 + 1, 10**400])
#: What a mutation puts in place of a value.
REPLACEMENT = st.one_of(
    JSON,
    HUGE,
    st.floats(),  # NaN, infinities: written as NaN/Infinity (not JSON)
    st.integers(-3, 300),
    st.text(max_size=8),
    st.sampled_from(B64),
    st.lists(st.integers(-(2**63), 2**64), max_size=3),
)
#: Hand-written texts (JSON= cannot produce them): refused by the parser or stressing it.
HOSTILE_TEXT = st.sampled_from(
    [
        '{"instances": [NaN]}',
        '{"instances": ["a"], "parameters": {"score_threshold": Infinity}}',
        '{"instances": ["a"], "parameters": {"max_detections": ' + "9" * 400 + "}}",
        '{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [-Infinity], "data": ["a"]}]}',
        "[" * 100_000 + "]" * 100_000,
        '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"a": "\\ud800"}',
        "\ufeff{}",
        "",
    ]
)
VALID_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "score_threshold": st.one_of(st.floats(0, 1), st.sampled_from(["0.3", "1"])),
        "max_detections": st.one_of(st.integers(1, 100), st.sampled_from([1.0, "7"])),
        "binary_data_output": st.booleans(),
    },
)
OUTPUT_NAMES = [n for n, _ in V2_OUTPUTS]
VALID_OUTPUTS = st.lists(
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(OUTPUT_NAMES), st.text(max_size=6))},
        optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data": st.booleans()})},
    ),
    max_size=3,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys / indices) into a JSON value, the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw, base: st.SearchStrategy) -> object:
    """A valid request with 0-2 mutations: a value replaced by something else, or a key deleted."""
    import copy

    value = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(_paths(value)))
        if not path:
            return draw(REPLACEMENT)
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(REPLACEMENT)
    return value


def _encode(value: object) -> bytes:
    """JSON text of a generated value: huge integers as their digits, NaN and infinities spelled as
    Python's ``json`` writes them (``NaN``, ``Infinity``: not JSON, so refused with 400)."""
    import json

    return json.dumps(value, allow_nan=True).encode()


def _check_rest(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert response.status_code in (200, 400, 404, 413), (response.status_code, response.text[:500])


def _count(sent: Counter, ok: bool) -> None:
    """One request sent by the test counting in ``sent`` (``ok``: answered 200 / gRPC OK)."""
    sent["requests"] += 1
    sent["200"] += ok


@pytest.fixture(scope="module")
def http(ssd_server):
    import httpx

    with httpx.Client(base_url=ssd_server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_stub(ssd_server):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(ssd_server.grpc_target)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _assert_volume_and_health(sent: Counter, http, grpc_stub) -> None:
    """After one protocol's fuzzing: it sent SERVER_EXAMPLES requests or more (Hypothesis runs
    ``max_examples`` examples, more when it replays or shrinks), at least 1 in 20 reached the model and
    was answered (the generators test the model's path, not only the parsers), and the server is healthy
    on REST and gRPC."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    assert sent["requests"] >= SERVER_EXAMPLES, sent
    assert sent["200"] >= SERVER_EXAMPLES // 20, sent
    assert http.get("/v2/health/ready").status_code == 200
    r = http.post(V1_PATH, json={"instances": [B64[0]]})
    assert r.status_code == 200, r.text
    assert grpc_stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


V1_VALID = st.fixed_dictionaries(
    {
        "instances": st.lists(
            st.one_of(
                st.sampled_from(B64),
                st.builds(lambda b: {"b64": b}, st.sampled_from(B64)),
                st.builds(lambda b: {"image": {"b64": b}}, st.sampled_from(B64)),
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={
        "parameters": VALID_PARAMS.map(lambda p: {k: v for k, v in p.items() if k != "binary_data_output"})
    },
)
V1_BODY = st.one_of(
    st.builds(_encode, mutated(V1_VALID)),
    st.builds(str.encode, HOSTILE_TEXT),
    ELEMENT_BYTES,
)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "image/png",
        "text/plain",
    ]
)


def test_server_v1_never_5xx(http, grpc_stub):
    sent = Counter()

    @server_settings
    @given(body=V1_BODY, content_type=CONTENT_TYPES)
    def fuzz(body, content_type):
        headers = {"content-type": content_type} if content_type else {"content-type": ""}
        r = http.post(V1_PATH, content=body, headers=headers)
        _count(sent, r.status_code == 200)
        _check_rest(r)

    fuzz()
    _assert_volume_and_health(sent, http, grpc_stub)


V2_VALID = st.builds(
    lambda images, params, outputs, nested: {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [len(images), 1] if nested else [len(images)],
                "data": [[b] for b in images] if nested else images,
            }
        ],
        **({"parameters": params} if params else {}),
        **({"outputs": outputs} if outputs else {}),
    },
    st.lists(st.sampled_from(B64), min_size=1, max_size=3),
    VALID_PARAMS,
    VALID_OUTPUTS,
    st.booleans(),
)


def test_server_v2_json_never_5xx(http, grpc_stub):
    sent = Counter()

    @server_settings
    @given(
        body=st.one_of(st.builds(_encode, mutated(V2_VALID)), st.builds(str.encode, HOSTILE_TEXT)),
        content_type=CONTENT_TYPES,
    )
    def fuzz(body, content_type):
        headers = {"content-type": content_type} if content_type else {"content-type": ""}
        r = http.post(V2_PATH, content=body, headers=headers)
        _count(sent, r.status_code == 200)
        _check_rest(r)

    fuzz()
    _assert_volume_and_health(sent, http, grpc_stub)


def test_server_v2_binary_never_5xx(http, grpc_stub):
    sent = Counter()

    @server_settings
    @given(
        elements=ELEMENTS,
        shape=st.one_of(st.none(), st.none(), st.lists(st.integers(-2, 6), max_size=2)),
        size_delta=st.one_of(st.just(0), st.just(0), st.integers(-8, 8)),
        header_delta=st.one_of(st.just(0), st.just(0), st.integers(-6, 6)),
        extra=st.one_of(st.just(b""), st.just(b""), st.binary(max_size=6)),
        params=st.one_of(st.none(), VALID_PARAMS, mutated(VALID_PARAMS)),
        outputs=st.one_of(st.none(), VALID_OUTPUTS, mutated(VALID_OUTPUTS)),
        prefix_noise=st.one_of(st.none(), st.none(), st.binary(min_size=1, max_size=8)),
    )
    def fuzz(elements, shape, size_delta, header_delta, extra, params, outputs, prefix_noise):
        raw = serialize_tensor(np.array(elements, dtype=object), "BYTES") if elements else b""
        if prefix_noise is not None:
            raw = prefix_noise + raw
        tensor = {
            "name": "images",
            "datatype": "BYTES",
            "shape": [len(elements)] if shape is None else shape,
            "parameters": {"binary_data_size": len(raw) + size_delta},
        }
        head: dict = {"inputs": [tensor]}
        if params is not None:
            head["parameters"] = params
        if outputs is not None:
            head["outputs"] = outputs
        header = _encode(head)
        r = http.post(
            V2_PATH,
            content=header + raw + extra,
            headers={"inference-header-content-length": str(max(0, len(header) + header_delta))},
        )
        _count(sent, r.status_code == 200)
        _check_rest(r)
        if r.status_code == 200 and r.headers.get("inference-header-content-length"):
            n = int(r.headers["inference-header-content-length"])
            outputs_sent = orjson.loads(r.content[:n])["outputs"]
            sizes = sum(o.get("parameters", {}).get("binary_data_size", 0) for o in outputs_sent)
            assert n + sizes == len(r.content)

    fuzz()
    _assert_volume_and_health(sent, http, grpc_stub)


def _grpc_parameter(value):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=max(-(2**63), min(2**63 - 1, value)))
    return pb.InferParameter(string_param=str(value)[:40])


def test_server_grpc_never_internal(http, grpc_stub):
    sent = Counter()

    @server_settings
    @given(
        elements=ELEMENTS,
        shape=st.one_of(
            st.none(),
            st.none(),
            st.none(),
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
            st.lists(st.integers(-2, 6), max_size=2),
        ),
        datatype=st.sampled_from(["BYTES"] * 4 + ["FP32", "INT32", ""]),
        mode=st.sampled_from(
            ["contents", "contents", "raw", "raw", "raw_noise", "both", "raw_count", "none"]
        ),
        noise=st.binary(max_size=8),
        params=VALID_PARAMS
        | st.dictionaries(
            st.sampled_from(["score_threshold", "max_detections", "binary_data_output", "x"]),
            st.one_of(
                st.booleans(),
                st.integers(-(2**63), 2**63 - 1),
                st.text(max_size=8),
                st.floats(allow_nan=True),
            ),
            max_size=3,
        ),
    )
    def fuzz(elements, shape, datatype, mode, noise, params):
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        tensor = pb.ModelInferRequest.InferInputTensor(
            name="images", datatype=datatype, shape=[len(elements)] if shape is None else shape
        )
        raw = serialize_tensor(np.array(elements, dtype=object), "BYTES") if elements else b""
        raw_contents: list[bytes] = []
        if mode in ("contents", "both"):
            tensor.contents.bytes_contents.extend(elements)
        if mode in ("raw", "both"):
            raw_contents = [raw]
        elif mode == "raw_noise":
            raw_contents = [raw + noise]
        elif mode == "raw_count":
            raw_contents = [raw, noise]
        request = pb.ModelInferRequest(
            model_name=MODEL_NAME,
            inputs=[tensor],
            raw_input_contents=raw_contents,
            parameters={k: _grpc_parameter(v) for k, v in params.items()},
        )
        try:
            grpc_stub.ModelInfer(request, timeout=120)
            _count(sent, True)
        except grpc.RpcError as e:
            _count(sent, False)
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())

    fuzz()
    _assert_volume_and_health(sent, http, grpc_stub)
