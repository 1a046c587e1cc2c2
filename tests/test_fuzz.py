"""Property-based fuzzing of the request codecs and the image decoder.

Every input ends in a result or ``kserve.errors.InvalidInput`` (HTTP 400), never another exception,
and Pillow never decodes an image larger than the pixel cap. Example counts come from the Hypothesis
profile named by ``HYPOTHESIS_PROFILE``: ``ci`` (default, 50 examples per test), ``dev`` (10) or
``fuzz`` (2000; ``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py``, the ``make fuzz`` target).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image, ImageFile, WebPImagePlugin, features
from serving_fixtures import forge_gif_size, forge_jpeg_size, forge_png_size

from predictor import codecs
from predictor.images import ImageLimits, decode_base64, decode_image

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
    try:
        request = codecs.parse_v1(body, max_batch_size=4, max_detections=100)
    except InvalidInput:
        return
    assert 1 <= len(request.images) <= 4
    assert all(isinstance(p.data, str) and p.is_base64 for p in request.images)
    assert request.score_threshold is None or 0 <= request.score_threshold <= 1
    assert request.max_detections is None or 1 <= request.max_detections <= 100


@fuzz_settings
@given(st.binary(max_size=200), st.sampled_from(["application/json", "image/jpeg", "", "text/json; x=y"]))
def test_v1_byte_bodies(body, content_type):
    with contextlib.suppress(InvalidInput):
        codecs.parse_v1(body, content_type, max_batch_size=4, max_detections=100)


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
    except InvalidInput:
        return
    assert 1 <= len(parsed.images) <= 4


@fuzz_settings
@given(st.binary(max_size=200))
def test_raw_bytes_tensor(raw):
    try:
        items = codecs.split_raw_bytes(raw)
    except InvalidInput:
        return
    assert sum(4 + len(i) for i in items) == len(raw)


@fuzz_settings
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.integers(1, 6), st.data())
def test_responses_round_trip(counts, width, data):
    import orjson

    d = max(max(counts), 1)
    n = len(counts)
    boxes = data.draw(st.lists(st.floats(0, 5000, width=32), min_size=n * d * 4, max_size=n * d * 4))
    scores = np.sort(
        np.asarray(
            data.draw(st.lists(st.floats(0, 1, width=32), min_size=n * d, max_size=n * d)), np.float32
        ).reshape(n, d)
    )[:, ::-1]
    classes = np.asarray(data.draw(st.lists(st.integers(1, width), min_size=n * d, max_size=n * d)), np.int32)
    dets = codecs.Detections(
        np.asarray(boxes, np.float32).reshape(n, d, 4),
        scores,
        classes.reshape(n, d),
        np.asarray(counts, np.int32),
    )
    names = tuple(f"class {i}" for i in range(width + 1))
    v1 = orjson.loads(codecs.encode_v1(dets, names))["predictions"]
    assert [len(p) for p in v1] == counts
    arrays, _ = codecs.v2_arrays(dets, names)
    assert arrays["detection_boxes"].shape == (n, max(counts), 4)


@pytest.mark.parametrize("profile", ["dev", "ci", "fuzz"])
def test_profiles_are_registered(profile):
    assert settings.get_profile(profile).max_examples in (10, 50, 2000)
