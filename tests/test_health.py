"""Health that tells the truth through start-up: live as soon as the process serves, ready (server and
model, REST and gRPC) only once every model is ready.

The Open Inference Protocol defines server readiness as "all models ready" (kserve/kserve
``docs/predict-api/v2/required_api.md``, "Server Ready"); KServe 0.21's ``DataPlane.ready`` answers true
regardless (``python/kserve/kserve/protocol/dataplane.py``). The server's model calls, warm-up
included, wait at a gate the test holds (tests/gated_server.py), so the not-ready state is observed
for certain, with no timing assumption; the polls' deadlines only guard against hangs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_fixtures import MODEL_NAME, b64, encode_image, start_server


def poll(condition: Callable[[], bool], what: str, server, timeout: float = 180.0) -> None:
    """Wait until ``condition()`` (a hang guard, not a timing assumption)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()[-3000:]}")
        try:
            if condition():
                return
        except (httpx.HTTPError, grpc.RpcError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached after {timeout} s:\n{server.log()[-3000:]}")


def rest_status(server, path: str) -> int:
    return httpx.get(server.url + path, timeout=5).status_code


def health(server, stub) -> dict[str, object]:
    """Every health answer at one moment (REST status codes, gRPC booleans)."""
    return {
        "rest_live": rest_status(server, "/v2/health/live"),
        "rest_root": rest_status(server, "/"),
        "rest_ready": rest_status(server, "/v2/health/ready"),
        "rest_model_ready": rest_status(server, f"/v2/models/{MODEL_NAME}/ready"),
        "rest_v1_model": rest_status(server, f"/v1/models/{MODEL_NAME}"),
        "grpc_live": stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live,
        "grpc_ready": stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready,
        "grpc_model_ready": stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME), timeout=5).ready,
    }


NOT_READY = {
    "rest_live": 200,
    "rest_root": 200,
    "rest_ready": 503,
    "rest_model_ready": 503,
    "rest_v1_model": 503,
    "grpc_live": True,
    "grpc_ready": False,
    "grpc_model_ready": False,
}
READY = {**NOT_READY, "rest_ready": 200, "rest_model_ready": 200, "rest_v1_model": 200}
READY.update(grpc_ready=True, grpc_model_ready=True)


#: REST body limit of the gated server; its gRPC limit follows (no --grpc_max_receive_message_length).
LIMIT = 1_000_000


@pytest.fixture(scope="module")
def gated_server(random_tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gated")
    server = start_server(
        random_tiny_model_dir, tmp / "server.log", "--max_request_bytes", str(LIMIT), gated=True, held=True
    )
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        yield server, pb_grpc.GRPCInferenceServiceStub(channel), server.gate
    finally:
        channel.close()
        if server.gate.state()[0] == "hold" and server.proc.poll() is None:
            server.gate.release()
        server.terminate()


def test_live_at_once_ready_only_when_the_model_is(gated_server, shapes_images):
    server, stub, gate = gated_server
    # Both servers answer (live) while warm-up waits at the gate: nothing may claim readiness.
    poll(lambda: rest_status(server, "/v2/health/live") == 200, "REST live", server)
    poll(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live, "gRPC live", server)
    assert health(server, stub) == NOT_READY
    image = b64(encode_image(shapes_images[0], "PNG"))
    r = httpx.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", json={"instances": [image]}, timeout=30)
    assert r.status_code == 503, r.text
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    r = httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
    assert r.status_code == 503, r.text

    gate.release()
    seen = []

    def all_ready() -> bool:
        state = health(server, stub)
        seen.append(state)
        return state == READY

    poll(all_ready, "every health answer ready", server)
    # Never a mixed state where the server claims ready before its model.
    for state in seen:
        assert not (state["rest_ready"] == 200 and state["rest_model_ready"] != 200), state
        assert not (state["grpc_ready"] and not state["grpc_model_ready"]), state
    r = httpx.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", json={"instances": [image]}, timeout=120)
    assert r.status_code == 200, r.text


def test_grpc_message_limit_follows_max_request_bytes(gated_server):
    """A gRPC request over the limit: RESOURCE_EXHAUSTED naming the limit (KServe's own default would
    be 8 MiB); REST bodies over it: 413."""
    server, stub, _ = gated_server
    poll(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live, "gRPC live", server)
    tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(bytes(LIMIT + 1000))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor]), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT) in info.value.details(), info.value.details()
    r = httpx.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", content=bytes(LIMIT + 1), timeout=60)
    assert r.status_code == 413 and f"the limit is {LIMIT}" in r.json()["error"]
    # the server is still serving
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, 64 * 1024 * 1024),
        (["--max_request_bytes", "5000"], {}, 5000),
        ([], {"SSD_MAX_REQUEST_BYTES": "7000"}, 7000),
        (["--max_request_bytes", "5000", "--grpc_max_receive_message_length", "9000"], {}, 9000),
        ([], {"SSD_GRPC_MAX_RECEIVE_MESSAGE_LENGTH": "123456"}, 123456),
    ],
)
def test_grpc_limit_flag(argv, env, expected, monkeypatch):
    from predictor.serving.options import build_parser, resolve_grpc_limit

    for name in ("SSD_MAX_REQUEST_BYTES", "SSD_GRPC_MAX_RECEIVE_MESSAGE_LENGTH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_grpc_limit(build_parser().parse_args(argv)) == expected
