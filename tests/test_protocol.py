"""The wire formats shared by the server and the client (predictor/protocol).

What the server writes, the client reads back to the same detections on every protocol; the gRPC
messages declared in predictor/protocol/grpc_v2.py are byte-compatible with KServe's generated ones;
and predictor.protocol and predictor.client import (and the client detects) in a process where KServe,
TensorFlow and the serving runtime cannot be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as kserve_pb
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image
from serving_fixtures import REPO_ROOT, server_env

from predictor.client.cli import main
from predictor.protocol import base64text, binary_ext, grpc_v2, json_body, tensors
from predictor.protocol.detections import detections_from_v1, detections_from_v2
from predictor.protocol.errors import MalformedMessage
from predictor.protocol.wire import V2_OUTPUTS
from predictor.serving import binary_ext_kserve, codecs

CLASS_NAMES = ("background", "circle", "square", "triangle")
#: Packages a client process must not need: the serving runtime and what it stands on.
BLOCKED = ("kserve", "tensorflow", "keras", "predictor.serving", "predictor.ssd")


def server_detections():
    """What the model hands the codecs: 3 images with 2, 0 and 1 detections, padded to D = 3.

    (Built as a namespace with the fields ``codecs.encode_v1``/``v2_arrays`` read, so this test does
    not depend on the name of the serving layer's detections type.)"""
    boxes = np.zeros((3, 3, 4), np.float32)
    boxes[0, :2] = [[1.234, 2.345, 30.0049, 40.0], [5.0, 6.0, 7.5, 8.255]]
    boxes[2, 0] = [0.5, 0.25, 299.994, 120.125]
    scores = np.array([[0.98771, 0.123456, 0], [0, 0, 0], [0.55555, 0, 0]], np.float32)
    classes = np.array([[2, 3, 0], [0, 0, 0], [1, 0, 0]], np.int32)
    return SimpleNamespace(boxes=boxes, scores=scores, classes=classes, num_detections=np.array([2, 0, 1]))


# ------------------------------------------------------------------------- server writes, client reads
def test_every_protocol_reads_back_to_the_v1_records():
    """V1 JSON, V2 REST JSON, V2 REST binary and gRPC raw contents, as the server encodes them, read by
    the client's helpers: the same dicts, equal to the V1 endpoint's own answer."""
    dets = server_detections()
    v1_body = orjson.loads(codecs.encode_v1(dets, CLASS_NAMES))
    from_v1 = detections_from_v1(v1_body, 3)
    assert [len(d) for d in from_v1] == [2, 0, 1]
    assert from_v1[0][0] == {
        "label": "square", "class_id": 2, "score": 0.9877, "xmin": 1.23, "ymin": 2.35, "xmax": 30.0,
        "ymax": 40.0,
    }  # fmt: skip
    assert from_v1 == v1_body["predictions"]  # reading a V1 answer changes nothing

    request = InferRequest("m", [InferInput("images", [3], "BYTES", data=["a", "b", "c"])], request_id="r")
    rest = codecs.encode_v2(dets, CLASS_NAMES, "m", request)
    json_body, json_length = binary_ext_kserve.encode_response(rest, request)  # what the /infer route sends
    assert json_length is None
    from_json = detections_from_v2(tensors.arrays_from_json_outputs(orjson.loads(json_body)), 3)

    arrays, _ = codecs.v2_arrays(dets, CLASS_NAMES)
    binary_outputs = [binary_ext.OutputTensor(n, dt, arrays[n], True) for n, dt in V2_OUTPUTS]
    body, header_length = binary_ext.encode_body("m", "r", binary_outputs)
    head = orjson.loads(body[:header_length])
    offset, from_raw = header_length, {}
    for out in head["outputs"]:
        size = out["parameters"]["binary_data_size"]
        from_raw[out["name"]] = tensors.deserialize_tensor(
            body[offset : offset + size], out["datatype"], out["shape"]
        )
        offset += size
    assert offset == len(body)
    from_binary = detections_from_v2(from_raw, 3)

    grpc_request = InferRequest("m", [InferInput("images", [3], "BYTES", data=[b"a"] * 3)], from_grpc=True)
    message = codecs.encode_v2(dets, CLASS_NAMES, "m", grpc_request).to_grpc()
    response = grpc_v2.ModelInferResponse.FromString(message.SerializeToString())
    from_grpc = detections_from_v2(
        tensors.arrays_from_grpc_outputs(response.outputs, response.raw_output_contents), 3
    )
    assert from_json == from_binary == from_grpc == from_v1


def test_malformed_answers_name_the_field():
    with pytest.raises(MalformedMessage, match=r"predictions: expected a list of 2 lists"):
        detections_from_v1({"predictions": [[]]}, 2)
    with pytest.raises(MalformedMessage, match=r"predictions\[0\]: not detections"):
        detections_from_v1({"predictions": [[{"score": 0.5}]]}, 1)
    with pytest.raises(MalformedMessage, match="outputs: missing detection_boxes, detection_scores"):
        detections_from_v2({"num_detections": np.array([0]), "detection_classes": np.zeros((1, 0))}, 1)
    short_labels = {  # 2 detections, but detection_labels has one column: no label is made up
        "num_detections": np.array([2]),
        "detection_boxes": np.zeros((1, 2, 4), np.float32),
        "detection_scores": np.array([[0.9, 0.8]], np.float32),
        "detection_classes": np.array([[1, 2]], np.int32),
        "detection_labels": np.array([[b"circle"]], object),
    }
    with pytest.raises(MalformedMessage, match=r"image 0: outputs do not hold 2 detections"):
        detections_from_v2(short_labels, 1)
    with pytest.raises(MalformedMessage, match=r"outputs\[0\]: no JSON data"):
        tensors.arrays_from_json_outputs({"outputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]})
    with pytest.raises(MalformedMessage, match=r"outputs\[0\]: 3 values do not fill shape \[2\]"):
        tensors.arrays_from_json_outputs(
            {"outputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2, 3]}]}
        )


def test_excerpt_and_load_json_exact():
    """Error-message words: strings as they are, other values as their repr, cut at the limit."""
    assert json_body.excerpt("abc") == "abc"  # a string is not quoted
    assert json_body.excerpt([1, 2]) == "[1, 2]"
    assert json_body.excerpt("x" * 200) == "x" * 200  # the default limit is 200, inclusive
    assert json_body.excerpt("x" * 201) == "x" * 200 + "..."
    assert json_body.excerpt(b"abcd", 4) == "b'ab..."
    with pytest.raises(MalformedMessage, match=r"^invalid JSON body: "):
        json_body.load_json(b"{")


def test_base64_text_exact():
    """The tolerant base64 path: each URL-safe character alone, missing padding, junk refused, and the
    length cap's formula (4 characters per 3 bytes, a line break per 57 bytes at most, 256 spare)."""
    assert base64text.encode_base64(b"\xfb\xef") == "++8="
    assert base64text.decode_base64("--8=", 10) == b"\xfb\xef"  # '-' without '_'
    assert base64text.decode_base64("__8", 10) == b"\xff\xff"  # '_' without '-', one '=' missing
    assert base64text.decode_base64("QUI", 10) == b"AB"
    with pytest.raises(MalformedMessage, match=r"^invalid base64: "):
        base64text.decode_base64("QUJD!!!!", 10)  # not dropped: junk is an error, not skipped
    with pytest.raises(MalformedMessage, match=r"^empty image \(no base64 data\)$"):
        base64text.decode_base64(" \n", 10)
    assert [base64text.max_base64_chars(n) for n in (0, 3, 1000)] == [256, 260, 4 * 334 + 26 + 256]


def _v2_answer(**arrays):
    base = {
        "num_detections": np.array([1]),
        "detection_boxes": np.array([[[1.0, 2.0, 3.0, 4.0]]], np.float32),
        "detection_scores": np.array([[0.5]], np.float32),
        "detection_classes": np.array([[3]], np.int32),
    }
    return {**base, **arrays}


def test_detections_read_back_exact():
    """What the client makes of answers that leave fields out or hold odd values."""
    no_label = {"score": 0.5, "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}
    (record,) = detections_from_v1({"predictions": [[no_label]]}, 1)[0]
    assert record["label"] == "" and record["class_id"] == 0
    (record,) = detections_from_v2(_v2_answer(), 1)[0]  # no detection_labels: empty labels
    assert record["label"] == "" and record["class_id"] == 3 and type(record["class_id"]) is int
    labels = np.array([[b"\xffdog"]], object)  # not UTF-8: replaced, not an error
    assert detections_from_v2(_v2_answer(detection_labels=labels), 1)[0][0]["label"] == "\ufffddog"
    # num_detections [N, 1] (as some servers shape it) is read as [N]
    assert len(detections_from_v2(_v2_answer(num_detections=np.array([[1]])), 1)[0]) == 1
    # detection_scores, detection_classes and detection_labels [N, K, 1] (likewise) are read as [N, K]
    column = _v2_answer(
        num_detections=np.array([2, 1]),
        detection_boxes=np.array([[[1, 2, 3, 4], [5, 6, 7, 8]], [[9, 8, 7, 6], [0, 0, 0, 0]]], np.float32),
        detection_scores=np.array([[0.9, 0.25], [0.75, 0.0]], np.float32),
        detection_classes=np.array([[3, 1], [2, 0]], np.int32),
        detection_labels=np.array([[b"c", b"a"], [b"b", b""]], object),
    )
    expected = detections_from_v2(column, 2)
    assert [[(d["label"], d["class_id"], d["score"], d["xmax"]) for d in image] for image in expected] == [
        [("c", 3, 0.9, 3.0), ("a", 1, 0.25, 7.0)],
        [("b", 2, 0.75, 7.0)],
    ]
    for names in (["detection_scores"], ["detection_classes", "detection_labels"], list(column)[2:]):
        unit = {k: v[..., None] if k in names else v for k, v in column.items()}
        assert detections_from_v2(unit, 2) == expected, names
    # any other extra axis holds more than one value a detection: refused, naming the image
    wide = {**column, "detection_scores": np.repeat(column["detection_scores"][..., None], 2, axis=2)}
    with pytest.raises(MalformedMessage, match=r"^image 0: outputs do not hold 2 detections"):
        detections_from_v2(wide, 2)
    with pytest.raises(MalformedMessage, match=r"^predictions: expected a list of 2 lists, got \{'x': 1\}$"):
        detections_from_v1({"x": 1}, 2)
    with pytest.raises(MalformedMessage, match=r"^predictions: expected a list of 1 lists, got \[\]$"):
        detections_from_v1([], 1)
    with pytest.raises(
        MalformedMessage, match=r"^predictions\[0\]: not detections \(KeyError\('score'\)\): \[\{\}\]$"
    ):
        detections_from_v1({"predictions": [[{}]]}, 1)
    with pytest.raises(MalformedMessage, match=r"^num_detections: 2 values for 1 images$"):
        detections_from_v2(_v2_answer(num_detections=np.array([1, 1])), 1)
    with pytest.raises(MalformedMessage) as long_error:  # numpy quotes the whole value: cut to 300
        detections_from_v2(_v2_answer(detection_scores=np.array([["x" * 400]], object)), 1)
    assert len(str(long_error.value)) == 300


# ----------------------------------------------------------------------------------------- tensors
def test_tensor_helpers_exact():
    """Exact values and messages of the JSON, raw and gRPC tensor readers and writers."""
    long = "D" * 40  # datatype names are quoted to 32 characters

    def fails(message, fn, *args):
        with pytest.raises(MalformedMessage, match="^" + message + "$"):
            fn(*args)

    assert tensors.json_tensor("x", "BYTES", ["a", "b"]) == {
        "name": "x", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]
    }  # fmt: skip
    assert tensors.json_tensor("n", "INT32", np.array([[1, 2]])) == {
        "name": "n", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]
    }  # fmt: skip
    assert type(tensors.json_tensor("b", "BYTES", [1])["data"][0]) is int  # objects kept as given
    assert tensors.serialize_tensor([1, "é"], "BYTES") == b"\x01\x00\x00\x001\x02\x00\x00\x00\xc3\xa9"
    assert tensors.split_bytes_elements(b"\x00\x00\x00\x00") == [b""]
    fails(
        r"input: malformed raw BYTES contents \(truncated length prefix\)",
        tensors.split_bytes_elements,
        b"\x00",
    )
    fails(
        r"output: malformed raw BYTES contents \(truncated length prefix\)",
        tensors.deserialize_tensor,
        b"\x00",
        "BYTES",
        [1],
    )
    fails(r"output: 1 bytes are not whole FP32 values", tensors.deserialize_tensor, b"\x00", "FP32", [1])
    fails(r"output: 1 values do not fill shape \[2\]", tensors.deserialize_tensor, b"\x00", "UINT8", [2])
    fails(r"output: unsupported datatype " + "D" * 32 + r"\.\.\.", tensors.deserialize_tensor, b"", long, [0])
    fails(
        r"o\.shape: expected a list of integers, got a string",
        tensors.array_from_json_tensor,
        {"shape": "2", "data": [1]},
        "o",
    )
    fails(
        r"o\.shape: expected a list of integers, got a list",
        tensors.array_from_json_tensor,
        {"shape": [True], "data": [1]},
        "o",
    )
    fails(
        r"o\.datatype: unsupported datatype " + "D" * 32 + r"\.\.\.",
        tensors.array_from_json_tensor,
        {"datatype": long, "shape": [1], "data": [1]},
        "o",
    )
    fails(
        r"o\.data: not INT32 values \(.*\)",
        tensors.array_from_json_tensor,
        {"datatype": "INT32", "shape": [1], "data": ["x"]},
        "o",
    )
    fails(
        r"o: 1 values do not fill shape \[2\]",
        tensors.array_from_json_tensor,
        {"datatype": "INT32", "shape": [2], "data": [1]},
        "o",
    )
    ints = tensors.array_from_json_tensor({"datatype": "INT64", "shape": [1], "data": [2**40]}, "o")
    assert ints.dtype == np.int64 and ints.tolist() == [2**40]
    words = tensors.array_from_json_tensor({"datatype": "BYTES", "shape": [1], "data": ["ab"]}, "o")
    assert words.dtype == object and words.tolist() == ["ab"]
    fails(r"outputs: expected a list of tensors, got null", tensors.arrays_from_json_outputs, {})
    fails(r"outputs: expected a list of tensors, got null", tensors.arrays_from_json_outputs, [])
    fails(
        r"outputs\[0\]: expected a tensor with a name, got \{'name': 1\}",
        tensors.arrays_from_json_outputs,
        {"outputs": [{"name": 1}]},
    )
    fails(
        r"outputs\[0\]: expected a tensor with a name, got 5",
        tensors.arrays_from_json_outputs,
        {"outputs": [5]},
    )
    out = SimpleNamespace(name="x", datatype=long, shape=[1], contents=None)
    fails(
        r"outputs\[0\]: unsupported datatype " + "D" * 32 + r"\.\.\.",
        tensors.arrays_from_grpc_outputs,
        [out],
        [],
    )
    fails(
        r"outputs\[0\]: malformed raw BYTES contents \(truncated length prefix\)",
        tensors.arrays_from_grpc_outputs,
        [SimpleNamespace(name="x", datatype="BYTES", shape=[1])],
        [b"\x00"],
    )
    out = SimpleNamespace(name="x", datatype="INT32", shape=[2], contents=SimpleNamespace(int_contents=[1]))
    fails(r"outputs\[0\]: 1 values do not fill shape \[2\]", tensors.arrays_from_grpc_outputs, [out], [])
    fails(r"raw_output_contents: 2 for 1 outputs", tensors.arrays_from_grpc_outputs, [out], [b"", b""])
    assert tensors.json_tensor("b", "BYTES", ["a", 1])["data"] == ["a", 1]  # not made one numpy type
    assert type(tensors.json_tensor("s", "FP32", np.array([0.5], np.float32))["data"][0]) is float
    assert tensors.serialize_tensor([b"a\x00"], "BYTES") == b"\x02\x00\x00\x00a\x00"  # NUL kept
    fails(
        r"outputs: expected a list of tensors, got a number", tensors.arrays_from_json_outputs, {"outputs": 5}
    )
    with pytest.raises(MalformedMessage) as long_error:  # numpy quotes the whole value: cut to 300
        tensors.array_from_json_tensor({"datatype": "FP32", "shape": [1], "data": ["x" * 400]}, "o")
    assert len(str(long_error.value)) == 300
    raw = tensors.arrays_from_grpc_outputs(
        [SimpleNamespace(name="b", datatype="BYTES", shape=[1])], [b"\x01\x00\x00\x00z"]
    )
    assert raw["b"].dtype == object and raw["b"].tolist() == [b"z"]


@pytest.mark.parametrize("datatype", sorted(tensors.NUMPY_DTYPES))
def test_numeric_tensors_round_trip(datatype):
    rng = np.random.default_rng(7)
    array = (rng.random((2, 3)) * 100).astype(tensors.NUMPY_DTYPES[datatype])
    raw = tensors.serialize_tensor(array, datatype)
    assert raw == array.astype(np.dtype(tensors.NUMPY_DTYPES[datatype]).newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(tensors.deserialize_tensor(raw, datatype, [2, 3]), array)
    as_json = json.loads(json.dumps(tensors.json_tensor("t", datatype, array)))
    assert as_json["shape"] == [2, 3] and len(as_json["data"]) == 6
    np.testing.assert_array_equal(tensors.array_from_json_tensor(as_json, "outputs[0]"), array)


def test_bytes_elements():
    items = [b"ab", b"", b"xyz", bytes(range(256))]
    raw = tensors.pack_bytes_elements(items)
    assert raw[:6] == b"\x02\x00\x00\x00ab"  # uint32 little-endian length, then the bytes
    assert tensors.split_bytes_elements(raw) == items
    assert tensors.serialize_tensor(np.array(items, dtype=object), "BYTES") == raw
    assert tensors.deserialize_tensor(raw, "BYTES", [2, 2]).tolist() == [items[:2], items[2:]]
    with pytest.raises(MalformedMessage, match=r"images: malformed raw BYTES contents \(truncated length"):
        tensors.split_bytes_elements(raw[:2], "images")
    with pytest.raises(MalformedMessage, match=r"malformed raw BYTES contents \(element longer"):
        tensors.split_bytes_elements(raw[:-1])


# -------------------------------------------------------------------------------------------- gRPC
def test_grpc_messages_are_kserves_on_the_wire():
    """The client's request parses as KServe's ModelInferRequest field for field, and KServe's
    response (typed contents and raw contents) parses as the client's."""
    request = grpc_v2.ModelInferRequest(
        model_name="ssd",
        id="r1",
        inputs=[
            grpc_v2.ModelInferRequest.InferInputTensor(
                name="images",
                datatype="BYTES",
                shape=[2],
                contents=grpc_v2.InferTensorContents(bytes_contents=[b"\xff\xd8a", b"b"]),
            )
        ],
        raw_input_contents=[b"raw"],
    )
    request.parameters["score_threshold"].string_param = "0.25"
    request.parameters["max_detections"].int64_param = 7
    request.parameters["flag"].bool_param = True
    request.outputs.add(name="detection_boxes").parameters["binary_data"].bool_param = False
    theirs = kserve_pb.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "ssd" and theirs.id == "r1"
    assert list(theirs.inputs[0].contents.bytes_contents) == [b"\xff\xd8a", b"b"]
    assert list(theirs.inputs[0].shape) == [2] and theirs.inputs[0].datatype == "BYTES"
    assert theirs.parameters["score_threshold"].string_param == "0.25"
    assert theirs.parameters["max_detections"].int64_param == 7
    assert theirs.parameters["flag"].bool_param is True
    assert theirs.outputs[0].name == "detection_boxes"
    assert list(theirs.raw_input_contents) == [b"raw"]
    assert theirs.SerializeToString(deterministic=True) == request.SerializeToString(deterministic=True)

    typed = kserve_pb.ModelInferResponse(model_name="ssd", id="r1")
    for name, datatype, field, values in (
        ("f", "FP32", "fp32_contents", [0.5, 1.5]),
        ("d", "FP64", "fp64_contents", [2.25, -1.0]),
        ("i", "INT32", "int_contents", [-3, 4]),
        ("l", "INT64", "int64_contents", [2**40, -1]),
        ("u", "UINT32", "uint_contents", [7, 8]),
        ("b", "BYTES", "bytes_contents", [b"x", b""]),
    ):
        out = typed.outputs.add(name=name, datatype=datatype, shape=[1, 2])
        getattr(out.contents, field).extend(values)
    ours = grpc_v2.ModelInferResponse.FromString(typed.SerializeToString())
    arrays = tensors.arrays_from_grpc_outputs(ours.outputs, ours.raw_output_contents)
    assert arrays["f"].tolist() == [[0.5, 1.5]] and arrays["d"].tolist() == [[2.25, -1.0]]
    assert arrays["i"].tolist() == [[-3, 4]] and arrays["l"].tolist() == [[2**40, -1]]
    assert arrays["u"].tolist() == [[7, 8]] and arrays["b"].tolist() == [[b"x", b""]]
    assert arrays["l"].dtype == np.int64 and arrays["f"].dtype == np.float32

    raw = kserve_pb.ModelInferResponse(model_name="ssd")
    raw.outputs.add(name="n", datatype="INT32", shape=[3])
    raw.raw_output_contents.append(np.array([1, -2, 3], "<i4").tobytes())
    ours = grpc_v2.ModelInferResponse.FromString(raw.SerializeToString())
    assert tensors.arrays_from_grpc_outputs(ours.outputs, ours.raw_output_contents)["n"].tolist() == [
        1,
        -2,
        3,
    ]


# ------------------------------------------------------------------------------- binary extension
def test_binary_extension_body_framing():
    """Inputs take their binary_data_size bytes after the JSON header, in order; errors name the field."""
    raw = tensors.pack_bytes_elements([b"\x89PNG..", b"second"])
    head = orjson.dumps(
        {
            "id": "r9",
            "inputs": [
                {"name": "a", "datatype": "INT32", "shape": [2], "data": [1, 2]},
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(raw)},
                },
            ],
            "outputs": [{"name": "num_detections", "parameters": {"binary_data": True}}],
            "parameters": {"binary_data_output": False},
        }
    )
    parsed = binary_ext.parse_body(head + raw, str(len(head)), [n for n, _ in V2_OUTPUTS])
    assert parsed.id == "r9" and [t.name for t in parsed.inputs] == ["a", "images"]
    assert parsed.inputs[0].data == [1, 2] and parsed.inputs[0].raw is None
    assert tensors.split_bytes_elements(parsed.inputs[1].raw) == [b"\x89PNG..", b"second"]
    assert binary_ext.output_selection(parsed.parameters, parsed.outputs, ["x"]) == [("num_detections", True)]
    assert binary_ext.output_selection({"binary_data_output": True}, None, ["x", "y"]) == [
        ("x", True),
        ("y", True),
    ]
    left = r"inputs\[1\].parameters.binary_data_size: 20 bytes, but the body has 19 bytes"
    with pytest.raises(MalformedMessage, match=left):
        binary_ext.parse_body(head + raw[:-1], str(len(head)), [])
    with pytest.raises(MalformedMessage, match="1 bytes after the binary data of the inputs"):
        binary_ext.parse_body(head + raw + b"!", str(len(head)), [n for n, _ in V2_OUTPUTS])
    with pytest.raises(MalformedMessage, match=r"outputs\[0\].name: unknown output 'num_detections'"):
        binary_ext.parse_body(head + raw, str(len(head)), ["detection_boxes"])


# --------------------------------------------------------------------------- no serving dependencies
BLOCKER = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = {blocked!r}

    def blocked(name):
        return any(name == b or name.startswith(b + ".") for b in BLOCKED)

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ModuleNotFoundError(f"{{name}} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in which the :data:`BLOCKED` packages cannot be imported."""
    script = BLOCKER.format(blocked=BLOCKED) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=server_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_protocol_and_client_import_without_kserve_tensorflow_or_the_server():
    proc = run_blocked(
        """
        import predictor.client, predictor.protocol
        names = []
        for package in (predictor.protocol, predictor.client):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        assert not [m for m in sys.modules if blocked(m)], [m for m in sys.modules if blocked(m)]
        print(" ".join(names))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = set(proc.stdout.split())
    for module in ("binary_ext", "detections", "tensors", "grpc_v2", "base64text", "json_body"):
        assert f"predictor.protocol.{module}" in imported
    for module in ("cli", "transports", "files", "isvc", "detect", "draw"):
        assert f"predictor.client.{module}" in imported
    # The blocker works: the serving codecs need KServe.
    refused = run_blocked("import predictor.serving.codecs")
    assert refused.returncode != 0 and "blocked in this test" in refused.stderr


def test_client_detects_on_every_protocol_without_kserve(ssd_server, shapes_images, tmp_path):
    """``ssd-detect`` in a process without KServe or TensorFlow, against the real server: the same
    detections over V1, V2 REST and gRPC as the CLI run in this (KServe-importing) process."""
    image = tmp_path / "img.png"
    Image.fromarray(shapes_images[0]).save(image)
    expected = tmp_path / "expected.jsonl"
    argv = ["--url", ssd_server.url, "--model", ssd_server.model_name, "--score-threshold", "0.2"]
    assert main([*argv, "-o", str(expected), str(image)]) == 0
    urls = {"v1": ssd_server.url, "v2": ssd_server.url, "grpc": ssd_server.grpc_target}
    proc = run_blocked(
        f"""
        from predictor.client.cli import main
        for protocol, url in {urls!r}.items():
            out = {str(tmp_path)!r} + f"/{{protocol}}.jsonl"
            rc = main(["--protocol", protocol, "--url", url, "--model", {ssd_server.model_name!r},
                       "--score-threshold", "0.2", "-o", out, {str(image)!r}])
            assert rc == 0, protocol
        assert not [m for m in sys.modules if blocked(m)], [m for m in sys.modules if blocked(m)]
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads(expected.read_text())
    assert reference["detections"], "the threshold should leave detections to compare"
    for protocol in urls:
        assert json.loads((tmp_path / f"{protocol}.jsonl").read_text()) == reference, protocol


def test_argparse_types_are_shared():
    """One definition of the flag value types: the server's flags and the client's use the same ones."""
    from predictor import _argtypes
    from predictor.client import cli
    from predictor.serving import options

    assert options.fraction is _argtypes.fraction and options.positive_int is _argtypes.positive_int
    parser = cli.build_parser()
    types = {a.dest: a.type for a in parser._actions}
    assert types["score_threshold"] is _argtypes.fraction and types["batch_size"] is _argtypes.positive_int
    assert Path(cli.__file__).read_text().count("predictor.serving") == 0
