"""One local-server harness: ``python -m predictor`` in a subprocess on free loopback ports.

Used by the capacity planner (:mod:`predictor.tools.plan`, at run time), the benchmarks (``bench/``)
and the tests' fixtures (``tests/serving_fixtures.py``)::

    server = start_server(model_dir, Path("out/server.log"), "--max_batch_size", "8")
    try:
        server.wait_ready()
        httpx.post(f"{server.url}/v1/models/{server.model_name}:predict", json=...)
    finally:
        server.terminate()

The server's output goes to ``log_path``; readiness is KServe's ``/v2/models/<name>/ready``
(503 while the model loads and warms up, 200 after). Nothing here imports pytest, KServe or TensorFlow.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from predictor.protocol.wire import MODEL_NAME

#: The command after the interpreter: run the package's entry point.
PREDICTOR_ENTRY: tuple[str, ...] = ("-m", "predictor")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(base: Mapping[str, str] | None = None, *, cpu_only: bool = False) -> dict[str, str]:
    """``base`` (default ``os.environ``) without ``SSD_*`` overrides (so that only the command line
    configures the server), TensorFlow's C++ logging quiet and Python unbuffered; ``cpu_only``: no GPU
    unless ``CUDA_VISIBLE_DEVICES`` is already set."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SSD_")}
    if cpu_only:
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class LocalServer:
    """A running server with its ports, command and log file."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path
    model_name: str = MODEL_NAME
    cmd: list[str] = field(default_factory=list)
    #: Whether it runs in a process group of its own (then :meth:`terminate` signals the whole group).
    own_session: bool = False
    #: Every distinct readiness status :meth:`wait_ready` saw, in order (0: no answer).
    ready_statuses: list[int] = field(default_factory=list)
    #: Seconds from the spawn to the first 200 of the readiness probe (set by :meth:`wait_ready`).
    ready_s: float | None = None
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """The whole server log so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 180.0, interval_s: float = 0.1) -> None:
        """Poll ``/v2/models/{name}/ready`` until 200, recording every status seen.

        Raises:
          RuntimeError: the server exited; TimeoutError: not ready after ``timeout`` seconds (the
          server is left running: :meth:`terminate` it). Both carry the end of the log.
        """
        import httpx

        url = f"{self.url}/v2/models/{self.model_name}/ready"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail(60)}")
                try:
                    status = client.get(url).status_code
                except httpx.HTTPError:
                    status = 0
                if not self.ready_statuses or self.ready_statuses[-1] != status:
                    self.ready_statuses.append(status)
                if status == 200:
                    self.ready_s = time.perf_counter() - self.started_at
                    return
                time.sleep(interval_s)
        raise TimeoutError(f"server not ready after {timeout:g} s:\n{self.log_tail(60)}")

    def metric(self, name: str, labels: str = "") -> float:
        """One Prometheus sample: ``metric("ssd_requests_total", 'protocol="v1",status="200"')`` (0.0
        when absent)."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
        m = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (the whole group when it has its own session), SIGKILL after ``timeout`` seconds;
        returns the exit status."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.proc.wait(10)

    def _signal(self, sig: int) -> None:
        try:
            if self.own_session:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass


def start_server(
    model_dir: Path | str | None,
    log_path: Path,
    *args: str,
    model_name: str = MODEL_NAME,
    entry: Sequence[str] = PREDICTOR_ENTRY,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    own_session: bool = False,
    server_class: type[LocalServer] = LocalServer,
    ports: tuple[int, int] | None = None,
) -> LocalServer:
    """Spawn ``python <entry> [--model_dir DIR] --model_name NAME --http_port P --grpc_port Q *args`` on
    free loopback ports (not waiting for readiness: :meth:`LocalServer.wait_ready`).

    ``model_dir`` None: the server's default (the demo model shipped in the package). ``env`` default:
    :func:`server_env`. ``entry``: another script taking the server's flags (the tests' gated server).
    ``own_session``: a process group of its own, so that :meth:`LocalServer.terminate` reaches its children
    and a Ctrl-C of the caller does not. ``server_class``: a subclass to return (its extra fields keep
    their defaults). ``ports``: (HTTP, gRPC) to use instead of free ones picked here.
    """
    http_port, grpc_port = ports or (free_port(), free_port())
    cmd = [
        sys.executable,
        *entry,
        *(["--model_dir", str(model_dir)] if model_dir is not None else []),
        "--model_name",
        model_name,
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        *args,
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started_at = time.perf_counter()
    with log_path.open("wb") as log_file:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(server_env() if env is None else env),
            stdin=stdin,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )
    return server_class(
        proc,
        http_port,
        grpc_port,
        log_path,
        model_name,
        cmd=cmd,
        own_session=own_session,
        started_at=started_at,
    )


def start_ready_server(
    model_dir: Path | str | None,
    log_path: Path,
    *args: str,
    timeout_s: float = 600.0,
    interval_s: float = 0.1,
    **kwargs: Any,
) -> LocalServer:
    """:func:`start_server` (same arguments), then :meth:`LocalServer.wait_ready`; a server that does not
    become ready is terminated before the error propagates."""
    server = start_server(model_dir, log_path, *args, **kwargs)
    try:
        server.wait_ready(timeout_s, interval_s)
    except BaseException:
        server.terminate()
        raise
    return server
