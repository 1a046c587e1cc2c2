"""OpenTelemetry tracing: one server span per request continuing the caller's W3C trace context, one
child span per stage; recorded with the SDK's in-memory exporter (in process) and exported by a real
server started with ``--tracing``."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time

import httpx
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from serving_fixtures import MODEL_NAME, b64, encode_image, start_server

from predictor.serving import tracing
from predictor.serving.model import SSDPredictor
from predictor.serving.options import ServingOptions

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"  # the W3C Trace Context spec's own example
GRPC_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
V2_TRACEPARENT = "00-5cf92f3577b34da6a3ce929d0e0e4799-10f067aa0ba902b8-01"
STAGES = ("ssd.decode", "ssd.queue_wait", "ssd.batch", "ssd.model", "ssd.postprocess", "ssd.encode")


@pytest.fixture
def exporter():
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.configure(provider)
    yield memory
    tracing.disable()


@pytest.fixture(scope="module")
def model(random_tiny_model_dir):
    options = ServingOptions(model_dir=str(random_tiny_model_dir), max_batch_size=4)
    m = SSDPredictor("ssd", options)
    assert m.load()
    yield m
    m.close()


@pytest.fixture(scope="module")
def png(shapes_images) -> str:
    return b64(encode_image(shapes_images[1], "PNG"))


def _by_name(spans) -> dict[str, object]:
    names = [s.name for s in spans]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in spans}


def _check_request_trace(spans, protocol: str) -> None:
    spans = _by_name(spans)
    assert set(spans) == {"ssd.infer", *STAGES}
    root = spans["ssd.infer"]
    assert root.kind == SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.parent.is_remote
    assert root.attributes["ssd.protocol"] == protocol and root.attributes["ssd.status"] == 200
    for name in STAGES:
        span = spans[name]
        assert span.context.trace_id == root.context.trace_id, name
        assert span.parent.span_id == root.context.span_id, name
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, name
    order = [spans[n] for n in STAGES]
    for before, after in itertools.pairwise(order):
        assert before.end_time <= after.start_time, (before.name, after.name)
    assert spans["ssd.model"].attributes["ssd.batch_images"] >= 1
    assert spans["ssd.decode"].attributes["ssd.images"] == 1


def test_v1_request_spans_continue_the_callers_trace(exporter, model, png):
    headers = {"content-type": "application/json", "traceparent": TRACEPARENT}
    asyncio.run(model({"instances": [png]}, headers=headers))
    _check_request_trace(exporter.get_finished_spans(), "v1")


def test_v2_and_grpc_requests_are_traced(exporter, model, shapes_images, png):
    rest = InferRequest("ssd", [InferInput("images", [1], "BYTES", data=[png])])
    asyncio.run(model(rest, headers={"traceparent": TRACEPARENT}))
    _check_request_trace(exporter.get_finished_spans(), "v2")
    exporter.clear()
    raw = encode_image(shapes_images[1], "PNG")
    grpc_like = InferRequest("ssd", [InferInput("images", [1], "BYTES", data=[raw])], from_grpc=True)
    asyncio.run(model(grpc_like, headers={"traceparent": TRACEPARENT}))  # gRPC metadata, as KServe passes it
    _check_request_trace(exporter.get_finished_spans(), "grpc")


def test_without_traceparent_a_new_trace_starts(exporter, model, png):
    asyncio.run(model({"instances": [png]}, headers={}))
    root = _by_name(exporter.get_finished_spans())["ssd.infer"]
    assert root.parent is None and format(root.context.trace_id, "032x") != TRACE_ID


def test_client_error_is_recorded_but_not_a_server_error(exporter, model, png):
    with pytest.raises(InvalidInput):
        asyncio.run(model({"instances": [png, "###"]}, headers={"traceparent": TRACEPARENT}))
    spans = _by_name(exporter.get_finished_spans())
    root = spans["ssd.infer"]
    assert root.attributes["ssd.status"] == 400
    assert root.status.status_code != StatusCode.ERROR
    assert [e.name for e in root.events] == ["exception"]
    assert "ssd.decode" in spans and "ssd.model" not in spans


def test_tracing_off_records_nothing(exporter, model, png):
    tracing.disable()
    assert not tracing.enabled() and tracing.batcher_timing() is None
    response, _ = asyncio.run(model({"instances": [png]}, headers={"traceparent": TRACEPARENT}))
    assert json.loads(response)["predictions"]
    assert exporter.get_finished_spans() == ()


def test_server_flag_exports_spans_of_the_callers_trace(random_tiny_model_dir, tmp_path, monkeypatch, png):
    """``--tracing`` with the standard variables: the console exporter writes the spans to stdout."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ssd-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    server = start_server(random_tiny_model_dir, tmp_path / "server.log", "--tracing")
    try:
        server.wait_ready()
        r = httpx.post(
            f"{server.url}/v1/models/{MODEL_NAME}:predict",
            json={"instances": [png]},
            headers={"traceparent": TRACEPARENT},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        _grpc_infer(server.grpc_target, base64.b64decode(png), GRPC_TRACEPARENT)
        # Header hygiene: an oversized tracestate is dropped, the trace still continued (V2 REST); a
        # hostile traceparent starts a new trace (V1 again).
        v2 = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [png]}]}
        hostile_state = {"traceparent": V2_TRACEPARENT, "tracestate": "k=" + "c" * 600}
        r = httpx.post(
            f"{server.url}/v2/models/{MODEL_NAME}/infer", json=v2, headers=hostile_state, timeout=60
        )
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{server.url}/v1/models/{MODEL_NAME}:predict",
            json={"instances": [png]},
            headers={"traceparent": "B" * 4000},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.log().count('"name": "ssd.encode"') < 4:
            time.sleep(0.2)
    finally:
        server.terminate()
    spans = _console_spans(server.log())
    infers = [s for s in spans if s["name"] == "ssd.infer"]
    fresh = [s for s in infers if s["parent_id"] is None]
    assert [s["attributes"]["ssd.protocol"] for s in fresh] == ["v1"], "the hostile traceparent's request"
    roots = {s["attributes"]["ssd.protocol"]: s for s in infers if s["parent_id"] is not None}
    assert set(roots) == {"v1", "grpc", "v2"}
    _, v2_trace, v2_parent, _ = V2_TRACEPARENT.split("-")
    assert (
        roots["v2"]["context"]["trace_id"] == f"0x{v2_trace}" and roots["v2"]["parent_id"] == f"0x{v2_parent}"
    )
    assert "ccccc" not in roots["v2"]["context"]["trace_state"]
    assert "BBBB" not in server.log()
    for protocol, traceparent in (("v1", TRACEPARENT), ("grpc", GRPC_TRACEPARENT)):
        _, trace_id, parent_id, _ = traceparent.split("-")
        root = roots[protocol]
        assert root["context"]["trace_id"] == f"0x{trace_id}" and root["parent_id"] == f"0x{parent_id}"
        assert root["resource"]["attributes"]["service.name"] == "ssd-under-test"
        children = {s["name"] for s in spans if s["parent_id"] == root["context"]["span_id"]}
        assert children == set(STAGES), protocol


def _grpc_infer(target: str, image: bytes, traceparent: str) -> None:
    """One gRPC ModelInfer carrying ``traceparent`` as metadata."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[image])
    )
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])
        stub.ModelInfer(request, metadata=[("traceparent", traceparent)], timeout=60)


def _console_spans(log: str) -> list[dict]:
    """The JSON objects the console exporter printed (one indented object per span)."""
    spans, depth, current = [], 0, []
    for line in log.splitlines():
        if line == "{" and depth == 0:
            depth, current = 1, [line]
        elif depth:
            current.append(line)
            if line == "}":
                depth = 0
                spans.append(json.loads("\n".join(current)))
    return spans
