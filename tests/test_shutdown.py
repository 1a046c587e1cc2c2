"""Reliability of the real server: overload (503, then recovery), SIGTERM with requests in flight,
and start-up with a broken model directory.

The tests of the ``small_server`` run in file order: the SIGTERM test is last and stops it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_fixtures import MODEL_NAME, REPO_ROOT, b64, encode_image, server_env, start_server

V1 = f"/v1/models/{MODEL_NAME}:predict"
QUEUE_LIMIT = 8


@pytest.fixture(scope="module")
def small_server(random_tiny_model_dir, tmp_path_factory):
    """Batches of at most 8 images, at most 8 images in progress, 300 ms batching window."""
    server = start_server(
        random_tiny_model_dir,
        tmp_path_factory.mktemp("small_server") / "server.log",
        "--max_batch_size",
        "8",
        "--max_queue_images",
        str(QUEUE_LIMIT),
        "--batch_wait_ms",
        "300",
        "--shutdown_grace_s",
        "20",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def png_b64(shapes_images) -> str:
    return b64(encode_image(shapes_images[0], "PNG"))


def test_overload_answers_503_quickly_then_recovers(small_server, png_b64):
    body = {"instances": [png_b64] * 4}
    channel = grpc.insecure_channel(small_server.grpc_target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images",
        datatype="BYTES",
        shape=[4],
        contents=pb.InferTensorContents(bytes_contents=[encode_image(np.zeros((64, 64, 3), np.uint8))] * 4),
    )
    grpc_request = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])

    def rest(_):
        start = time.perf_counter()
        r = httpx.post(small_server.url + V1, json=body, timeout=60)
        return r.status_code, r.json(), time.perf_counter() - start

    def over_grpc(_):
        try:
            stub.ModelInfer(grpc_request, timeout=60)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    with ThreadPoolExecutor(24) as pool:
        rest_futures = [pool.submit(rest, i) for i in range(16)]
        grpc_futures = [pool.submit(over_grpc, i) for i in range(8)]
        rest_results = [f.result() for f in rest_futures]
        grpc_results = [f.result() for f in grpc_futures]
    channel.close()

    statuses = [s for s, _, _ in rest_results]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    for status, payload, seconds in rest_results:
        if status == 503:
            assert "overloaded" in payload["error"] and f"the limit is {QUEUE_LIMIT}" in payload["error"]
            assert seconds < 5, "a shed request should be answered at once"
        else:
            assert len(payload["predictions"]) == 4
    assert {code for code, _ in grpc_results} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert all("overloaded" in d for code, d in grpc_results if code == grpc.StatusCode.UNAVAILABLE)

    assert small_server.metric("ssd_queue_images") == 0
    assert small_server.metric("ssd_request_errors_total", 'protocol="v1",status="503"') >= 1
    r = httpx.post(small_server.url + V1, json=body, timeout=60)  # load dropped: served again
    assert r.status_code == 200 and len(r.json()["predictions"]) == 4


def test_sigterm_finishes_in_flight_requests_and_exits_0(small_server, png_b64):
    """Runs last in this module: it stops ``small_server``."""
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(httpx.post, small_server.url + V1, json={"instances": [png_b64]}, timeout=60)
            for _ in range(4)
        ]
        deadline = time.monotonic() + 20
        while small_server.metric("ssd_queue_images") < 4:  # all four admitted, waiting for the batch
            assert time.monotonic() < deadline, "requests never reached the model"
            time.sleep(0.02)
        small_server.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(len(r.json()["predictions"]) == 1 for r in responses)
    assert small_server.proc.wait(60) == 0
    log = small_server.log()
    assert "server stopped" in log and "Traceback" not in log
    with pytest.raises(httpx.TransportError):
        httpx.get(small_server.url + "/v2/health/live", timeout=2)


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
    from predictor.model import ServingOptions, SSDPredictor
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
    from predictor.server import resolve_model_dir

    monkeypatch.setattr(predictor.models, "DEMO_MODEL_DIR", tmp_path / "demo")
    with caplog.at_level("ERROR", logger="predictor.server"):
        assert resolve_model_dir(None) is None
    assert "demo model is not installed" in caplog.text and "untrained" in caplog.text
    assert resolve_model_dir("/mnt/models") == "/mnt/models"
