"""The model version: read from the model directory, reported on every protocol, checked on versioned routes.

Unit tests read and write ``VERSION`` / the weights digest; the server tests talk to the session server
(``ssd_server``, the tiny random model whose ``VERSION`` ``save_model_dir`` wrote) over REST and gRPC,
and run ``ssd-detect`` against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_fixtures import MODEL_NAME, encode_image

from predictor.client.cli import main as client_main
from predictor.ssd.weights import (
    VERSION_FILE,
    WEIGHTS,
    ModelLoadError,
    model_version,
    weights_digest,
    write_version,
)

HEADER = "x-model-version"


# ----------------------------------------------------------------------------- the model directory
def test_digest_is_the_sha256_of_the_weights_file(random_tiny_model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(random_tiny_model_dir, copy)
    (copy / VERSION_FILE).unlink()
    expected = "sha-" + hashlib.sha256((copy / WEIGHTS).read_bytes()).hexdigest()[:12]
    assert weights_digest(copy) == expected
    assert model_version(copy) == expected  # no VERSION file: the digest
    with open(copy / WEIGHTS, "ab") as f:  # other bytes, other version
        f.write(b"\0")
    assert model_version(copy) != expected


def test_version_file_wins_and_is_checked(random_tiny_model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(random_tiny_model_dir, copy)
    (copy / VERSION_FILE).write_text("v2.1-rc_3\n\n")
    assert model_version(copy) == "v2.1-rc_3"
    for bad in ("", "v 2", "../1", "-v2", "v" * 65, "v2/infer"):
        (copy / VERSION_FILE).write_text(bad + "\n")
        with pytest.raises(ModelLoadError, match="is not a model version"):
            model_version(copy)


def test_save_model_dir_writes_the_digest_or_the_given_version(random_tiny_model_dir, tmp_path):
    assert (random_tiny_model_dir / VERSION_FILE).read_text() == weights_digest(random_tiny_model_dir) + "\n"
    copy = tmp_path / "m"
    shutil.copytree(random_tiny_model_dir, copy)
    assert write_version(copy, "2026-12-07") == "2026-12-07"
    assert model_version(copy) == "2026-12-07"
    with pytest.raises(ModelLoadError):
        write_version(copy, "no spaces")


def test_the_demo_model_ships_its_version(demo_model_dir):
    """The committed demo model has a VERSION: its weights' digest, as ``make demo-model`` writes it."""
    assert (demo_model_dir / VERSION_FILE).read_text() == weights_digest(demo_model_dir) + "\n"


def test_train_refuses_a_bad_model_version_before_training(tmp_path):
    from predictor.tools.train import main as train_main

    with pytest.raises(SystemExit, match="--model-version: 'a b' is not a model version"):
        train_main(["--out", str(tmp_path), "--model-version", "a b"])
    assert not any(tmp_path.iterdir())


def test_detector_from_dir_carries_the_version(random_tiny_model_dir, tmp_path):
    from predictor.ssd.detector import Detector

    copy = tmp_path / "m"
    shutil.copytree(random_tiny_model_dir, copy)
    (copy / VERSION_FILE).write_text("v7\n")
    assert Detector.from_dir(str(copy)).version == "v7"
    (copy / VERSION_FILE).write_text("bad version\n")
    with pytest.raises(ModelLoadError, match=str(copy / VERSION_FILE)):
        Detector.from_dir(str(copy))


# ----------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def served_version(random_tiny_model_dir) -> str:
    return model_version(random_tiny_model_dir)


@pytest.fixture(scope="module")
def png(shapes_images) -> bytes:
    return encode_image(shapes_images[0])


def _v2_body(png: bytes) -> dict:
    return {
        "inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}
        ]
    }


def test_rest_reports_the_version_on_every_route(ssd_server, served_version, png):
    base = f"{ssd_server.url}/v2/models/{MODEL_NAME}"
    v1 = httpx.post(
        f"{ssd_server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"b64": base64.b64encode(png).decode()}]},
        timeout=60,
    )
    v2 = httpx.post(f"{base}/infer", json=_v2_body(png), timeout=60)
    meta = httpx.get(base, timeout=10)
    live = httpx.get(f"{ssd_server.url}/v2/health/live", timeout=10)
    error = httpx.post(f"{base}/infer", json={"inputs": []}, timeout=10)
    for r in (v1, v2, meta, live, error):
        assert r.headers[HEADER] == served_version, (r.request.url, r.headers)
    assert v1.status_code == v2.status_code == meta.status_code == 200
    assert error.status_code == 400
    assert v2.json()["model_version"] == served_version
    assert meta.json()["versions"] == [served_version]


def test_rest_binary_response_carries_the_version(ssd_server, served_version, png):
    body = _v2_body(png)
    body["outputs"] = [{"name": "num_detections", "parameters": {"binary_data": True}}]
    r = httpx.post(f"{ssd_server.url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    json_length = int(r.headers["inference-header-content-length"])
    assert orjson.loads(r.content[:json_length])["model_version"] == served_version


def test_versioned_rest_routes_answer_for_the_served_version_only(ssd_server, served_version, png):
    base = f"{ssd_server.url}/v2/models/{MODEL_NAME}"
    ok = httpx.post(f"{base}/versions/{served_version}/infer", json=_v2_body(png), timeout=60)
    assert ok.status_code == 200, ok.text
    assert ok.json()["model_version"] == served_version
    assert httpx.get(f"{base}/versions/{served_version}", timeout=10).json()["versions"] == [served_version]
    ready = httpx.get(f"{base}/versions/{served_version}/ready", timeout=10)
    assert (ready.status_code, ready.json()) == (200, {"name": MODEL_NAME, "ready": True})
    expected = f"model_version '1': model '{MODEL_NAME}' is served at version '{served_version}' only"
    for r in (
        httpx.post(f"{base}/versions/1/infer", json=_v2_body(png), timeout=60),
        httpx.get(f"{base}/versions/1", timeout=10),
        httpx.get(f"{base}/versions/1/ready", timeout=10),
    ):
        assert r.status_code == 404, (r.request.url, r.text)
        assert r.json()["error"].startswith(expected), r.text
        assert r.headers[HEADER] == served_version


def _grpc_request(png: bytes, version: str = "") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[png])
    )
    return pb.ModelInferRequest(model_name=MODEL_NAME, model_version=version, inputs=[tensor])


def test_grpc_reports_and_checks_the_version(ssd_server, served_version, png):
    with grpc.insecure_channel(ssd_server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for version in ("", served_version):
            response, call = stub.ModelInfer.with_call(_grpc_request(png, version), timeout=60)
            assert response.model_version == served_version
            assert dict(call.initial_metadata())[HEADER] == served_version
        meta, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name=MODEL_NAME), timeout=10)
        assert list(meta.versions) == [served_version]
        assert dict(call.initial_metadata())[HEADER] == served_version
        ready = stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME, version=served_version), timeout=10)
        assert ready.ready
        calls = (
            lambda: stub.ModelInfer(_grpc_request(png, "1"), timeout=60),
            lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME, version="1"), timeout=10),
            lambda: stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME, version="1"), timeout=10),
        )
        for call_it in calls:
            with pytest.raises(grpc.RpcError) as err:
                call_it()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details().startswith(f"model_version '1': model '{MODEL_NAME}' is served at")
            assert dict(err.value.trailing_metadata())[HEADER] == served_version
            assert HEADER not in dict(err.value.initial_metadata() or ())  # Trailers-Only: retriable


def test_grpc_refusals_and_health_carry_the_version(ssd_server, served_version):
    """As REST's errors carry the header: a message the admission interceptor cannot parse
    (INVALID_ARGUMENT, before KServe's servicer runs) in its trailing metadata, sent without headers (a
    Trailers-Only answer, which gRPC retry policies may retry: gRFC A6), and a health call."""
    with grpc.insecure_channel(ssd_server.grpc_target) as channel:
        service = "/inference.GRPCInferenceService/"
        infer = channel.unary_unary(service + "ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            infer(b"\xff\xff\xff", timeout=30)  # not a ModelInferRequest
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("the request message cannot be parsed")
        assert dict(err.value.trailing_metadata())[HEADER] == served_version
        assert HEADER not in dict(err.value.initial_metadata() or ())
        _, call = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive.with_call(
            pb.ServerLiveRequest(), timeout=10
        )
        assert dict(call.initial_metadata())[HEADER] == served_version


def test_metrics_name_the_version(ssd_server, served_version):
    assert ssd_server.metric("ssd_model_info", f'model="{MODEL_NAME}",version="{served_version}"') == 1.0
    text = httpx.get(f"{ssd_server.url}/metrics", timeout=10).text
    assert text.count("ssd_model_info{") == 1  # one series per server


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc"])
def test_client_output_names_the_version(ssd_server, served_version, png, tmp_path, protocol):
    image = tmp_path / "a.png"
    image.write_bytes(png)
    out = tmp_path / "out.jsonl"
    url = ssd_server.grpc_target if protocol == "grpc" else ssd_server.url
    assert client_main(["--url", url, "--protocol", protocol, "-o", str(out), str(image)]) == 0
    row = json.loads(out.read_text())
    assert row["model_version"] == served_version
    assert isinstance(row["detections"], list)


def test_the_served_version_is_logged(ssd_server, served_version):
    assert f"model version: {served_version}" in ssd_server.log()


def test_weights_path_typo_is_not_a_version(tmp_path):
    """A path that holds no model has no version (the error names the path)."""
    with pytest.raises(ModelLoadError, match="holds neither"):
        model_version(Path(tmp_path))
