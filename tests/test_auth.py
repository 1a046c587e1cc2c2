"""The optional bearer-token check (``--auth_token_file``, :mod:`predictor.serving.auth`).

Unit tests pin :class:`~predictor.serving.auth.TokenCheck` and the exempt routes; the rest runs a real
server with a token file on loopback and calls it as clients do: httpx (V1, V2 REST, health, metrics),
raw gRPC stubs, tritonclient HTTP and gRPC with their ``headers=`` argument, and ``ssd-detect`` with
``--token-file`` / ``$SSD_DETECT_TOKEN`` over V1, V2 and gRPC.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from serving_fixtures import MODEL_NAME, REPO_ROOT, b64, encode_image, server_env, start_server, wait_until

from predictor.serving import auth

TOKEN = "tok-3f9a1c0e7b"
OTHER = "tok-rotated-55"
V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
SERVICE = "/inference.GRPCInferenceService/"


# ----------------------------------------------------------------------------- unit
def test_token_check_accepts_only_bearer_with_a_listed_token(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"\n  {TOKEN}  \n{OTHER}\n")
    check = auth.TokenCheck(path)
    assert check.allows(f"Bearer {TOKEN}")
    assert check.allows(f"bearer {OTHER}")  # the scheme is case-insensitive (RFC 7235)
    for refused in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer "):
        assert not check.allows(refused), refused


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_a_token_file_without_a_token_is_refused(tmp_path, content):
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(auth.AuthConfigError, match="holds no token"):
        auth.TokenCheck(path)
    with pytest.raises(auth.AuthConfigError, match="cannot read"):
        auth.TokenCheck(tmp_path / "missing")


def test_a_changed_token_file_is_reread_and_a_broken_one_ignored(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(TOKEN)
    now = [0.0]
    check = auth.TokenCheck(path, clock=lambda: now[0])
    path.write_text(OTHER + "\n")
    assert check.allows(f"Bearer {TOKEN}"), "re-read at most once per RELOAD_INTERVAL_S"
    now[0] += auth.RELOAD_INTERVAL_S
    assert check.allows(f"Bearer {OTHER}") and not check.allows(f"Bearer {TOKEN}")
    path.write_text("")  # a rotation half done: keep what works
    now[0] += auth.RELOAD_INTERVAL_S
    assert check.allows(f"Bearer {OTHER}")


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/", True),
        ("/metrics", True),
        ("/v2/health/live", True),
        ("/v2/health/ready", True),
        ("/v2/models/ssd/ready", True),
        ("/v2/models/ssd/versions/1/ready", True),
        ("/v1/models/ssd", True),  # V1 model readiness
        ("/v1/models/ssd:predict", False),
        ("/v2/models/ssd/infer", False),
        ("/v2/models/ssd", False),  # metadata
        ("/v2", False),
        ("/v1/models", False),
        ("/v2/repository/index", False),
        ("/metrics/x", False),
        ("/v2/models/ssd/ready/infer", False),
    ],
)
def test_exempt_paths(path, exempt):
    assert auth.exempt_path(path) is exempt


# ----------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def auth_server(random_tiny_model_dir, token_file, tmp_path_factory):
    server = start_server(
        random_tiny_model_dir,
        tmp_path_factory.mktemp("auth_server") / "server.log",
        "--auth_token_file",
        str(token_file),
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def png(shapes_images) -> bytes:
    return encode_image(shapes_images[0])


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rest_calls(png: bytes) -> list[tuple[str, str, dict]]:
    v2 = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(png)]}]}
    return [
        ("POST", V1, {"content": png}),
        ("POST", V1, {"json": {"instances": [{"b64": b64(png)}]}}),
        ("POST", V2, {"json": v2}),
        ("GET", f"/v2/models/{MODEL_NAME}", {}),
    ]


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text[:300]
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"error": auth.REFUSAL}


def test_rest_routes_need_the_token(auth_server, png):
    before = auth_server.metric("ssd_requests_total", 'protocol="v1",status="401"')
    with httpx.Client(base_url=auth_server.url, timeout=120) as client:
        for method, path, kwargs in rest_calls(png):
            for headers in (
                {},
                bearer("wrong"),
                {"Authorization": TOKEN},
                {"Authorization": f"Basic {TOKEN}"},
            ):
                assert_refused(client.request(method, path, headers=headers, **kwargs))
            ok = client.request(method, path, headers=bearer(), **kwargs)
            assert ok.status_code == 200, (path, ok.text[:300])
    after = auth_server.metric("ssd_requests_total", 'protocol="v1",status="401"')
    assert after - before == 8  # 2 V1 calls x 4 refusals, counted like every other answer
    assert auth_server.metric("ssd_rejected_requests_total", 'reason="unauthenticated"') >= 16


def raw_post_head(server, content_length: int, headers: str = "") -> str:
    """The answer's head to a POST that declares ``content_length`` bytes and sends none."""
    import socket

    with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as sock:
        sock.sendall(
            f"POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Length: {content_length}\r\n{headers}\r\n".encode()
        )
        return sock.recv(65536).decode("latin-1").split("\r\n\r\n")[0].lower()


def test_a_refused_body_is_not_read(auth_server):
    """The 401 comes before admission reads or counts the body: a declared 1 TiB body gets 401 at once
    (with the token the same request gets admission's 413)."""
    refused = raw_post_head(auth_server, 2**40)
    assert refused.startswith("http/1.1 401") and "www-authenticate: bearer" in refused, refused
    admitted = raw_post_head(auth_server, 2**40, f"Authorization: Bearer {TOKEN}\r\n")
    assert admitted.startswith("http/1.1 413"), admitted


def test_health_and_metrics_need_no_token(auth_server):
    with httpx.Client(base_url=auth_server.url, timeout=30) as client:
        for path in (
            "/",
            "/v2/health/live",
            "/v2/health/ready",
            f"/v2/models/{MODEL_NAME}/ready",
            "/metrics",
        ):
            assert client.get(path).status_code == 200, path
        assert client.get(f"/v1/models/{MODEL_NAME}").json() == {"name": MODEL_NAME, "ready": True}


def grpc_call(target: str, method: str, request: bytes, metadata: tuple = ()) -> tuple[str, bytes]:
    """One raw unary call (serialized request in, serialized response out): (status code name, bytes)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(SERVICE + method)
        try:
            return "OK", call(request, metadata=metadata, timeout=120)
        except grpc.RpcError as e:
            return e.code().name, e.details().encode()


def test_grpc_methods_need_the_token_but_health(auth_server, png):
    from predictor.protocol import grpc_v2

    tensor = grpc_v2.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=grpc_v2.InferTensorContents(bytes_contents=[png])
    )
    infer = grpc_v2.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor]).SerializeToString()
    target = auth_server.grpc_target
    good = (("authorization", f"Bearer {TOKEN}"),)
    for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", TOKEN),)):
        assert grpc_call(target, "ModelInfer", infer, metadata) == ("UNAUTHENTICATED", auth.REFUSAL.encode())
        assert grpc_call(target, "ModelMetadata", b"\n\x03ssd", metadata)[0] == "UNAUTHENTICATED"
        assert grpc_call(target, "ServerLive", b"", metadata)[0] == "OK"
        assert grpc_call(target, "ModelReady", b"\n\x03ssd", metadata)[0] == "OK"
    # the refusal names the served model version, as REST's 401 does in its header
    version = httpx.get(f"{auth_server.url}/v2/health/live", timeout=10).headers["x-model-version"]
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(SERVICE + "ModelInfer")(infer, timeout=60)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(refused.value.trailing_metadata())["x-model-version"] == version
    code, body = grpc_call(target, "ModelInfer", infer, good)
    assert code == "OK"
    assert grpc_v2.ModelInferResponse.FromString(body).model_name == MODEL_NAME
    assert grpc_call(target, "ModelMetadata", b"\n\x03ssd", good)[0] == "OK"


# ----------------------------------------------------------------------------- tritonclient
def triton_http(url: str, png: bytes, headers: dict | None) -> object:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    inp = httpclient.InferInput("images", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png], dtype=object))
    try:
        return client.infer(MODEL_NAME, [inp], headers=headers).as_numpy("num_detections").tolist()
    except InferenceServerException as e:
        return f"refused: {e.status()}"
    finally:
        client.close()


def triton_grpc(target: str, png: bytes, headers: dict | None) -> object:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(target)
    inp = grpcclient.InferInput("images", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png], dtype=object))
    try:
        live = client.is_server_live()  # health needs no token
        return live, client.infer(MODEL_NAME, [inp], headers=headers).as_numpy("num_detections").tolist()
    except InferenceServerException as e:
        return f"refused: {e.status()}"
    finally:
        client.close()


def in_subprocess(function: str, *args: object) -> object:
    """``function(*args)`` of this module in a fresh interpreter: tritonclient.grpc and KServe register
    the same protobuf names, so one process cannot import both (see tests/test_client_interop.py)."""
    code = (
        "import pickle, sys; sys.path.insert(0, 'tests'); import test_auth as t; "
        f"args = pickle.load(sys.stdin.buffer); pickle.dump(t.{function}(*args), sys.stdout.buffer)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(args), capture_output=True, cwd=REPO_ROOT,
        env=server_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return pickle.loads(done.stdout)


def test_tritonclient_http_sends_the_token_as_a_header(auth_server, png):
    assert triton_http(auth_server.url, png, None) == "refused: 401"
    assert triton_http(auth_server.url, png, bearer("wrong")) == "refused: 401"
    counts = triton_http(auth_server.url, png, bearer())
    assert isinstance(counts, list) and len(counts) == 1


def test_tritonclient_grpc_sends_the_token_as_metadata(auth_server, png):
    target = auth_server.grpc_target
    assert in_subprocess("triton_grpc", target, png, None) == "refused: StatusCode.UNAUTHENTICATED"
    live, counts = in_subprocess("triton_grpc", target, png, {"authorization": f"Bearer {TOKEN}"})
    assert live is True and len(counts) == 1


# ----------------------------------------------------------------------------- ssd-detect
@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc"])
def test_ssd_detect_token_file_and_env(auth_server, token_file, png, protocol, tmp_path, monkeypatch, capsys):
    from predictor.client import cli

    image = tmp_path / "one.png"
    image.write_bytes(png)
    url = auth_server.grpc_target if protocol == "grpc" else auth_server.url
    base = ["--protocol", protocol, "--url", url, "--model", MODEL_NAME, "--retries", "0", str(image)]
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    assert cli.main(base) == 1
    refused = capsys.readouterr()
    assert ("UNAUTHENTICATED" if protocol == "grpc" else "HTTP 401: unauthenticated") in refused.err
    assert cli.main([*base, "--token-file", str(token_file)]) == 0
    assert '"detections"' in capsys.readouterr().out
    monkeypatch.setenv(cli.TOKEN_ENV, TOKEN)
    assert cli.main(base) == 0
    assert '"detections"' in capsys.readouterr().out


def test_ssd_detect_unreadable_token_file_is_a_usage_error(tmp_path, capsys):
    from predictor.client import cli

    (tmp_path / "a.png").write_bytes(b"x")
    assert cli.main(["--token-file", str(tmp_path / "missing"), str(tmp_path / "a.png")]) == 2
    assert "--token-file: cannot read" in capsys.readouterr().err


def test_the_endpoint_never_shows_its_token():
    from predictor.client.transports import Endpoint

    assert TOKEN not in repr(Endpoint("http://x", "ssd", token=TOKEN))


# ----------------------------------------------------------------------------- rotation and start-up
def test_a_rotated_secret_takes_effect_without_a_restart(auth_server, token_file):
    try:
        token_file.write_text(OTHER + "\n")

        def rotated() -> bool:
            r = httpx.get(f"{auth_server.url}/v2/models/{MODEL_NAME}", headers=bearer(OTHER), timeout=10)
            return r.status_code == 200

        wait_until(rotated, "the new token to be accepted", timeout=30)
        r = httpx.get(f"{auth_server.url}/v2/models/{MODEL_NAME}", headers=bearer(TOKEN), timeout=10)
        assert r.status_code == 401
    finally:
        token_file.write_text(TOKEN + "\n")
        time.sleep(auth.RELOAD_INTERVAL_S * 1.5)
        wait_until(
            lambda: (
                httpx.get(
                    f"{auth_server.url}/v2/models/{MODEL_NAME}", headers=bearer(), timeout=10
                ).status_code
                == 200
            ),
            "the original token again",
            timeout=30,
        )


def test_the_server_refuses_to_start_with_an_empty_token_file(random_tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    server = start_server(random_tiny_model_dir, tmp_path / "server.log", "--auth_token_file", str(empty))
    assert server.proc.wait(300) == 1
    assert f"--auth_token_file {empty} holds no token" in server.log()
    assert "Traceback" not in server.log()
    assert os.path.exists(empty)


def test_the_helm_test_script_sends_the_mounted_token(auth_server, token_file, capsys):
    """helm/ssd-detector/files/smoke_test.py (the `helm test` pod) with the chart's --token-file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "smoke_test", REPO_ROOT / "helm/ssd-detector/files/smoke_test.py"
    )
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    base = ["--url", auth_server.url, "--model", MODEL_NAME, "--timeout", "60"]
    assert smoke.main(base) == 1  # 401 is not retried
    assert "status 401" in capsys.readouterr().err
    assert smoke.main([*base, "--token-file", str(token_file)]) == 0
    assert "ok:" in capsys.readouterr().out
