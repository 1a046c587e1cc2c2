"""``ssd-detect`` (predictor/client/) and ``predictor/client/draw.py`` against a real predictor on loopback.

The server is the session ``ssd_server`` fixture (tiny random model, plenty of detections). The
Kubernetes API for ``--isvc`` is a small local HTTP server answering InferenceService objects, reached
through a kubeconfig file by the real ``kubernetes`` client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from predictor.client.cli import build_parser, endpoint_from_args, main
from predictor.client.draw import class_color, draw_detections, draw_path, text_color
from predictor.client.errors import ClientError
from predictor.client.files import InputImage, collect_images
from predictor.client.transports import Endpoint, grpc_target
from predictor.protocol.detections import detections_from_v2
from predictor.protocol.tensors import split_bytes_elements

REPO = Path(__file__).resolve().parents[1]
DETECTION_KEYS = {"label", "class_id", "score", "xmin", "ymin", "xmax", "ymax"}


# ----------------------------------------------------------------------------------- helpers
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(server, *args: str, protocol: str = "v1", out: Path) -> int:
    """``main`` in-process against ``server`` (the protocol's URL chosen here)."""
    url = server.grpc_target if protocol == "grpc" else server.url
    argv = ["--protocol", protocol, "--url", url, "--model", server.model_name, "-o", str(out), *args]
    return main(argv)


def assert_close(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Same detections up to float noise of differently composed server batches."""
    assert [d["class_id"] for d in a] == [d["class_id"] for d in b]
    for x, y in zip(a, b, strict=True):
        assert x["label"] == y["label"]
        assert x["score"] == pytest.approx(y["score"], abs=2e-4)
        for k in ("xmin", "ymin", "xmax", "ymax"):
            assert x[k] == pytest.approx(y[k], abs=0.05)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, shapes_images) -> Path:
    """Six shapes images: PNG and JPEG, some in a subfolder, plus files the folder scan must skip."""
    root = tmp_path_factory.mktemp("client_images")
    (root / "sub").mkdir()
    for i, array in enumerate(shapes_images):
        img = Image.fromarray(array)
        if i % 2:
            img.save(root / f"img{i}.png")
        else:
            img.save(root / "sub" / f"img{i}.jpg", quality=92)
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    (root / ".hidden.png").write_bytes((root / "img1.png").read_bytes())
    return root


# ------------------------------------------------------------------------------ inputs (no server)
def test_collect_images_scans_folders_recursively_and_keeps_explicit_files(image_dir, tmp_path):
    extra = tmp_path / "img1.png"  # same name as one in the folder: renamed for --draw
    extra.write_bytes((image_dir / "img1.png").read_bytes())
    found = collect_images([image_dir, extra, image_dir / "notes.txt"])
    names = [str(item.name) for item in found]
    assert names == [
        "img1.png", "img3.png", "img5.png", "sub/img0.jpg", "sub/img2.jpg", "sub/img4.jpg",
        "img1-2.png", "notes.txt",
    ]  # fmt: skip
    assert found[0].path == image_dir / "img1.png"
    with pytest.raises(ClientError, match="no such file"):
        collect_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClientError, match="no image files"):
        collect_images([tmp_path / "empty"])


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert main(["--url", "http://127.0.0.1:9", str(tmp_path / "nope.jpg")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ protocols
def test_v1_v2_and_grpc_give_identical_detections(ssd_server, image_dir, tmp_path):
    results = {}
    for protocol in ("v1", "v2", "grpc"):
        out = tmp_path / f"{protocol}.jsonl"
        rc = run_cli(
            ssd_server, "--score-threshold", "0.3", "--max-detections", "7", "--batch-size", "2",
            "--host-header", "ssd.demo.example.com", str(image_dir), protocol=protocol, out=out,
        )  # fmt: skip
        assert rc == 0, protocol
        results[protocol] = read_jsonl(out)
    assert results["v1"] == results["v2"] == results["grpc"]

    rows = results["v1"]
    assert [Path(r["file"]).name for r in rows] == [
        f"img{i}.{'png' if i % 2 else 'jpg'}" for i in (1, 3, 5, 0, 2, 4)
    ]
    assert sum(len(r["detections"]) for r in rows) > 0
    for row in rows:
        with Image.open(row["file"]) as img:
            assert (row["width"], row["height"]) == img.size
        assert len(row["detections"]) <= 7
        scores = [d["score"] for d in row["detections"]]
        assert scores == sorted(scores, reverse=True) and all(s >= 0.3 for s in scores)
        for det in row["detections"]:
            assert set(det) == DETECTION_KEYS
            assert isinstance(det["class_id"], int) and 1 <= det["class_id"] <= 6 and det["label"]
            assert 0 <= det["xmin"] <= det["xmax"] <= row["width"]
            assert 0 <= det["ymin"] <= det["ymax"] <= row["height"]


def test_class_filter_and_nms_threshold_on_every_protocol(ssd_server, image_dir, tmp_path):
    everything = tmp_path / "all.jsonl"
    assert run_cli(ssd_server, "--score-threshold", "0.3", str(image_dir), out=everything) == 0
    all_labels = {d["label"] for row in read_jsonl(everything) for d in row["detections"]}
    keep = sorted(all_labels)[:2]
    assert len(all_labels) > len(keep), "the filter should have something to remove"
    results = {}
    for protocol in ("v1", "v2", "grpc"):
        out = tmp_path / f"{protocol}.jsonl"
        rc = run_cli(
            ssd_server, "--score-threshold", "0.3", "--classes", ",".join(keep), "--nms-threshold", "0.3",
            str(image_dir), protocol=protocol, out=out,
        )  # fmt: skip
        assert rc == 0, protocol
        results[protocol] = read_jsonl(out)
    assert results["v1"] == results["v2"] == results["grpc"]
    labels = {d["label"] for row in results["v1"] for d in row["detections"]}
    assert labels and labels <= set(keep)


def test_uint8_pixels_map_every_flag_like_encoded_images(ssd_server, image_dir, tmp_path):
    """``--uint8`` (decoded here, sent as UINT8 tensors: binary extension over V2 REST, raw contents over
    gRPC) with every control flag gives what V1 gives for the encoded files; images of different sizes
    in one batch go as one tensor per size."""
    flags = ["--score-threshold", "0.3", "--max-detections", "4", "--nms-threshold", "0.6"]
    flags += ["--classes", "circle,square,3", "--batch-size", "3"]
    results = {}
    for protocol, extra in (("v1", []), ("v2", ["--uint8"]), ("grpc", ["--uint8"])):
        out = tmp_path / f"{protocol}.jsonl"
        assert run_cli(ssd_server, *flags, *extra, str(image_dir), protocol=protocol, out=out) == 0, protocol
        results[protocol] = read_jsonl(out)
    assert results["v1"] == results["v2"] == results["grpc"]
    dets = [d for row in results["v1"] for d in row["detections"]]
    assert dets and {d["class_id"] for d in dets} <= {1, 2, 3}
    assert all(len(row["detections"]) <= 4 for row in results["v1"])
    # the flags are not dropped on the way: without them the answers differ
    plain = tmp_path / "plain.jsonl"
    assert run_cli(ssd_server, "--uint8", str(image_dir), protocol="v2", out=plain) == 0
    assert read_jsonl(plain) != results["v2"]


def test_uint8_needs_a_v2_protocol(image_dir, capsys):
    assert main(["--uint8", "--protocol", "v1", str(image_dir)]) == 2
    assert "--uint8 sends decoded pixels as a V2 tensor: use --protocol v2 or grpc" in capsys.readouterr().err


def test_folder_with_concurrency_as_a_subprocess(ssd_server, image_dir, tmp_path):
    sequential = tmp_path / "sequential.jsonl"
    assert run_cli(ssd_server, str(image_dir), out=sequential) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "predictor.client", "--url", ssd_server.url, "--model", ssd_server.model_name,
         "--concurrency", "4", "--progress", str(image_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = read_jsonl(sequential)
    assert [r["file"] for r in rows] == [r["file"] for r in expected]  # input order, not completion order
    for row, ref in zip(rows, expected, strict=True):
        assert (row["width"], row["height"]) == (ref["width"], ref["height"])
        assert_close(row["detections"], ref["detections"])
    assert "6/6" in proc.stderr  # the progress bar (forced: stderr is not a terminal here)


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc"])
def test_bad_file_is_reported_and_the_others_answered(ssd_server, image_dir, tmp_path, capsys, protocol):
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is not a JPEG")
    good = [image_dir / "img1.png", image_dir / "sub" / "img0.jpg"]
    out = tmp_path / "out.jsonl"
    # One request of three images: the server refuses it, the client resends them one by one.
    rc = run_cli(
        ssd_server, "--batch-size", "3", str(good[0]), str(bad), str(good[1]), protocol=protocol, out=out
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{bad}: " in err and "not an image" in err  # the server's message, on the bad file
    assert "1 of 3 images failed" in err
    rows = read_jsonl(out)
    assert [r["file"] for r in rows] == [str(good[0]), str(bad), str(good[1])]
    assert "not an image" in rows[1]["error"] and "detections" not in rows[1]
    assert rows[1]["width"] is None
    assert all(isinstance(r["detections"], list) and "error" not in r for r in (rows[0], rows[2]))


def test_unknown_model_and_unreachable_server_fail_every_file(ssd_server, image_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert (
        main(["--url", ssd_server.url, "--model", "nope", "-o", str(out), str(image_dir / "img1.png")]) == 1
    )
    assert "HTTP 404" in capsys.readouterr().err
    closed = f"127.0.0.1:{client_free_port()}"
    for protocol in ("v1", "grpc"):
        argv = ["--protocol", protocol, "--url", closed, "--retries", "0", "--timeout", "5", "-o", str(out)]
        assert main([*argv, str(image_dir / "img1.png"), str(image_dir / "img3.png")]) == 1
        assert "2 of 2 images failed" in capsys.readouterr().err
        assert all("error" in r for r in read_jsonl(out))


def client_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- drawing
def test_draw_writes_labelled_copies(ssd_server, tmp_path, shapes_images):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(shapes_images[0]).save(src / "a.png")
    rotated = Image.fromarray(shapes_images[1])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    rotated.save(src / "b.jpg", quality=95, exif=exif)
    out, draw_dir = tmp_path / "out.jsonl", tmp_path / "drawn"
    rc = run_cli(
        ssd_server,
        "--draw",
        str(draw_dir),
        "--max-detections",
        "3",
        "--score-threshold",
        "0",
        str(src),
        out=out,
    )
    assert rc == 0
    rows = {Path(r["file"]).name: r for r in read_jsonl(out)}
    assert sorted(p.name for p in draw_dir.iterdir()) == ["a.png", "b.jpg"]

    original = Image.open(src / "a.png").convert("RGB")
    drawn = Image.open(draw_dir / "a.png")
    assert drawn.format == "PNG" and drawn.size == original.size == (
        rows["a.png"]["width"],
        rows["a.png"]["height"],
    )
    _assert_box_drawn(
        np.asarray(original), np.asarray(drawn.convert("RGB")), rows["a.png"]["detections"], tol=0
    )

    h, w = shapes_images[1].shape[:2]
    drawn_jpeg = Image.open(draw_dir / "b.jpg")
    assert drawn_jpeg.format == "JPEG" and drawn_jpeg.size == (h, w)  # EXIF orientation applied
    assert (rows["b.jpg"]["width"], rows["b.jpg"]["height"]) == (h, w)
    oriented = np.rot90(shapes_images[1], k=-1)
    _assert_box_drawn(oriented, np.asarray(drawn_jpeg.convert("RGB")), rows["b.jpg"]["detections"], tol=60)


def _assert_box_drawn(before: np.ndarray, after: np.ndarray, detections: list[dict], tol: int) -> None:
    """The best box's bottom edge is mostly its class colour; the image changed only where drawn."""
    assert detections, "the random model should detect something"
    assert before.shape == after.shape
    best = detections[0]
    x0, x1 = round(best["xmin"]), round(best["xmax"]) - 1
    y1 = round(best["ymax"]) - 1
    edge = after[y1, x0 : x1 + 1].astype(int)
    on_colour = np.abs(edge - np.array(class_color(best["class_id"]))).max(axis=1) <= tol
    assert on_colour.mean() > 0.5
    changed = np.abs(after.astype(int) - before.astype(int)).max(axis=2) > max(tol, 0)
    assert changed.any() and changed.mean() < 0.5


def test_draw_detections_outline_caption_and_colours():
    image = Image.new("RGB", (200, 120), (128, 128, 128))
    dets = [
        {"label": "circle", "class_id": 1, "score": 0.97, "xmin": 20, "ymin": 40, "xmax": 80, "ymax": 100},
        {
            "label": "star",
            "class_id": 4,
            "score": 0.5,
            "xmin": 120.4,
            "ymin": 2.2,
            "xmax": 190.6,
            "ymax": 60.0,
        },
    ]
    out = draw_detections(image, dets, line_width=2)
    assert image.getpixel((20, 70)) == (128, 128, 128)  # the input is not modified
    assert out.size == image.size and out.mode == "RGB"
    px = np.asarray(out)
    circle, star = class_color(1), class_color(4)
    assert circle != star
    assert tuple(px[70, 20]) == tuple(px[70, 21]) == tuple(px[70, 79]) == tuple(px[99, 50]) == circle
    assert tuple(px[70, 50]) == (128, 128, 128)  # inside the box: untouched
    # The caption tag sits on the box's top edge, above it (there is room): box colour, text on it.
    on_circle = (px[:40] == circle).all(axis=2)
    rows, cols = np.nonzero(on_circle)
    assert rows.max() == 39 and 8 <= 40 - rows.min() <= 30 and cols.min() == 20
    tag = px[rows.min() : 40, cols.min() : cols.max() + 1].astype(int)
    assert (np.abs(tag - text_color(circle)).max(axis=2) < 40).mean() > 0.05  # the text
    # No room above the star box (ymin 2): its tag goes inside, along the top edge.
    inside_top = px[4:12, 122:180]
    assert (inside_top == star).all(axis=2).mean() > 0.3 and (inside_top == text_color(star)).all(
        axis=2
    ).any()
    assert draw_detections(image, []).tobytes() == image.tobytes()
    assert draw_path(InputImage(Path("x/p.bmp"), Path("p.bmp")), Path("d"), "BMP") == (
        Path("d/p.png"),
        "PNG",
    )


# ------------------------------------------------------------------------------- --isvc (kube API)
class FakeKubeApi:
    """A local HTTP server answering ``GET .../inferenceservices/NAME`` from ``objects``."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append((self.path, self.headers.get("Authorization")))
                parts = self.path.split("?")[0].strip("/").split("/")
                # apis/serving.kserve.io/v1beta1/namespaces/NS/inferenceservices/NAME
                obj = None
                if parts[:3] == ["apis", "serving.kserve.io", "v1beta1"] and len(parts) == 7:
                    obj = api.objects.get((parts[4], parts[6]))
                status, body = (
                    (200, obj) if obj else (404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, namespace: str, name: str, url: str | None, ready: str = "True", reason: str = "") -> None:
        condition = {"type": "Ready", "status": ready, **({"reason": reason} if reason else {})}
        status: dict[str, Any] = {"conditions": [condition]}
        if url:
            status["url"] = url
        self.objects[(namespace, name)] = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }

    def kubeconfig(self, path: Path, namespace: str = "demo") -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "test-token"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )  # JSON is YAML
        return path


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi()
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


def test_isvc_url_from_the_kubernetes_api(ssd_server, kube_api, image_dir, tmp_path, capsys):
    kube_api.add("demo", "ssd", ssd_server.url)
    kubeconfig = kube_api.kubeconfig(tmp_path / "kubeconfig")
    out = tmp_path / "out.jsonl"
    image = str(image_dir / "img1.png")
    # No --url: status.url is the server; no --namespace: the context's.
    assert main(["--isvc", "ssd", "--kubeconfig", str(kubeconfig), "-o", str(out), image]) == 0
    assert read_jsonl(out)[0]["detections"] is not None
    assert kube_api.requests[-1] == (
        "/apis/serving.kserve.io/v1beta1/namespaces/demo/inferenceservices/ssd",
        "Bearer test-token",
    )

    # With --url (an ingress), the isvc's host becomes the Host header.
    kube_api.add("prod", "detector", "http://detector.prod.example.com")
    args = build_parser().parse_args(
        ["--isvc", "detector", "-n", "prod", "--kubeconfig", str(kubeconfig), "--url", ssd_server.url, image]
    )
    assert endpoint_from_args(args) == Endpoint(ssd_server.url, "ssd", "detector.prod.example.com", 60.0)

    kube_api.add("demo", "cold", None, ready="False", reason="RevisionMissing")
    assert main(["--isvc", "cold", "--kubeconfig", str(kubeconfig), image]) == 2
    assert (
        "InferenceService demo/cold is not Ready (Ready=False, reason: RevisionMissing)"
        in capsys.readouterr().err
    )
    assert main(["--isvc", "ghost", "--kubeconfig", str(kubeconfig), image]) == 2
    assert "InferenceService demo/ghost: not found" in capsys.readouterr().err
    kube_api.add("demo", "nourl", None)
    assert main(["--isvc", "nourl", "--kubeconfig", str(kubeconfig), image]) == 2
    assert "has no status.url" in capsys.readouterr().err


# --------------------------------------------------------------------------------- normalising
def test_v2_tensors_normalise_like_v1():
    """Padding rows past num_detections are dropped; rounding matches the V1 endpoint's."""
    arrays = {
        "num_detections": np.array([2, 0], np.int32),
        "detection_boxes": np.array(
            [[[1.004, 2.005, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], [[0] * 4] * 2], np.float32
        ),
        "detection_scores": np.array([[0.912345, 0.5], [0, 0]], np.float32),
        "detection_classes": np.array([[3, 1], [0, 0]], np.int32),
        "detection_labels": np.array([[b"triangle", b"circle"], [b"", b""]], dtype=object),
    }
    per_image = detections_from_v2(arrays, 2)
    assert per_image[1] == []
    first = per_image[0][0]
    assert first["label"] == "triangle" and first["class_id"] == 3
    assert first["score"] == float(np.round(np.float64(np.float32(0.912345)), 4))
    assert first["xmin"] == float(np.round(np.float64(np.float32(1.004)), 2))
    raw = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ab", b"", b"xyz"))
    assert split_bytes_elements(raw) == [b"ab", b"", b"xyz"]
    assert grpc_target("https://ssd.example.com") == ("ssd.example.com:443", True)
    assert grpc_target("localhost:8081") == ("localhost:8081", False)
