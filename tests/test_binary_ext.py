"""V2 REST bodies with Triton's binary tensor data extension (predictor.protocol.binary_ext, and
predictor.serving.binary_ext_kserve building KServe's request and response objects from it), no server:
exact parsed requests, exact error messages, exact response bodies, byte for byte.

Layout checked against Triton ``docs/protocol/extension_binary_data.md`` (triton-inference-server/server):
the JSON header's length is ``Inference-Header-Content-Length``; binary inputs follow it in order, each
``parameters.binary_data_size`` bytes; BYTES elements are a uint32 little-endian length then the bytes.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput

from predictor.protocol import binary_ext, json_body, tensors
from predictor.serving import binary_ext_kserve

OUTPUTS = ("num_detections", "detection_boxes")


def parse(head: object, binary: bytes = b"", header: bool | str = True) -> InferRequest:
    """Parse a body made of ``head`` (JSON) and ``binary``; ``header``: send its length (or this text)."""
    json_part = head if isinstance(head, bytes) else orjson.dumps(head)
    length = str(len(json_part)) if header is True else (header or None)
    return binary_ext_kserve.parse_request(json_part + binary, length, "ssd", OUTPUTS)


def refused(head: object, binary: bytes = b"", header: bool | str = True) -> str:
    with pytest.raises(InvalidInput) as info:
        parse(head, binary, header)
    return info.value.reason


def tensor(**fields) -> dict:
    return {"name": "images", "datatype": "BYTES", "shape": [1], **fields}


# ----------------------------------------------------------------------------- requests
def test_plain_json_request_without_the_header():
    head = {
        "id": "r-7",
        "inputs": [tensor(data=["AAAA"], parameters={"content_type": "str"})],
        "parameters": {"binary_data_output": True, "score_threshold": 0.4},
    }
    req = parse(head, header=False)
    assert req.model_name == "ssd" and req.id == "r-7"
    assert req.parameters == {"binary_data_output": True, "score_threshold": 0.4}
    assert req.request_outputs is None
    (inp,) = req.inputs
    assert (inp.name, inp.datatype, inp.shape, inp.data) == ("images", "BYTES", [1], ["AAAA"])
    assert inp.parameters == {"content_type": "str"}
    assert getattr(inp, "_raw_data", None) is None


def test_binary_inputs_take_their_bytes_in_order():
    first = struct.pack("<I", 3) + b"abc"
    second = bytes(range(12))
    head = {
        "inputs": [
            tensor(parameters={"binary_data_size": len(first)}),
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": [1, 2, 2, 3],
                "parameters": {"binary_data_size": 12},
            },
        ],
        "outputs": [
            {"name": "detection_boxes", "parameters": {"binary_data": True}},
            {"name": "num_detections"},
        ],
    }
    req = parse(head, first + second)
    assert [i._raw_data for i in req.inputs] == [first, second]
    assert [i.name for i in req.inputs] == ["images", "pixels"]
    assert [i.parameters for i in req.inputs] == [{"binary_data_size": 7}, {"binary_data_size": 12}]
    assert [i.data for i in req.inputs] == [None, None]
    assert req.inputs[1].shape == [1, 2, 2, 3] and req.inputs[1].datatype == "UINT8"
    assert [(o.name, o.parameters) for o in req.request_outputs] == [
        ("detection_boxes", {"binary_data": True}),
        ("num_detections", None),
    ]
    assert req.id is None and req.parameters is None


def test_header_length_may_carry_spaces_and_an_empty_binary_input():
    head = orjson.dumps({"inputs": [tensor(shape=[0], parameters={"binary_data_size": 0})]})
    req = binary_ext_kserve.parse_request(head, f" {len(head)} ", "ssd", OUTPUTS)
    assert req.inputs[0]._raw_data == b""


def test_extreme_but_valid_shapes_and_sizes():
    req = parse({"inputs": [tensor(shape=[0, 2**63 - 1], data=[])]})
    assert req.inputs[0].shape == [0, 2**63 - 1]
    # the last input may take every remaining byte
    assert (
        parse({"inputs": [tensor(parameters={"binary_data_size": 5})]}, b"12345").inputs[0]._raw_data
        == b"12345"
    )
    assert parse({"inputs": [tensor(data=["A"])], "outputs": []}).request_outputs is None


def test_the_json_part_is_exactly_the_header_length():
    head = orjson.dumps({"inputs": [tensor(parameters={"binary_data_size": 2})]})
    req = binary_ext_kserve.parse_request(head + b"{}", str(len(head)), "ssd", OUTPUTS)
    assert req.inputs[0]._raw_data == b"{}"
    # one byte short of the JSON: invalid JSON header
    with pytest.raises(InvalidInput, match=r"^invalid JSON inference header: "):
        binary_ext_kserve.parse_request(head + b"{}", str(len(head) - 1), "ssd", OUTPUTS)


def _trailing_message() -> tuple[bytes, str]:
    head = orjson.dumps({"inputs": [tensor(parameters={"binary_data_size": 3})]})
    message = (
        f"2 bytes after the binary data of the inputs (Inference-Header-Content-Length {len(head)} + the "
        f"inputs' binary_data_size 3 != body length {len(head) + 5})"
    )
    return head, message


def test_bytes_after_the_binary_data_are_refused():
    head, message = _trailing_message()
    with pytest.raises(InvalidInput) as info:
        binary_ext_kserve.parse_request(head + b"abcde", str(len(head)), "ssd", OUTPUTS)
    assert info.value.reason == message


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("12a", "Inference-Header-Content-Length: expected a byte count, got '12a'"),
        ("-3", "Inference-Header-Content-Length: expected a byte count, got '-3'"),
        ("", "Inference-Header-Content-Length: expected a byte count, got ''"),
        ("\uff11", "Inference-Header-Content-Length: expected a byte count, got '\uff11'"),  # fullwidth 1
        ("7" * 39 + "x", "Inference-Header-Content-Length: expected a byte count, got '" + "7" * 32 + "'"),
        ("999", "Inference-Header-Content-Length: 999 is more than the body's 2 bytes"),
    ],
)
def test_bad_header_lengths(header, message):
    with pytest.raises(InvalidInput) as info:
        binary_ext_kserve.parse_request(b"{}", header, "ssd", OUTPUTS)
    assert info.value.reason == message


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ([1], 'expected a JSON object {"inputs": [...]}, got a list'),
        ("x", 'expected a JSON object {"inputs": [...]}, got a string'),
        ({}, "inputs: expected a non-empty list of tensors, got null"),
        ({"inputs": []}, "inputs: expected a non-empty list of tensors, got a list"),
        ({"inputs": {"a": 1}}, "inputs: expected a non-empty list of tensors, got an object"),
        ({"inputs": [7]}, "inputs[0]: expected a tensor object, got a number"),
        ({"inputs": [tensor(data=["A"]), 2.5]}, "inputs[1]: expected a tensor object, got a number"),
        ({"inputs": [tensor(name=None, data=["A"])]}, "inputs[0].name: expected a string, got null"),
        (
            {"inputs": [tensor(datatype=True, data=["A"])]},
            "inputs[0].datatype: expected a string, got a boolean",
        ),
        (
            {"inputs": [tensor(shape="1", data=["A"])]},
            "inputs[0].shape: expected a list of integers, got a string",
        ),
        (
            {"inputs": [tensor(shape=[1, True], data=["A"])]},
            "inputs[0].shape[1]: expected an integer, got a boolean",
        ),
        (
            {"inputs": [tensor(shape=[1.0], data=["A"])]},
            "inputs[0].shape[0]: expected an integer, got a number",
        ),
        (
            {"inputs": [tensor(shape=[-1], data=["A"])]},
            "inputs[0].shape[0]: must be within 0..9223372036854775807, got -1",
        ),
        (
            {"inputs": [tensor(shape=[2**63], data=["A"])]},
            f"inputs[0].shape[0]: must be within 0..{2**63 - 1}, got {2**63}",
        ),
        (
            {"inputs": [tensor(data=["A"], parameters=[1])]},
            "inputs[0].parameters: expected an object, got a list",
        ),
        ({"inputs": [tensor()]}, "inputs[0]: no data (neither data nor parameters.binary_data_size)"),
        (
            {"inputs": [tensor(parameters={})]},
            "inputs[0]: no data (neither data nor parameters.binary_data_size)",
        ),
        (
            {"inputs": [tensor(data=["A"], parameters={"binary_data_size": 0})]},
            "inputs[0]: both data and parameters.binary_data_size are given",
        ),
        (
            {"inputs": [tensor(parameters={"binary_data_size": True})]},
            "inputs[0].parameters.binary_data_size: expected a byte count, got True",
        ),
        (
            {"inputs": [tensor(parameters={"binary_data_size": "3"})]},
            "inputs[0].parameters.binary_data_size: expected a byte count, got '3'",
        ),
        (
            {"inputs": [tensor(parameters={"binary_data_size": -1})]},
            "inputs[0].parameters.binary_data_size: expected a byte count, got -1",
        ),
        (
            {"inputs": [tensor(parameters={"binary_data_size": 1.0})]},
            "inputs[0].parameters.binary_data_size: expected a byte count, got 1.0",
        ),
        (
            {"inputs": [tensor(parameters={"binary_data_size": "x" * 300})]},
            ("inputs[0].parameters.binary_data_size: expected a byte count, got '" + "x" * 300)[:200],
        ),
        (
            {"inputs": [tensor(parameters={"binary_data_size": 1})]},
            "inputs[0].parameters.binary_data_size: 1 bytes, but the body has 0 bytes of binary data left",
        ),
        ({"inputs": [tensor(data=["A"])], "id": 5}, "id: expected a string, got a number"),
        ({"inputs": [tensor(data=["A"])], "parameters": "x"}, "parameters: expected an object, got a string"),
        (
            {"inputs": [tensor(data=["A"])], "parameters": {"binary_data_output": 1}},
            "parameters.binary_data_output: expected true or false, got a number",
        ),
        (
            {"inputs": [tensor(data=["A"])], "outputs": {"name": "x"}},
            "outputs: expected a list, got an object",
        ),
        (
            {"inputs": [tensor(data=["A"])], "outputs": ["num_detections"]},
            "outputs[0]: expected an object, got a string",
        ),
        (
            {"inputs": [tensor(data=["A"])], "outputs": [{"name": 3}]},
            "outputs[0].name: expected a string, got a number",
        ),
        (
            {"inputs": [tensor(data=["A"])], "outputs": [{"name": "num_detections"}, {"name": "boxes"}]},
            "outputs[1].name: unknown output 'boxes' (known: num_detections, detection_boxes)",
        ),
        (
            {"inputs": [tensor(data=["A"])], "outputs": [{"name": "x" * 100}]},
            f"outputs[0].name: unknown output {'x' * 64!r} (known: num_detections, detection_boxes)",
        ),
        (
            {"inputs": [tensor(data=["A"])], "outputs": [{"name": "num_detections", "parameters": []}]},
            "outputs[0].parameters: expected an object, got a list",
        ),
        (
            {
                "inputs": [tensor(data=["A"])],
                "outputs": [{"name": "num_detections", "parameters": {"binary_data": "yes"}}],
            },
            "outputs[0].parameters.binary_data: expected true or false, got a string",
        ),
    ],
)
def test_malformed_requests_name_the_field(head, message):
    assert refused(head) == message


def test_a_second_binary_input_counts_from_the_end_of_the_first():
    head = {
        "inputs": [tensor(parameters={"binary_data_size": 2}), tensor(parameters={"binary_data_size": 2})]
    }
    assert refused(head, b"abc") == (
        "inputs[1].parameters.binary_data_size: 2 bytes, but the body has 1 bytes of binary data left"
    )


def test_kind_names_json_types():
    kinds = [json_body.json_type(v) for v in ({}, [], "", True, None, 1, 1.5, b"")]
    assert kinds == ["an object", "a list", "a string", "a boolean", "null", "a number", "a number", "bytes"]


# ----------------------------------------------------------------------------- responses
def response(response_id: str = "r-1") -> InferResponse:
    outputs = [
        InferOutput("num_detections", [2], "INT32", data=np.array([1, 0], np.int32)),
        InferOutput("detection_scores", [2, 1], "FP32", data=np.array([[0.5], [0.0]], np.float32)),
        InferOutput("detection_labels", [2, 1], "BYTES", data=np.array([["cat"], [""]], object)),
    ]
    return InferResponse(response_id, "ssd", outputs)


def request(parameters=None, outputs=None) -> InferRequest:
    return InferRequest("ssd", [], parameters=parameters, request_outputs=outputs)


def test_plain_json_response():
    body, length = binary_ext_kserve.encode_response(response(), request())
    assert length is None
    assert orjson.loads(body) == {
        "model_name": "ssd",
        "outputs": [
            {"name": "num_detections", "datatype": "INT32", "shape": [2], "data": [1, 0]},
            {"name": "detection_scores", "datatype": "FP32", "shape": [2, 1], "data": [0.5, 0.0]},
            {"name": "detection_labels", "datatype": "BYTES", "shape": [2, 1], "data": ["cat", ""]},
        ],
        "id": "r-1",
    }
    assert b'"id"' not in binary_ext_kserve.encode_response(response(""), request())[0]
    versioned = response()
    versioned.model_version = "7"  # what the versioned data plane sets
    body, _ = binary_ext_kserve.encode_response(versioned, request())
    assert orjson.loads(body)["model_version"] == "7"


def test_binary_data_output_makes_every_output_binary():
    body, length = binary_ext_kserve.encode_response(response(), request({"binary_data_output": True}))
    head = orjson.loads(body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [8, 8, 11]
    assert all("data" not in o for o in head["outputs"])
    assert [o["shape"] for o in head["outputs"]] == [[2], [2, 1], [2, 1]]
    assert body[length:] == (
        struct.pack("<2i", 1, 0)
        + struct.pack("<2f", 0.5, 0.0)
        + struct.pack("<I", 3)
        + b"cat"
        + struct.pack("<I", 0)
    )


def test_requested_outputs_choose_binary_one_by_one():
    wanted = [
        RequestedOutput("detection_scores", {"binary_data": True}),
        RequestedOutput("num_detections"),
        RequestedOutput("detection_labels", {"binary_data": False}),
    ]
    body, length = binary_ext_kserve.encode_response(response(), request(outputs=wanted))
    head = orjson.loads(body[:length])
    assert [o["name"] for o in head["outputs"]] == ["detection_scores", "num_detections", "detection_labels"]
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert head["outputs"][1]["data"] == [1, 0] and head["outputs"][2]["data"] == ["cat", ""]
    assert body[length:] == struct.pack("<2f", 0.5, 0.0)
    # the request-wide default applies to outputs that do not say
    body, length = binary_ext_kserve.encode_response(
        response(), request({"binary_data_output": True}, wanted)
    )
    assert body[length:] == struct.pack("<2f", 0.5, 0.0) + struct.pack("<2i", 1, 0)
    assert orjson.loads(body[:length])["outputs"][2]["data"] == ["cat", ""]


def test_outputs_holding_raw_data_are_read_back():
    out = InferOutput("detection_scores", [2], "FP32")
    out.set_data_from_numpy(np.array([0.25, 1.0], np.float32), binary_data=True)
    assert out.data is None
    body, length = binary_ext_kserve.encode_response(InferResponse("", "ssd", [out]), request())
    assert length is None
    assert orjson.loads(body)["outputs"][0]["data"] == [0.25, 1.0]


@pytest.mark.parametrize(
    ("array", "datatype", "expected"),
    [
        (np.array([1.5, -2.0]), "FP32", struct.pack("<2f", 1.5, -2.0)),
        (np.array([1.5, -2.0], np.float32), "FP64", struct.pack("<2d", 1.5, -2.0)),
        (np.array([[1, -2]], np.int64), "INT32", struct.pack("<2i", 1, -2)),
        (np.array([1, 2**40]), "INT64", struct.pack("<2q", 1, 2**40)),
        (np.array([0, 255]), "UINT8", b"\x00\xff"),
        (np.array([True, False]), "BOOL", b"\x01\x00"),
        (
            np.array([b"ab", "\u00e9", 7], object),
            "BYTES",
            b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9\x01\x00\x00\x007",
        ),
        (np.array([[b""]], object), "BYTES", b"\x00\x00\x00\x00"),
    ],
)
def test_serialize_tensor_exact_bytes(array, datatype, expected):
    assert tensors.serialize_tensor(array, datatype) == expected


def test_serialize_tensor_is_row_major():
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T  # a Fortran-ordered view
    assert tensors.serialize_tensor(array, "INT32") == struct.pack("<6i", 0, 3, 1, 4, 2, 5)


def test_header_constant_is_the_lower_case_http_header():
    assert binary_ext.HEADER_LENGTH == "inference-header-content-length"
    assert re.fullmatch(r"[a-z-]+", binary_ext.HEADER_LENGTH)


def test_outputs_holding_python_lists_are_written_as_given():
    out = InferOutput("detection_scores", [2], "FP32", data=[0.1, 0.25])
    body, _ = binary_ext_kserve.encode_response(InferResponse("", "ssd", [out]), request())
    assert orjson.loads(body)["outputs"][0]["data"] == [0.1, 0.25]  # not re-rounded through float32
