"""Clients nobody in this project wrote, in their default and JSON modes, against the real server.

Every client x mode must get the detections a V1 JSON request gets for the same (lossless PNG) images.
Clients: NVIDIA tritonclient HTTP (its defaults: binary tensor extension, raw image bytes, no
Content-Type; and JSON mode), tritonclient gRPC, KServe's ``InferenceRESTClient`` (V1 and V2, binary
and JSON) and ``InferenceGRPCClient``, and curl (skipped only where curl is missing).

Sources of the client behaviour relied on: triton-inference-server/client
``src/python/library/tritonclient/http/_utils.py`` (``_get_inference_request``: no ``outputs`` ->
``binary_data_output: true``; binary inputs -> ``Inference-Header-Content-Length``) and
``_infer_result.py``; kserve/kserve ``python/kserve/kserve/inference_client.py`` (``InferenceRESTClient``
sends ``InferRequest.to_rest()``, binary when an input holds raw data).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from serving_fixtures import MODEL_NAME, REPO_ROOT, encode_image, server_env

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_labels")


@pytest.fixture(scope="module")
def images(shapes_images) -> list[bytes]:
    """Two lossless PNGs of different sizes."""
    return [encode_image(shapes_images[i], "PNG") for i in (0, 3)]


@pytest.fixture(scope="module")
def reference(ssd_server, images) -> list[list[dict]]:
    """V1 JSON answers, one per image (the oracle every client is held to)."""
    body = {"instances": [{"b64": base64.b64encode(im).decode()} for im in images]}
    r = httpx.post(ssd_server.url + V1, json=body, timeout=120)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert sum(len(p) for p in predictions) > 0, "the test model must detect something"
    return predictions


def check_same_detections(arrays: dict[str, np.ndarray], reference: list[list[dict]]) -> None:
    """V2 outputs (any client's decoding) equal the V1 answer image by image."""
    num = np.asarray(arrays["num_detections"]).reshape(-1)
    assert num.tolist() == [len(p) for p in reference]
    for i, expected in enumerate(reference):
        n = len(expected)
        labels = [
            x.decode() if isinstance(x, bytes) else str(x)
            for x in np.asarray(arrays["detection_labels"])[i][:n]
        ]
        assert labels == [p["label"] for p in expected]
        np.testing.assert_array_equal(
            np.asarray(arrays["detection_classes"], dtype=np.int64)[i][:n], [p["class_id"] for p in expected]
        )
        np.testing.assert_allclose(
            np.asarray(arrays["detection_scores"], dtype=np.float64)[i][:n],
            [p["score"] for p in expected],
            atol=1e-4,
        )
        boxes = [[p["xmin"], p["ymin"], p["xmax"], p["ymax"]] for p in expected]
        np.testing.assert_allclose(
            np.asarray(arrays["detection_boxes"], dtype=np.float64)[i][:n].reshape(n, 4),
            np.reshape(boxes, (n, 4)),
            atol=6e-3,
        )


def bytes_tensor(items: list[bytes]) -> np.ndarray:
    return np.array(items, dtype=object)


# ----------------------------------------------------------------------------- tritonclient HTTP
def triton_http_default(url: str, images: list[bytes]) -> dict[str, np.ndarray]:
    """As tritonclient's docs write it: raw bytes, binary input, no outputs named (all binary)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("images", [len(images)], "BYTES")
        inp.set_data_from_numpy(bytes_tensor(images))
        result = client.infer(MODEL_NAME, [inp])
        assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] > 0
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


def triton_http_json(url: str, images: list[bytes]) -> dict[str, np.ndarray]:
    """JSON mode: base64 text as JSON data, every output asked for as JSON."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("images", [len(images)], "BYTES")
        inp.set_data_from_numpy(bytes_tensor([base64.b64encode(im) for im in images]), binary_data=False)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
        result = client.infer(MODEL_NAME, [inp], outputs=outputs)
        assert all("data" in o for o in result.get_response()["outputs"])
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


def triton_http_json_in_binary_out(url: str, images: list[bytes]) -> dict[str, np.ndarray]:
    """JSON input, outputs asked for one by one, some binary (``binary_data=True``), some JSON."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("images", [len(images)], "BYTES")
        inp.set_data_from_numpy(bytes_tensor([base64.b64encode(im) for im in images]), binary_data=False)
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=i % 2 == 0) for i, name in enumerate(OUTPUTS)
        ]
        result = client.infer(MODEL_NAME, [inp], outputs=outputs)
        kinds = ["parameters" in o for o in result.get_response()["outputs"]]
        assert kinds == [i % 2 == 0 for i in range(len(OUTPUTS))]
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


def triton_http_binary_base64(url: str, images: list[bytes]) -> dict[str, np.ndarray]:
    """Binary input whose elements are base64 text (not image files): told apart by the signature."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("images", [len(images)], "BYTES")
        inp.set_data_from_numpy(bytes_tensor([base64.b64encode(im) for im in images]))
        result = client.infer(MODEL_NAME, [inp])
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


# ----------------------------------------------------------------------------- tritonclient gRPC
def in_subprocess(function: str, *args: Any) -> Any:
    """``function(*args)`` of this module in a fresh interpreter (result pickled back).

    tritonclient.grpc and kserve register the same protobuf names (``inference.ServerLiveRequest`` ...)
    in the process-wide descriptor pool, so one process cannot import both.
    """
    code = (
        "import pickle, sys; sys.path.insert(0, 'tests'); import test_client_interop as t; "
        f"args = pickle.load(sys.stdin.buffer); pickle.dump(t.{function}(*args), sys.stdout.buffer)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(args),
        capture_output=True,
        cwd=REPO_ROOT,
        env=server_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return pickle.loads(done.stdout)


def triton_grpc_default(target: str, images: list[bytes]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        inp = grpcclient.InferInput("images", [len(images)], "BYTES")
        inp.set_data_from_numpy(bytes_tensor(images))
        result = client.infer(MODEL_NAME, [inp])
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


def triton_grpc_base64(target: str, images: list[bytes]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        inp = grpcclient.InferInput("images", [len(images)], "BYTES")
        inp.set_data_from_numpy(bytes_tensor([base64.b64encode(im) for im in images]))
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        result = client.infer(MODEL_NAME, [inp], outputs=outputs)
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


#: Controls as tritonclient's docs write them: Python floats (sent as Triton's ``double_param``), an int
#: (``int64_param``) and a string.
TRITON_PARAMETERS = {
    "score_threshold": 0.3,
    "nms_threshold": 0.8,
    "max_detections": 5,
    "classes": "circle,square",
}


def triton_grpc_parameters(target: str, images: list[bytes]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        inp = grpcclient.InferInput("images", [len(images)], "BYTES")
        inp.set_data_from_numpy(bytes_tensor(images))
        result = client.infer(MODEL_NAME, [inp], parameters=TRITON_PARAMETERS)
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


def test_tritonclient_grpc_float_parameters_are_honoured(ssd_server, images):
    """tritonclient sends a float as ``double_param``, a field KServe's proto lacks: the server reads it
    (and gets what V1 gets for the same controls, which differs from the defaults' answer)."""
    body = {"instances": [{"b64": base64.b64encode(im).decode()} for im in images]}
    controlled = httpx.post(
        ssd_server.url + V1, json={**body, "parameters": TRITON_PARAMETERS}, timeout=120
    ).json()["predictions"]
    default = httpx.post(ssd_server.url + V1, json=body, timeout=120).json()["predictions"]
    assert controlled != default and sum(map(len, controlled)) > 0
    arrays = in_subprocess("triton_grpc_parameters", ssd_server.grpc_target, images)
    check_same_detections(arrays, controlled)


# ----------------------------------------------------------------------------- KServe clients
def _kserve_request(images: list[bytes], binary: bool, binary_outputs: bool = False) -> Any:
    from kserve import InferInput, InferRequest

    inp = InferInput("images", [len(images)], "BYTES")
    if binary:
        inp.set_data_from_numpy(bytes_tensor(images), binary_data=True)
    else:
        inp.set_data_from_numpy(bytes_tensor([base64.b64encode(im) for im in images]), binary_data=False)
    parameters = {"binary_data_output": True} if binary_outputs else None
    return InferRequest(MODEL_NAME, [inp], parameters=parameters)


def _kserve_rest(url: str, data: Any, protocol: str) -> Any:
    from kserve import InferenceRESTClient, RESTConfig

    async def run() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol=protocol, timeout=120))
        try:
            return await client.infer(f"http://{url}", data, model_name=MODEL_NAME)
        finally:
            await client.close()

    return asyncio.run(run())


def kserve_rest_v2_binary(url: str, images: list[bytes]) -> dict[str, np.ndarray]:
    response = _kserve_rest(url, _kserve_request(images, binary=True, binary_outputs=True), "v2")
    return {o.name: o.as_numpy() for o in response.outputs}


def kserve_rest_v2_json(url: str, images: list[bytes]) -> dict[str, np.ndarray]:
    response = _kserve_rest(url, _kserve_request(images, binary=False), "v2")
    return {o.name: o.as_numpy() for o in response.outputs}


def kserve_grpc(target: str, images: list[bytes]) -> dict[str, np.ndarray]:
    from kserve import InferenceGRPCClient

    async def run() -> Any:
        client = InferenceGRPCClient(target, timeout=120)
        try:
            return await client.infer(_kserve_request(images, binary=True))
        finally:
            await client.close()

    return {o.name: o.as_numpy() for o in asyncio.run(run()).outputs}


#: (id, transport, client call; by name: run in a subprocess).
V2_CLIENTS: list[tuple[str, str, Callable[[str, list[bytes]], dict[str, np.ndarray]] | str]] = [
    ("tritonclient-http-default-binary", "http", triton_http_default),
    ("tritonclient-http-json", "http", triton_http_json),
    ("tritonclient-http-json-in-binary-out", "http", triton_http_json_in_binary_out),
    ("tritonclient-http-binary-base64-elements", "http", triton_http_binary_base64),
    ("tritonclient-grpc-default", "grpc", "triton_grpc_default"),
    ("tritonclient-grpc-base64-elements", "grpc", "triton_grpc_base64"),
    ("kserve-rest-v2-binary", "http", kserve_rest_v2_binary),
    ("kserve-rest-v2-json", "http", kserve_rest_v2_json),
    ("kserve-grpc", "grpc", kserve_grpc),
]


@pytest.mark.parametrize(("transport", "call"), [c[1:] for c in V2_CLIENTS], ids=[c[0] for c in V2_CLIENTS])
def test_v2_clients_get_the_v1_detections(ssd_server, images, reference, transport, call):
    address = f"127.0.0.1:{ssd_server.http_port}" if transport == "http" else ssd_server.grpc_target
    arrays = in_subprocess(call, address, images) if isinstance(call, str) else call(address, images)
    check_same_detections(arrays, reference)


def test_kserve_rest_client_v1(ssd_server, images, reference):
    body = {"instances": [{"b64": base64.b64encode(im).decode()} for im in images]}
    answer = _kserve_rest(f"127.0.0.1:{ssd_server.http_port}", body, "v1")
    assert answer["predictions"] == reference


def triton_health(url: str, target: str) -> dict[str, bool]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(url)
    grpc = grpcclient.InferenceServerClient(target)
    try:
        return {
            "http_live": http.is_server_live(),
            "http_ready": http.is_server_ready(),
            "http_model_ready": http.is_model_ready(MODEL_NAME),
            "http_metadata_bytes": http.get_model_metadata(MODEL_NAME)["inputs"][0]["datatype"] == "BYTES",
            "grpc_live": grpc.is_server_live(),
            "grpc_ready": grpc.is_server_ready(),
            "grpc_model_ready": grpc.is_model_ready(MODEL_NAME),
        }
    finally:
        http.close()
        grpc.close()


def test_tritonclient_health_and_metadata(ssd_server):
    health = in_subprocess("triton_health", f"127.0.0.1:{ssd_server.http_port}", ssd_server.grpc_target)
    assert all(health.values()), health


# ----------------------------------------------------------------------------- curl
CURL = shutil.which("curl")


def curl(*args: str) -> dict:
    done = subprocess.run([CURL, "-sS", "--fail-with-body", *args], capture_output=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout[-500:], done.stderr[-500:])
    return orjson.loads(done.stdout)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize(
    "headers",
    [
        [],  # curl's default for --data-binary: application/x-www-form-urlencoded
        ["-H", "Content-Type:"],  # no Content-Type at all
        ["-H", "Content-Type: application/octet-stream"],
        ["-H", "Content-Type: image/png"],
    ],
    ids=["form-urlencoded", "none", "octet-stream", "image-png"],
)
def test_curl_v1_raw_image(ssd_server, images, reference, tmp_path, headers):
    path = tmp_path / "image.png"
    path.write_bytes(images[0])
    answer = curl(*headers, "--data-binary", f"@{path}", ssd_server.url + V1)
    assert answer["predictions"] == reference[:1]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("content_type", [None, "application/json"], ids=["form-urlencoded", "json"])
def test_curl_v1_and_v2_json(ssd_server, images, reference, tmp_path, content_type):
    headers = ["-H", f"Content-Type: {content_type}"] if content_type else []
    v1 = tmp_path / "v1.json"
    v1.write_bytes(orjson.dumps({"instances": [base64.b64encode(im).decode() for im in images]}))
    assert curl(*headers, "--data-binary", f"@{v1}", ssd_server.url + V1)["predictions"] == reference
    v2 = tmp_path / "v2.json"
    data = [base64.b64encode(im).decode() for im in images]
    v2.write_bytes(
        orjson.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": data}]})
    )
    answer = curl(*headers, "--data-binary", f"@{v2}", ssd_server.url + V2)
    arrays = {o["name"]: np.array(o["data"], dtype=object).reshape(o["shape"]) for o in answer["outputs"]}
    check_same_detections(arrays, reference)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_v2_binary_extension(ssd_server, images, reference, tmp_path):
    """A hand-built binary request (JSON header, then uint32 LE length + image file per element)."""
    from predictor.protocol.tensors import serialize_tensor

    raw = serialize_tensor(bytes_tensor(images), "BYTES")
    tensor = {
        "name": "images",
        "datatype": "BYTES",
        "shape": [2],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": False}})
    path = tmp_path / "request.bin"
    path.write_bytes(header + raw)
    answer = curl(
        "-H",
        f"Inference-Header-Content-Length: {len(header)}",
        "--data-binary",
        f"@{path}",
        ssd_server.url + V2,
    )
    arrays = {o["name"]: np.array(o["data"], dtype=object).reshape(o["shape"]) for o in answer["outputs"]}
    check_same_detections(arrays, reference)


# ----------------------------------------------------------------------------- docs/clients.md snippets
CLIENTS_DOC = REPO_ROOT / "docs" / "clients.md"
SAMPLE = REPO_ROOT / "docs" / "samples" / "shapes-0.jpg"
SNIPPET = re.compile(r"<!-- client-snippet: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.DOTALL)


def readme_snippets() -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` of the marked client snippets of docs/clients.md."""
    return {name: (lang, code) for name, lang, code in SNIPPET.findall(CLIENTS_DOC.read_text())}


SNIPPETS = readme_snippets()


def test_the_readme_has_the_client_snippets():
    assert set(SNIPPETS) == {
        "curl-v1-raw",
        "curl-v1-json",
        "curl-v2-json",
        "tritonclient-http",
        "tritonclient-http-json",
        "tritonclient-grpc",
        "kserve-rest",
        "kserve-grpc",
        "predictor-client",
    }


def labels_printed(language: str, stdout: str) -> list[str]:
    """The labels a snippet printed: Python ones print a list, curl ones the server's JSON answer."""
    if language == "python":
        return ast.literal_eval(stdout.strip().splitlines()[-1])
    answer = orjson.loads(stdout)
    if "predictions" in answer:
        return [p["label"] for p in answer["predictions"][0]]
    outputs = {o["name"]: o for o in answer["outputs"]}
    n = outputs["num_detections"]["data"][0]
    k = outputs["detection_labels"]["shape"][1]
    return outputs["detection_labels"]["data"][:k][:n]


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_readme_snippet_runs_as_written(ssd_server, name):
    language, code = SNIPPETS[name]
    if language == "bash" and CURL is None:
        pytest.skip("curl is not installed")
    code = code.replace("localhost:8080", f"127.0.0.1:{ssd_server.http_port}")
    code = code.replace("localhost:8081", ssd_server.grpc_target)
    command = (
        [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    )
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO_ROOT, env=server_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    body = {"instances": [{"b64": base64.b64encode(SAMPLE.read_bytes()).decode()}]}
    expected = httpx.post(ssd_server.url + V1, json=body, timeout=120).json()["predictions"][0]
    assert expected, "the test model must detect something in the sample"
    assert labels_printed(language, done.stdout) == [p["label"] for p in expected]
