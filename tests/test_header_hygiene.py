"""Header hygiene: hostile ``x-request-id`` / ``traceparent`` / ``tracestate`` / ``baggage`` values are cut
or replaced before any code, KServe's included, reads them (:mod:`predictor.serving.headers`).

The unit tests pin :func:`~predictor.serving.headers.clean_pairs` on exact header lists; the end-to-end
tests send the hostile values to the real server (``ssd_server``) on every route and protocol and read
both the answers and the server's log: KServe's own ``kserve.trace`` line (``requestId: ...``) must carry
the cut id, and no log line may carry more of the header than that.
"""

from __future__ import annotations

import re

import grpc
import httpx
import numpy as np
import orjson
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from serving_fixtures import MODEL_NAME, b64, encode_image

from predictor.protocol.binary_ext import serialize_tensor
from predictor.serving import headers
from predictor.serving.headers import clean_pairs, valid_traceparent

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
GOOD_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: Longest log line any request here may cause (KServe's trace line with a 128-character id is ~200).
MAX_LINE = 1000
FRESH_ID = re.compile(r"[0-9a-f]{16}")


def fixed_id() -> str:
    return "fresh"


# ----------------------------------------------------------------------------- clean_pairs
def test_a_long_request_id_is_cut_and_other_headers_kept_in_order():
    pairs = [("host", "x"), ("x-request-id", "A" * 8000), ("accept", "*/*")]
    assert clean_pairs(pairs, fixed_id) == [("host", "x"), ("x-request-id", "A" * 128), ("accept", "*/*")]


@pytest.mark.parametrize("value", ["", "has space", "tab\there", "caf\xe9", "new\nline", "A" * 127 + " "])
def test_a_malformed_request_id_is_replaced(value):
    assert clean_pairs([("x-request-id", value)], fixed_id) == [("x-request-id", "fresh")]


def test_only_the_first_request_id_is_kept():
    pairs = [("x-request-id", "one"), ("x-request-id", "two")]
    assert clean_pairs(pairs, fixed_id) == [("x-request-id", "one")]


def test_clean_headers_are_left_alone():
    pairs = [
        ("x-request-id", "abc-123"),
        ("traceparent", GOOD_PARENT),
        ("tracestate", "k=v"),
        ("baggage", "a=1"),
    ]
    assert clean_pairs(pairs, fixed_id) is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (GOOD_PARENT, True),
        (GOOD_PARENT.upper(), False),  # W3C: lower-case hex only
        ("ff" + GOOD_PARENT[2:], False),  # version ff is invalid
        ("01" + GOOD_PARENT[2:], True),  # a later version: its first 55 characters are read
        ("00-" + "0" * 32 + GOOD_PARENT[35:], False),  # all-zero trace id
        (GOOD_PARENT[:36] + "0" * 16 + "-01", False),  # all-zero parent id
        (GOOD_PARENT + "-extra", False),
        (GOOD_PARENT[:-1], False),
        ("B" * 6000, False),
    ],
)
def test_traceparent_validity(value, valid):
    assert valid_traceparent(value) is valid
    cleaned = clean_pairs([("traceparent", value), ("tracestate", "k=v")], fixed_id)
    assert cleaned == (None if valid else [])  # an invalid parent takes its tracestate with it


def test_trace_headers_past_their_w3c_limits_are_dropped():
    pairs = [
        ("traceparent", GOOD_PARENT),
        ("tracestate", "k=" + "v" * headers.TRACESTATE_MAX),
        ("baggage", "b=" + "x" * headers.BAGGAGE_MAX),
    ]
    assert clean_pairs(pairs, fixed_id) == [("traceparent", GOOD_PARENT)]
    at_limit = [("traceparent", GOOD_PARENT), ("tracestate", "k" * headers.TRACESTATE_MAX)]
    assert clean_pairs(at_limit, fixed_id) is None


def test_a_later_traceparent_version_is_cut_to_what_version_00_defines():
    later = "cc" + GOOD_PARENT[2:]
    assert clean_pairs([("traceparent", later + "-" + "x" * 5000)], fixed_id) == [("traceparent", later)]
    assert clean_pairs([("traceparent", later + "x")], fixed_id) == []  # no "-" after the 55th
    assert clean_pairs([("traceparent", GOOD_PARENT + "-x")], fixed_id) == []  # version 00 is exact


def test_two_traceparents_are_both_dropped():
    """W3C: a request with several traceparent headers has none that can be trusted."""
    pairs = [("traceparent", GOOD_PARENT), ("traceparent", GOOD_PARENT), ("x-request-id", "r")]
    assert clean_pairs(pairs, fixed_id) == [("x-request-id", "r")]


def test_grpc_metadata_keeps_binary_entries():
    metadata = (("x-request-id", "A" * 300), ("trace-bin", b"\x00\x01"), ("user-agent", "grpc-python"))
    cleaned = headers.clean_metadata(metadata, fixed_id)
    assert [tuple(m) for m in cleaned] == [
        ("x-request-id", "A" * 128),
        ("user-agent", "grpc-python"),
        ("trace-bin", b"\x00\x01"),
    ]
    assert cleaned[0].key == "x-request-id" and cleaned[0].value == "A" * 128
    assert headers.clean_metadata((("user-agent", "x"),), fixed_id) is None


# ----------------------------------------------------------------------------- the real server
HOSTILE = {
    "x-request-id": "A" * 8000,
    "traceparent": "B" * 6000,
    "tracestate": "C" * 6000,
    "baggage": "D" * 9000,
}


@pytest.fixture(scope="module")
def png(shapes_images) -> bytes:
    return encode_image(shapes_images[0])


def rest_routes(png: bytes) -> list[tuple[str, str, dict, int]]:
    """(method, path, request kwargs, expected status): inference (V1 raw, V2 binary extension, V1 JSON,
    V2 JSON), errors (V1, V2), health, readiness, metadata and metrics."""
    v2 = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(png)]}]}
    raw = serialize_tensor(np.array([png], dtype=object), "BYTES")
    binary_head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    binary = {
        "content": binary_head + raw,
        "headers": {"inference-header-content-length": str(len(binary_head))},
    }
    return [
        ("POST", V1, {"content": png}, 200),
        ("POST", V2, binary, 200),  # the binary tensor extension (tritonclient's default)
        ("POST", V2, {"json": {"inputs": "x"}}, 400),
        ("POST", V1, {"json": {"instances": [{"b64": b64(png)}]}}, 200),
        ("POST", V2, {"json": v2}, 200),
        ("POST", V1, {"json": {"instances": ["@@@"]}}, 400),
        ("GET", "/v2/health/live", {}, 200),
        ("GET", f"/v2/models/{MODEL_NAME}/ready", {}, 200),
        ("GET", f"/v2/models/{MODEL_NAME}", {}, 200),
        ("GET", "/metrics", {}, 200),
    ]


def new_log(server, start: int) -> str:
    return server.log()[start:]


def assert_log_bounded(log: str) -> None:
    longest = max((len(line) for line in log.splitlines()), default=0)
    assert longest <= MAX_LINE, f"a log line of {longest} characters"
    for letter in "ABCD":
        assert letter * 129 not in log, f"more than 128 characters of a hostile header ({letter}) logged"


def test_rest_hostile_headers_on_every_route(ssd_server, png):
    start = len(ssd_server.log())
    with httpx.Client(base_url=ssd_server.url, timeout=120) as client:
        for method, path, kwargs, status in rest_routes(png):
            extra = kwargs.pop("headers", {})
            r = client.request(method, path, headers={**HOSTILE, **extra}, **kwargs)
            assert r.status_code == status, (path, r.text[:300])
            assert r.headers["x-request-id"] == "A" * 128, path
            if path == "/metrics":  # no client-controlled text becomes a metric label
                assert not any(letter * 16 in r.text for letter in "ABCD")
    log = new_log(ssd_server, start)
    assert_log_bounded(log)
    # KServe's own logger read the cut id (once per inference request that reached the model).
    assert log.count("requestId: " + "A" * 128 + ",") == 4, log[-3000:]
    assert log.count('"request_id":"' + "A" * 128 + '"') == 2  # our error lines for the two 400s


@pytest.mark.parametrize("value", [b"has space", b"caf\xe9", b"\xff" * 200])
def test_rest_malformed_request_id_is_replaced(ssd_server, png, value):
    start = len(ssd_server.log())
    with httpx.Client(base_url=ssd_server.url, timeout=120) as client:
        ok = client.post(V1, content=png, headers={"x-request-id": value})
        bad = client.post(V1, json={"instances": "x"}, headers={"x-request-id": value})
    assert ok.status_code == 200 and bad.status_code == 400
    for r in (ok, bad):
        assert FRESH_ID.fullmatch(r.headers["x-request-id"]), r.headers["x-request-id"]
    log = new_log(ssd_server, start)
    assert f"requestId: {ok.headers['x-request-id']}," in log
    assert f'"request_id":"{bad.headers["x-request-id"]}"' in log
    assert value.decode("latin-1") not in log


def infer_request(images: list[bytes]) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images",
        datatype="BYTES",
        shape=[len(images)],
        contents=pb.InferTensorContents(bytes_contents=images),
    )
    return pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])


def test_grpc_hostile_metadata_on_every_method(ssd_server, stub, png):
    """gRPC's default metadata limit is 8 KiB per call, so the values here are smaller than over REST."""
    metadata = (
        ("x-request-id", "A" * 3000),
        ("traceparent", "B" * 1500),
        ("tracestate", "C" * 1500),
        ("baggage", "D" * 1000),
    )
    start = len(ssd_server.log())
    assert stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata).live
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME), metadata=metadata).ready
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME), metadata=metadata).name == MODEL_NAME
    response = stub.ModelInfer(infer_request([png]), metadata=metadata)
    assert response.model_name == MODEL_NAME and len(response.outputs) > 0
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(infer_request([b"garbage"]), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    log = new_log(ssd_server, start)
    assert_log_bounded(log)
    assert "requestId: " + "A" * 128 + "," in log, log[-3000:]
    assert '"request_id":"' + "A" * 128 + '"' in log


def test_grpc_malformed_request_id_is_replaced(ssd_server, stub):
    start = len(ssd_server.log())
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(infer_request([b"garbage"]), metadata=(("x-request-id", "has space"),))
    lines = [ln for ln in new_log(ssd_server, start).splitlines() if '"event":"request_error"' in ln]
    assert len(lines) == 1, lines
    found = re.search(r'"request_id":"([^"]*)"', lines[0])
    assert found and FRESH_ID.fullmatch(found[1]), lines[0]
