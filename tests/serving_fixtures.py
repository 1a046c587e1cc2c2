"""Fixtures that start real predictor servers (``python -m predictor`` subprocesses on loopback).

``ssd_server`` (session) serves ``random_tiny_model_dir`` as model ``ssd`` with small image caps so that
the bad-input tests stay cheap. :func:`start_server` starts more (overload, shutdown tests) through the
package's harness, :mod:`predictor.tools.localserver`.
"""

from __future__ import annotations

import base64
import io
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from predictor.protocol.wire import MODEL_NAME
from predictor.tools import localserver
from predictor.tools.localserver import LocalServer

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Caps of the session server (small, so that oversize inputs are cheap to build).
SERVER_MAX_IMAGE_BYTES = 2_000_000
SERVER_TRIM_IDLE_S = 0.3
SERVER_MAX_IMAGE_PIXELS = 4_000_000
SERVER_MAX_BATCH = 32
SERVER_GRPC_MESSAGE_BYTES = 8 * 2**20


def server_env() -> dict[str, str]:
    """The test environment without SSD_* overrides, TF quiet, CPU only."""
    return localserver.server_env(cpu_only=True)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` until true. The deadline only guards against a hang (it fails the test with
    ``what``); no outcome depends on how fast the machine is."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class ModelGate:
    """The test's end of ``tests/gated_server.py``'s gate: hold or release the server's model calls."""

    stdin: IO[bytes]
    state_file: Path

    def state(self) -> tuple[str, int]:
        """``("open" | "hold" | "slow", model calls waiting at the gate)``."""
        try:
            word, waiting = self.state_file.read_text().split()
        except (FileNotFoundError, ValueError):
            return "starting", 0
        return word, int(waiting)

    def _command(self, line: str, expected: str) -> None:
        self.stdin.write(line.encode() + b"\n")
        self.stdin.flush()
        wait_until(lambda: self.state()[0] == expected, f"the gate to be {expected}")

    def hold(self) -> None:
        """Later model calls wait (returns once the server has taken the command)."""
        self._command("hold", "hold")

    def release(self) -> None:
        self._command("release", "open")

    def slow(self, seconds: float) -> None:
        """Open, and every later model call first sleeps ``seconds`` (a slower model)."""
        self._command(f"slow {seconds}", "slow")

    def wait_for_waiting(self, calls: int) -> None:
        """Until exactly ``calls`` model calls are blocked at the held gate."""
        wait_until(lambda: self.state()[1] == calls, f"{calls} model call(s) at the gate")


@dataclass
class ServerProcess(LocalServer):
    """A server of :mod:`predictor.tools.localserver` with its gate, when gated."""

    gate: ModelGate | None = None


def start_server(
    model_dir: Path | str | None,
    log_path: Path,
    *args: str,
    model_name: str = MODEL_NAME,
    gated: bool = False,
    held: bool = False,
    ports: tuple[int, int] | None = None,
) -> ServerProcess:
    """Start ``python -m predictor`` on free loopback ports (not waiting for readiness).

    ``gated``: start it through ``tests/gated_server.py`` instead, whose model calls wait while the
    test holds ``server.gate``, one call in flight unless ``args`` say otherwise (the gate counts the
    calls it holds; the default would run two on this CPU); ``held``: the gate is held from the start,
    so the warm-up waits too
    (the server stays not ready until ``server.gate.release()``); ``ports``: (HTTP, gRPC) to use instead of
    free ones picked here.
    """
    env = server_env()
    state_file = log_path.with_suffix(".gate")
    if gated:
        env["GATE_STATE_FILE"] = str(state_file)
        env["GATE_START"] = "hold" if held else "open"
        if "--model_calls_in_flight" not in args:
            args = ("--model_calls_in_flight", "1", *args)
    server = localserver.start_server(
        model_dir,
        log_path,
        "--decode_threads",
        "2",
        *args,
        model_name=model_name,
        entry=[str(REPO_ROOT / "tests" / "gated_server.py")] if gated else localserver.PREDICTOR_ENTRY,
        env=env,
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
        server_class=ServerProcess,
        ports=ports,
    )
    if gated:
        server.gate = ModelGate(server.proc.stdin, state_file)
    return server


@pytest.fixture(scope="session")
def ssd_server(random_tiny_model_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """The tiny random model served on loopback (REST + gRPC), ready."""
    log_path = tmp_path_factory.mktemp("ssd_server") / "server.log"
    server = start_server(
        random_tiny_model_dir,
        log_path,
        "--max_batch_size",
        str(SERVER_MAX_BATCH),
        "--batch_wait_ms",
        "10",
        "--max_image_bytes",
        str(SERVER_MAX_IMAGE_BYTES),
        "--max_image_pixels",
        str(SERVER_MAX_IMAGE_PIXELS),
        "--malloc_trim_idle_s",  # short, so the heap is trimmed between tests too, not only in its own test
        str(SERVER_TRIM_IDLE_S),
        # 8 MiB gRPC messages and a 128 MiB budget (fixed, not sized from the CI container's memory):
        # 128 / 8 + 1 = 17 ModelInfer calls at once (the concurrency tests send 16; with 64 MiB messages
        # the server would take 3, predictor.serving.admission.grpc_concurrency)
        "--grpc_max_receive_message_length",
        str(SERVER_GRPC_MESSAGE_BYTES),
        "--max_inflight_bytes",
        str(128 * 2**20),
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="session")
def direct_detector(random_tiny_model_dir):
    """The same model as ``ssd_server``, called directly in the test process."""
    from predictor.ssd.detector import Detector

    return Detector.from_dir(str(random_tiny_model_dir), max_batch_size=SERVER_MAX_BATCH)


# ----------------------------------------------------------------------------- image helpers
def encode_image(image: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **save_args)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def forge_png_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (CRC fixed, pixel data unchanged)."""
    import struct
    import zlib

    assert png[12:16] == b"IHDR"
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def forge_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose SOF header claims ``width x height`` (both < 65536)."""
    import struct

    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise ValueError("no SOF marker")


def forge_gif_size(gif: bytes, width: int, height: int) -> bytes:
    """A GIF whose logical screen and first image descriptor claim ``width x height`` (< 65536)."""
    import struct

    data = bytearray(gif)
    data[6:10] = struct.pack("<HH", width, height)
    at = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while at < len(data) and data[at] == 0x21:  # skip extension blocks
        at += 2
        while at < len(data) and data[at]:
            at += data[at] + 1
        at += 1
    if at < len(data) and data[at] == 0x2C:
        data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


@pytest.fixture(scope="module")
def client(ssd_server):
    """An HTTP client of the session server (REST); a module may define its own with other limits."""
    import httpx

    with httpx.Client(base_url=ssd_server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def stub(ssd_server):
    """A gRPC stub (KServe's V2 service) of the session server."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(ssd_server.grpc_target)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
