"""Fixtures that start real predictor servers (``python -m predictor`` subprocesses on loopback).

``ssd_server`` (session) serves ``random_tiny_model_dir`` as model ``ssd`` with small image caps so that
the bad-input tests stay cheap. :func:`start_server` starts more (overload, shutdown tests).
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "ssd"
#: Caps of the session server (small, so that oversize inputs are cheap to build).
SERVER_MAX_IMAGE_BYTES = 2_000_000
SERVER_TRIM_IDLE_S = 0.3
SERVER_MAX_IMAGE_PIXELS = 4_000_000
SERVER_MAX_BATCH = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    """The test environment without SSD_* overrides, TF quiet, CPU only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSD_")}
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


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
        """``("open" | "hold", model calls waiting at the gate)``."""
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

    def wait_for_waiting(self, calls: int) -> None:
        """Until exactly ``calls`` model calls are blocked at the held gate."""
        wait_until(lambda: self.state()[1] == calls, f"{calls} model call(s) at the gate")


@dataclass
class ServerProcess:
    """A running ``python -m predictor`` with its ports and log file (and its gate, when gated)."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path
    model_name: str = MODEL_NAME
    ready_statuses: list[int] = field(default_factory=list)
    gate: ModelGate | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll ``/v2/models/{name}/ready`` until 200, recording every status seen (0: no answer)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                status = httpx.get(f"{self.url}/v2/models/{self.model_name}/ready", timeout=2).status_code
            except httpx.HTTPError:
                status = 0
            if not self.ready_statuses or self.ready_statuses[-1] != status:
                self.ready_statuses.append(status)
            if status == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()[-4000:]}")

    def metric(self, name: str, labels: str = "") -> float:
        """One Prometheus sample: ``metric("ssd_requests_total", 'protocol="v1",status="200"')``."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
        m = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def start_server(
    model_dir: Path | str,
    log_path: Path,
    *args: str,
    model_name: str = MODEL_NAME,
    gated: bool = False,
    held: bool = False,
    ports: tuple[int, int] | None = None,
) -> ServerProcess:
    """Start ``python -m predictor`` on free loopback ports (not waiting for readiness).

    ``gated``: start it through ``tests/gated_server.py`` instead, whose model calls wait while the
    test holds ``server.gate``; ``held``: the gate is held from the start, so the warm-up waits too
    (the server stays not ready until ``server.gate.release()``); ``ports``: (HTTP, gRPC) to use instead of
    free ones picked here.
    """
    http_port, grpc_port = ports or (free_port(), free_port())
    entry = [str(REPO_ROOT / "tests" / "gated_server.py")] if gated else ["-m", "predictor"]
    env = server_env()
    state_file = log_path.with_suffix(".gate")
    if gated:
        env["GATE_STATE_FILE"] = str(state_file)
        env["GATE_START"] = "hold" if held else "open"
    cmd = [
        sys.executable,
        *entry,
        "--model_dir",
        str(model_dir),
        "--model_name",
        model_name,
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        "--decode_threads",
        "2",
        *args,
    ]
    log_file = open(log_path, "wb")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    gate = ModelGate(proc.stdin, state_file) if gated else None
    return ServerProcess(proc, http_port, grpc_port, log_path, model_name, gate=gate)


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
