"""The request matrix: random controls (including none) x every protocol x every input form, each answer
equal to the :class:`~predictor.ssd.detector.Detector`'s own answer for the same pixels and controls.

This test, not a per-module mutation score, guards composition: a control that one input form's path
drops (as ``UINT8`` dropped ``nms_threshold`` and ``classes`` once) makes that form's answers differ from
the detector's. Forms: V1 JSON (base64 strings), V1 raw body (controls as query parameters); V2 REST
BYTES in JSON and in the binary extension, V2 REST UINT8 in JSON and in the binary extension; gRPC
BYTES in ``bytes_contents`` and ``raw_input_contents``, gRPC UINT8 in ``raw_input_contents`` and
``uint_contents``. gRPC parameters are sent in every kind a client may use for them (KServe's
``string_param`` / ``int64_param``, Triton's ``double_param`` / ``uint64_param``, which KServe's proto
lacks and the server reads from the unknown fields).

Answers are compared as the client normalises them (:mod:`predictor.protocol.detections`): same classes
in the same order, scores within 1e-3, boxes within 1 pixel. One module-scoped server (``ssd_server``),
a few examples per form plus two explicit ones (every control set, none set), so it runs in ``make test``.
"""

from __future__ import annotations

import base64
import functools
import struct
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from serving_fixtures import MODEL_NAME, encode_image

from predictor.protocol import detections, tensors
from predictor.serving import codecs

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
CLASS_NAMES = ("background", "circle", "square", "triangle", "star", "hexagon", "cross")  # the shapes set

FORMS = (
    "v1-json",
    "v1-raw-query",
    "v2-json-bytes",
    "v2-binary-bytes",
    "v2-json-uint8",
    "v2-binary-uint8",
    "grpc-bytes-contents",
    "grpc-raw-bytes",
    "grpc-raw-uint8",
    "grpc-uint-contents",
)
#: Forms whose request carries one image only (a raw V1 body is one image).
ONE_IMAGE_FORMS = ("v1-raw-query",)

_class_entry = st.sampled_from(CLASS_NAMES[1:]) | st.integers(1, len(CLASS_NAMES) - 1)
controls_strategy = st.builds(
    codecs.Controls,
    score_threshold=st.none() | st.sampled_from([0.05, 0.1, 0.15, 0.3, 0.5]),
    max_detections=st.none() | st.integers(1, 40),
    nms_threshold=st.none() | st.sampled_from([0.1, 0.3, 0.6, 0.9]),
    classes=st.none() | st.lists(_class_entry, min_size=1, max_size=3).map(tuple),
)
#: The explicit examples (server defaults: score 0.2, 100 detections, NMS 0.45, every class). On the two
#: images, each control of EVERY_CONTROL changes the answer; on the first image alone, max_detections 60
#: cuts nothing, so CAPPED (5 detections) covers it there (checked by the last test of this module).
EVERY_CONTROL = codecs.Controls(0.5, 60, 0.8, ("circle", 4))
CAPPED = codecs.Controls(None, 5, 0.3, ("square", 2))
#: How gRPC parameters are sent: the kind of a float and of an integer.
grpc_kinds = st.sampled_from([("string_param", "int64_param"), ("double_param", "uint64_param")])


@pytest.fixture(scope="module")
def pixels(shapes_images) -> np.ndarray:
    """Two held-out images cropped to one size: uint8 ``[2, H, W, 3]`` (a UINT8 batch has one H, W)."""
    h = min(im.shape[0] for im in shapes_images[:2])
    w = min(im.shape[1] for im in shapes_images[:2])
    return np.stack([im[:h, :w] for im in shapes_images[:2]])


@pytest.fixture(scope="module")
def pngs(pixels) -> list[bytes]:
    return [encode_image(im, "PNG") for im in pixels]  # lossless: the server decodes the same pixels


@pytest.fixture(scope="module")
def expected_for(direct_detector, pixels):
    """``(controls, n) -> normalised detections`` of the first ``n`` images by the detector itself."""

    @functools.cache
    def expected(controls: codecs.Controls, n: int) -> list[list[dict]]:
        mask = codecs.class_mask(controls.classes, direct_detector.class_names)
        found = direct_detector.detect(
            list(pixels[:n]),
            score_threshold=controls.score_threshold,
            max_detections=controls.max_detections,
            nms_threshold=controls.nms_threshold,
            class_mask=mask,
        )
        names = direct_detector.class_names
        return [
            detections.detection_records(
                [names[c] for c in d.classes.tolist()], d.classes.tolist(), d.scores, d.boxes
            )
            for d in found
        ]

    return expected


# ----------------------------------------------------------------------------- parameters per protocol
def rest_parameters(controls: codecs.Controls, v1: bool) -> dict[str, Any]:
    """JSON ``parameters``: numbers as numbers; the class filter a list (V1) or ``"a,b"`` (V2 scalars)."""
    out: dict[str, Any] = {}
    for name in detections.PARAMETER_NAMES:
        value = getattr(controls, name)
        if value is None:
            continue
        out[name] = (
            list(value) if name == "classes" and v1 else _joined(value) if name == "classes" else value
        )
    return out


def query_parameters(controls: codecs.Controls) -> dict[str, str]:
    """The query string of a raw V1 body: every value as text."""
    return {k: str(v) for k, v in rest_parameters(controls, False).items()}


def _joined(classes: tuple[str | int, ...]) -> str:
    return ",".join(map(str, classes))


def grpc_parameters(controls: codecs.Controls, kinds: tuple[str, str]) -> dict[str, pb.InferParameter]:
    """gRPC parameters, floats and integers in the given kinds. Triton's ``double_param`` (field 4) and
    ``uint64_param`` (field 5) are serialised by hand, as tritonclient puts them on the wire."""
    float_kind, int_kind = kinds
    out: dict[str, pb.InferParameter] = {}
    for name, value in rest_parameters(controls, False).items():
        if name == "classes":
            out[name] = pb.InferParameter(string_param=value)
        elif name == "max_detections":
            out[name] = (
                pb.InferParameter(int64_param=value)
                if int_kind == "int64_param"
                else pb.InferParameter.FromString(b"\x28" + _varint(value))
            )
        elif float_kind == "string_param":
            out[name] = pb.InferParameter(string_param=repr(float(value)))
        else:
            out[name] = pb.InferParameter.FromString(b"\x21" + struct.pack("<d", value))
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ----------------------------------------------------------------------------- requests per form
class Rig:
    """What a request of the matrix needs (short repr: hypothesis prints a failing example's arguments)."""

    def __init__(self, pixels: np.ndarray, pngs: list[bytes], client: httpx.Client, stub: Any, expected: Any):
        self.pixels, self.pngs, self.client, self.stub = pixels, pngs, client, stub
        self.expected: Callable[[codecs.Controls, int], list[list[dict]]] = expected

    def __repr__(self) -> str:
        return "Rig(...)"


@pytest.fixture(scope="module")
def rig(pixels, pngs, client, stub, expected_for) -> Rig:
    return Rig(pixels, pngs, client, stub, expected_for)


def send(form: str, controls: codecs.Controls, kinds: tuple[str, str], n: int, rig: Rig) -> list[list[dict]]:
    """One request of ``form`` with ``controls`` -> normalised detections per image."""
    images, batch, client, stub = rig.pngs[:n], np.ascontiguousarray(rig.pixels[:n]), rig.client, rig.stub
    if form.startswith("v1"):
        if form == "v1-raw-query":
            r = client.post(V1, content=images[0], params=query_parameters(controls),
                            headers={"content-type": "image/png"})  # fmt: skip
        else:
            body: dict[str, Any] = {"instances": [base64.b64encode(im).decode() for im in images]}
            if rest_parameters(controls, True):
                body["parameters"] = rest_parameters(controls, True)
            r = client.post(V1, json=body)
        assert r.status_code == 200, r.text
        return detections.detections_from_v1(r.json(), n)
    if form.startswith("v2"):
        uint8 = form.endswith("uint8")
        shape = list(batch.shape) if uint8 else [n]
        tensor: dict[str, Any] = {"name": "images", "shape": shape, "datatype": "UINT8" if uint8 else "BYTES"}
        header: dict[str, Any] = {"inputs": [tensor]}
        if rest_parameters(controls, False):
            header["parameters"] = rest_parameters(controls, False)
        if form.startswith("v2-json"):
            tensor["data"] = (
                batch.ravel().tolist() if uint8 else [base64.b64encode(im).decode() for im in images]
            )
            r = client.post(V2, json=header)
        else:
            raw = batch.tobytes() if uint8 else tensors.pack_bytes_elements(images)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            head = orjson.dumps(header)
            headers = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(head)),
            }
            r = client.post(V2, content=head + raw, headers=headers)
        assert r.status_code == 200, r.text
        return detections.detections_from_v2(tensors.arrays_from_json_outputs(r.json()), n)
    uint8 = form.endswith("uint8") or form == "grpc-uint-contents"
    shape = list(batch.shape) if uint8 else [n]
    inp = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8" if uint8 else "BYTES", shape=shape
    )
    raw_contents: list[bytes] = []
    if form == "grpc-bytes-contents":
        inp.contents.bytes_contents.extend(images)
    elif form == "grpc-uint-contents":
        inp.contents.uint_contents.extend(batch.ravel().tolist())
    else:
        raw_contents = [batch.tobytes() if uint8 else tensors.pack_bytes_elements(images)]
    request = pb.ModelInferRequest(
        model_name=MODEL_NAME, inputs=[inp], raw_input_contents=raw_contents,
        parameters=grpc_parameters(controls, kinds),
    )  # fmt: skip
    response = stub.ModelInfer(request, timeout=120)
    arrays = tensors.arrays_from_grpc_outputs(response.outputs, response.raw_output_contents)
    return detections.detections_from_v2(arrays, n)


def assert_same(got: list[list[dict]], expected: list[list[dict]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert [d["class_id"] for d in g] == [d["class_id"] for d in e]
        np.testing.assert_allclose([d["score"] for d in g], [d["score"] for d in e], atol=1e-3)
        boxes = [[d[k] for k in ("xmin", "ymin", "xmax", "ymax")] for d in (*g, *e)]
        np.testing.assert_allclose(boxes[: len(g)], boxes[len(g) :], atol=1.0)


# ----------------------------------------------------------------------------- the property
@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=3, deadline=None)
@given(controls=controls_strategy, kinds=grpc_kinds, two=st.booleans())
@example(controls=EVERY_CONTROL, kinds=("double_param", "uint64_param"), two=True)
@example(controls=CAPPED, kinds=("string_param", "int64_param"), two=False)
@example(controls=EVERY_CONTROL, kinds=("string_param", "int64_param"), two=False)
@example(controls=codecs.Controls(), kinds=("string_param", "int64_param"), two=True)
def test_every_form_answers_what_the_detector_answers(form, controls, kinds, two, rig):
    n = 1 if form in ONE_IMAGE_FORMS or not two else 2
    assert_same(send(form, controls, kinds, n, rig), rig.expected(controls, n))


def test_the_explicit_examples_need_every_control(expected_for):
    """Guards the matrix itself: for every form (two images, and one image for a raw V1 body), each
    control changes the detector's answer in one of the explicit examples, so a form whose path dropped
    any one control could not pass."""
    assert sum(map(len, expected_for(EVERY_CONTROL, 2))) > 0, "a comparison of empty answers proves nothing"
    for cases in ([(EVERY_CONTROL, 2)], [(EVERY_CONTROL, 1), (CAPPED, 1)]):
        for name in detections.PARAMETER_NAMES:
            changed = [
                expected_for(codecs.Controls(**{**controls.__dict__, name: None}), n)
                != expected_for(controls, n)
                for controls, n in cases
            ]
            assert any(changed), f"dropping {name} changes none of {cases}"
