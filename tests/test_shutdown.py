"""Reliability of the real server: overload (503, then recovery), SIGTERM with requests in flight,
and start-up with a broken model directory.

The ``small_server`` tests hold the model with a gate (tests/gated_server.py) instead of timing
anything, so their outcome does not depend on the machine's speed. They run in file order: the
SIGTERM test is last and stops the server.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_fixtures import MODEL_NAME, REPO_ROOT, b64, encode_image, server_env, start_server, wait_until

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
QUEUE_LIMIT = 8


@contextlib.contextmanager
def _small_server(model_dir, log_dir):
    """At most 8 images in progress, batches of at most 8; its model calls wait while the test holds
    ``server.gate`` (see tests/gated_server.py)."""
    server = start_server(
        model_dir,
        log_dir / "server.log",
        "--max_batch_size",
        "8",
        "--max_queue_images",
        str(QUEUE_LIMIT),
        "--batch_wait_ms",
        "1",
        "--shutdown_grace_s",
        "30",
        gated=True,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        if server.gate is not None and server.proc.poll() is None:
            server.gate.release()
        server.terminate()


@pytest.fixture(scope="module")
def small_server(random_tiny_model_dir, tmp_path_factory):
    """The module's shared gated server (:func:`_small_server`)."""
    with _small_server(random_tiny_model_dir, tmp_path_factory.mktemp("small_server")) as server:
        yield server


@pytest.fixture
def stopping_server(random_tiny_model_dir, tmp_path):
    """A gated server of its own for a test that stops it (tests run in random order)."""
    with _small_server(random_tiny_model_dir, tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def png_b64(shapes_images) -> str:
    return b64(encode_image(shapes_images[0], "PNG"))


def grpc_request(images: int) -> pb.ModelInferRequest:
    png = encode_image(np.zeros((64, 64, 3), np.uint8))
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images",
        datatype="BYTES",
        shape=[images],
        contents=pb.InferTensorContents(bytes_contents=[png] * images),
    )
    return pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])


def test_overload_sheds_exactly_what_is_past_the_limit_then_serves_the_queue(small_server, png_b64):
    """With the model held, fill the admission limit exactly (8 images: 4 REST + 3 gRPC + 1 REST),
    then every further request, on every protocol, is shed with 503 / UNAVAILABLE naming the limit
    while the model is still held: shedding never waits for the model. Releasing the model answers
    every admitted request with 200, the two queued behind the held batch coalesced into one call.
    (How fast a shed request is answered is measured by the overload benchmark, not asserted here.)"""
    gate = small_server.gate
    channel = grpc.insecure_channel(small_server.grpc_target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    shed_before = small_server.metric("ssd_request_errors_total", 'protocol="v1",status="503"')
    calls_before = small_server.metric("ssd_batch_size_count")
    images_before = small_server.metric("ssd_batch_size_sum")

    def rest(images: int, path: str = V1) -> httpx.Response:
        if path == V1:
            body = {"instances": [png_b64] * images}
        else:
            tensor = {"name": "images", "shape": [images], "datatype": "BYTES", "data": [png_b64] * images}
            body = {"inputs": [tensor]}
        return httpx.post(small_server.url + path, json=body, timeout=120)

    gate.hold()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(rest, 4)
        gate.wait_for_waiting(1)  # the first batch (4 images) is inside the model, held
        second = pool.submit(stub.ModelInfer, grpc_request(3), timeout=120)
        third = pool.submit(rest, 1)
        wait_until(lambda: small_server.metric("ssd_queue_images") == QUEUE_LIMIT, "8 admitted images")

        # Past the limit: shed at once, while the model is still held.
        over = [rest(1), rest(4), rest(1, V2)]
        with pytest.raises(grpc.RpcError) as grpc_shed:
            stub.ModelInfer(grpc_request(1), timeout=120)
        assert gate.state() == ("hold", 1), "a shed request waited for the model"
        assert first.done() is False and second.done() is False and third.done() is False

        gate.release()
        admitted = [first.result(), third.result()]
        grpc_answer = second.result()
    channel.close()

    for response in over:
        assert response.status_code == 503, response.text
        assert f"{QUEUE_LIMIT} images in progress, the limit is {QUEUE_LIMIT}" in response.json()["error"]
    assert grpc_shed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"the limit is {QUEUE_LIMIT}" in grpc_shed.value.details()
    assert [r.status_code for r in admitted] == [200, 200]
    assert [len(r.json()["predictions"]) for r in admitted] == [4, 1]
    counts = {o.name: o for o in grpc_answer.outputs}["num_detections"]
    assert list(counts.shape) == [3]
    assert small_server.metric("ssd_queue_images") == 0
    # Two model calls: the first request's 4 images, then the 3 + 1 that queued behind it, coalesced.
    assert small_server.metric("ssd_batch_size_count") - calls_before == 2
    assert small_server.metric("ssd_batch_size_sum") - images_before == 8
    shed_after = small_server.metric("ssd_request_errors_total", 'protocol="v1",status="503"')
    assert shed_after - shed_before == 2  # the two V1 requests past the limit, nothing else
    again = rest(QUEUE_LIMIT)  # the load is gone: a full-size request is served again
    assert again.status_code == 200 and len(again.json()["predictions"]) == QUEUE_LIMIT


def test_sigterm_finishes_in_flight_requests_and_exits_0(stopping_server, png_b64):
    """It stops its own server (``stopping_server``). Four requests are held inside the model
    when SIGTERM arrives; the server stops listening, yet answers all four once the model goes on."""
    gate = stopping_server.gate
    gate.hold()
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(httpx.post, stopping_server.url + V1, json={"instances": [png_b64]}, timeout=120)
            for _ in range(4)
        ]
        wait_until(lambda: stopping_server.metric("ssd_queue_images") == 4, "all four requests admitted")
        gate.wait_for_waiting(1)
        stopping_server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not _accepts_connections(stopping_server), "the server to stop listening")
        assert not any(f.done() for f in futures), "an in-flight request ended before the model ran"
        gate.release()
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(len(r.json()["predictions"]) == 1 for r in responses)
    assert stopping_server.proc.wait(60) == 0
    log = stopping_server.log()
    assert "server stopped" in log and "Traceback" not in log


def _accepts_connections(server) -> bool:
    try:
        httpx.get(server.url + "/v2/health/live", timeout=5)
    except httpx.TransportError:
        return False
    return True


# ----------------------------------------------------------------------------- broken model dirs
def _truncated(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "weights.npz"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return dst


def _wrong_architecture(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    with np.load(dst / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    first = sorted(k for k in arrays if arrays[k].ndim == 4)[0]  # a conv kernel with one channel too many
    arrays[first] = np.zeros((*arrays[first].shape[:-1], arrays[first].shape[-1] + 1), np.float32)
    np.savez(dst / "weights.npz", **arrays)
    return dst


def _garbage_checkpoint(dst: Path) -> Path:
    dst.mkdir()
    (dst / "ssd_300_vgg.ckpt.index").write_bytes(b"\x00garbage" * 10)
    (dst / "ssd_300_vgg.ckpt.data-00000-of-00001").write_bytes(b"")
    return dst


def test_broken_model_dirs_exit_non_zero_with_one_clear_line(random_tiny_model_dir, tmp_path):
    cases = {
        "missing": (tmp_path / "does-not-exist", "does not exist"),
        "truncated": (_truncated(random_tiny_model_dir, tmp_path / "truncated"), "cannot read weights"),
        "wrong_architecture": (_wrong_architecture(random_tiny_model_dir, tmp_path / "wrong"), "has shape"),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "predictor", "--model_dir", str(path)],
            cwd=REPO_ROOT,
            env=server_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (path, _) in cases.items()
    }
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 1, f"{name}: exit {proc.returncode}\n{output}"
        lines = [ln for ln in output.splitlines() if "cannot load the model" in ln]
        assert len(lines) == 1, f"{name}:\n{output}"
        assert cases[name][1] in lines[0] and str(cases[name][0]) in lines[0], lines[0]
        assert "Traceback" not in output, output


def test_other_broken_model_dirs_raise_model_load_error(random_tiny_model_dir, tmp_path):
    """The same loading code in-process (cheaper than a process each)."""
    from predictor.serving.model import SSDPredictor
    from predictor.serving.options import ServingOptions
    from predictor.ssd.weights import ModelLoadError

    empty = tmp_path / "empty"
    empty.mkdir()
    bad_manifest = tmp_path / "bad_manifest"
    shutil.copytree(random_tiny_model_dir, bad_manifest)
    (bad_manifest / "model.yaml").write_text("format: something-else\n")
    for path, message in [
        (empty, "neither model.yaml nor a TF checkpoint"),
        (bad_manifest, "is not a ssd-predictor/v1 manifest"),
        (_garbage_checkpoint(tmp_path / "ckpt"), "cannot read checkpoint"),
    ]:
        model = SSDPredictor("ssd", ServingOptions(model_dir=str(path)))
        with pytest.raises(ModelLoadError, match=message) as info:
            model.build()
        assert "\n" not in str(info.value)
        assert not model.ready
        model.close()


def test_no_model_dir_without_the_demo_model_refuses_to_serve(monkeypatch, tmp_path, caplog):
    import predictor.models
    from predictor.serving.server import resolve_model_dir

    monkeypatch.setattr(predictor.models, "DEMO_MODEL_DIR", tmp_path / "demo")
    with caplog.at_level("ERROR", logger="predictor.serving.server"):
        assert resolve_model_dir(None) is None
    assert "demo model is not installed" in caplog.text and "untrained" in caplog.text
    assert resolve_model_dir("/mnt/models") == "/mnt/models"
