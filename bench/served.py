"""End-to-end benchmark: a real ``python -m predictor`` server on loopback, driven over V1, V2 REST and gRPC.

For each protocol and concurrency ``c``, ``c`` asyncio clients each send one-image requests back to back
(round-robin over a fixed set of JPEGs, 500x375 and 1280x720), so the server's dynamic batcher sees up
to ``c`` images at a time. Each cell has a warm-up (one request per client, not timed), then a timed
phase that lasts ``--duration_s`` and at least ``--min_requests`` requests per client. Reported:
images/s (completed requests / timed wall time) and p50/p95/p99 request latency; failed requests are
counted apart and not timed.

The clients share the server's CPU cores: on a 2-core machine that costs the server some throughput
(httpx/grpc clients in one asyncio loop are cheap next to a model call, but not free).

``python -m bench.served --model ssd300 [--protocols v1,v2,grpc] [--concurrency 1,4,16]`` -> table + JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import (
    MODELS,
    OUT_DIR,
    fmt_table,
    machine_info,
    make_test_jpegs,
    model_dir,
    parse_ints,
    percentile,
    write_json,
)
from predictor.protocol.wire import INPUT_NAME, MODEL_NAME

PROTOCOLS = ("v1", "v2", "grpc")
GRPC_MAX_MESSAGE = 64 * 1024 * 1024


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m predictor`` in a subprocess; :meth:`start` waits until the model reports ready."""

    def __init__(self, model_path: Path, log_path: Path, extra_args: list[str]) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.cmd = [
            sys.executable, "-m", "predictor", "--model_dir", str(model_path), "--model_name", MODEL_NAME,
            "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port), *extra_args,
        ]  # fmt: skip
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.log: Any = None
        self.ready_s: float | None = None

    def start(self, timeout_s: float) -> None:
        """Start the server and wait for ``GET /v1/models/ssd`` to answer 200."""
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{self.http_port}/v1/models/{MODEL_NAME}"
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    self.ready_s = time.perf_counter() - t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout_s:.0f} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server (its own process group), SIGKILL after 30 s; close the log."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log is not None:
            self.log.close()
            self.log = None

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


_BUCKET = re.compile(r'^ssd_batch_size_bucket\{.*le="([^"]+)".*\}\s+(\S+)$')


def parse_batch_histogram(text: str) -> dict[str, Any]:
    """``ssd_batch_size`` (images per model call, before padding) from Prometheus text: cumulative
    bucket counts by upper bound, sum and count."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m:
            buckets[float(m.group(1))] = float(m.group(2))
        elif line.startswith("ssd_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("ssd_batch_size_count"):
            count = float(line.split()[-1])
    return {"buckets": buckets, "sum": total, "count": count}


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Model calls, mean batch and padding between two histogram scrapes. The histogram's bounds are the
    detector's bucket sizes (1, 2, 4, ... 32), so a call counted in ``(lo, hi]`` ran ``hi`` images."""
    calls = after["count"] - before["count"]
    images = after["sum"] - before["sum"]
    if calls <= 0 or not after["buckets"]:
        return {"model_calls": calls, "mean_batch": None, "padded_share": None}
    bounds = sorted(b for b in after["buckets"] if b != float("inf"))
    computed, previous, per_bucket = 0.0, 0.0, {}
    for hi in bounds:
        cumulative = after["buckets"][hi] - before["buckets"].get(hi, 0.0)
        n = cumulative - previous
        previous = cumulative
        if n:
            per_bucket[int(hi)] = int(n)
            computed += n * hi
    return {
        "model_calls": int(calls),
        "mean_batch": images / calls,
        "calls_by_bucket": per_bucket,
        "padded_share": 1 - images / computed if computed else None,
    }


def v1_body(jpeg: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()


def v2_body(jpeg: bytes) -> bytes:
    data = [base64.b64encode(jpeg).decode()]
    return json.dumps(
        {"inputs": [{"name": INPUT_NAME, "shape": [1], "datatype": "BYTES", "data": data}]}
    ).encode()


class Clients:
    """Per-protocol request functions over shared connections; each returns when the answer is checked."""

    def __init__(self, server: Server, jpegs: list[bytes], concurrency: int) -> None:
        import grpc
        import httpx
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        base = f"http://127.0.0.1:{server.http_port}"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.http = httpx.AsyncClient(base_url=base, limits=limits, timeout=120.0)
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.grpc_port}",
            options=[("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                     ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE)],
        )  # fmt: skip
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.v1 = [v1_body(j) for j in jpegs]
        self.v2 = [v2_body(j) for j in jpegs]
        self.grpc = [
            pb.ModelInferRequest(
                model_name=MODEL_NAME,
                inputs=[pb.ModelInferRequest.InferInputTensor(
                    name=INPUT_NAME, datatype="BYTES", shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[j]),
                )],
            )
            for j in jpegs
        ]  # fmt: skip

    def request_fn(self, protocol: str) -> Callable[[int], Awaitable[None]]:
        """``async fn(i)`` sending image ``i`` (mod the set) over ``protocol``; raises on a bad answer."""
        headers = {"content-type": "application/json"}

        async def v1(i: int) -> None:
            r = await self.http.post(f"/v1/models/{MODEL_NAME}:predict", content=self.v1[i % len(self.v1)],
                                     headers=headers)  # fmt: skip
            if r.status_code != 200 or "predictions" not in r.json():
                raise RuntimeError(f"V1 {r.status_code}: {r.text[:200]}")

        async def v2(i: int) -> None:
            r = await self.http.post(f"/v2/models/{MODEL_NAME}/infer", content=self.v2[i % len(self.v2)],
                                     headers=headers)  # fmt: skip
            if r.status_code != 200 or not r.json().get("outputs"):
                raise RuntimeError(f"V2 {r.status_code}: {r.text[:200]}")

        async def grpc_(i: int) -> None:
            response = await self.stub.ModelInfer(self.grpc[i % len(self.grpc)], timeout=120.0)
            if not response.outputs:
                raise RuntimeError("gRPC answer without outputs")

        return {"v1": v1, "v2": v2, "grpc": grpc_}[protocol]

    async def batch_histogram(self) -> dict[str, Any]:
        """The server's ``ssd_batch_size`` histogram now (empty when /metrics does not have it)."""
        try:
            r = await self.http.get("/metrics")
        except Exception:
            return {"buckets": {}, "sum": 0.0, "count": 0.0}
        return (
            parse_batch_histogram(r.text)
            if r.status_code == 200
            else {"buckets": {}, "sum": 0.0, "count": 0.0}
        )

    async def close(self) -> None:
        await self.http.aclose()
        await self.channel.close()


async def run_cell(
    send: Callable[[int], Awaitable[None]],
    concurrency: int,
    duration_s: float,
    min_requests: int,
    snapshot: Callable[[], Awaitable[dict]] | None = None,
) -> dict[str, Any]:
    """Warm up (one request per client), then ``concurrency`` closed-loop clients for the timed phase.

    ``snapshot`` (the server's batch-size histogram) is taken when the timed phase starts and ends.
    """
    counter = iter(range(10**9))
    errors: list[str] = []

    async def one() -> float | None:
        t0 = time.perf_counter()
        try:
            await send(next(counter))
        except Exception as e:  # a failed request is counted, not timed
            errors.append(f"{type(e).__name__}: {e}"[:300])
            return None
        return time.perf_counter() - t0

    await asyncio.gather(*(one() for _ in range(concurrency)))
    warm_errors = len(errors)
    before = await snapshot() if snapshot else None
    latencies: list[float] = []
    start = time.perf_counter()
    end = start

    async def client() -> None:
        nonlocal end
        done = 0
        while done < min_requests or time.perf_counter() - start < duration_s:
            latency = await one()
            done += 1
            if latency is not None:
                latencies.append(latency)
                end = max(end, time.perf_counter())

    await asyncio.gather(*(client() for _ in range(concurrency)))
    batching = batch_delta(before, await snapshot()) if snapshot and before else {}
    wall = max(end - start, 1e-9)
    ms = [1e3 * t for t in latencies]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors) - warm_errors,
        "warmup_errors": warm_errors,
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "images_per_s": len(latencies) / wall,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        **batching,
    }


async def run_protocols(server: Server, args: argparse.Namespace, jpegs: list[bytes]) -> list[dict]:
    """Every (protocol, concurrency) cell against one running server."""
    clients = Clients(server, jpegs, max(args.concurrency))
    rows = []
    try:
        for protocol in args.protocols.split(","):
            send = clients.request_fn(protocol)
            for c in args.concurrency:
                cpu0, client0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
                row = {
                    "protocol": protocol,
                    **await run_cell(send, c, args.duration_s, args.min_requests, clients.batch_histogram),
                }
                wall = time.perf_counter() - wall0
                row["server_cores_used"] = (server.cpu_seconds() - cpu0) / wall
                row["client_cores_used"] = (time.process_time() - client0) / wall
                row["load_average_1m"] = os.getloadavg()[0]
                rows.append(row)
                print(
                    f"  {protocol:4s} c={c:3d}: {row['images_per_s']:8.2f} img/s  p50 {row['p50_ms']:8.1f} ms"
                    f"  p95 {row['p95_ms']:8.1f}  p99 {row['p99_ms']:8.1f}"
                    f"  ({row['requests']} req, {row['errors']} errors;"
                    f" cores server {row['server_cores_used']:.2f} client {row['client_cores_used']:.2f},"
                    f" load {row['load_average_1m']:.1f}; mean batch {_num(row.get('mean_batch'))},"
                    f" padded {_num(row.get('padded_share'))})",
                    flush=True,
                )
                if row["first_error"]:
                    print(f"    first error: {row['first_error']}")
    finally:
        await clients.close()
    return rows


def bench_model(name: str, args: argparse.Namespace, jpegs: list[bytes]) -> dict[str, Any]:
    """Start a server for ``name``, run all cells, stop it."""
    path, source = model_dir(name, args.out_dir)
    extra = ["--max_batch_size", str(args.max_batch_size), "--batch_wait_ms", str(args.batch_wait_ms),
             *args.server_args.split()]  # fmt: skip
    server = Server(path, args.out_dir / f"server_{name}.log", extra)
    print(f"\n== {name}: {source}; starting {' '.join(server.cmd[1:])}", flush=True)
    server.start(args.startup_timeout_s)
    print(f"  ready after {server.ready_s:.1f} s", flush=True)
    try:
        rows = asyncio.run(run_protocols(server, args, jpegs))
    finally:
        server.stop()
    return {
        "model_dir": path,
        "source": source,
        "server_cmd": server.cmd,
        "ready_s": server.ready_s,
        "rows": rows,
    }


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


MODEL_TITLES = {"ssd300": "SSD300-VGG16", "demo": "Demo model"}


def markdown(data: dict) -> str:
    """One table per model: images/s, latency percentiles, batching and server cores per cell."""
    settings = data.get("settings", {})
    flags = (
        f"--max_batch_size {settings.get('max_batch_size')} --batch_wait_ms {settings.get('batch_wait_ms')}"
    )
    least = f"at least {settings.get('duration_s')} s and {settings.get('min_requests')} requests per client"
    parts = [f"`{flags}`, {least} and cell."]
    headers = ["protocol", "concurrency", "img/s", "p50 ms", "p95 ms", "p99 ms", "requests", "errors",
               "mean batch", "padded %", "server cores"]  # fmt: skip
    for name, m in data["models"].items():
        rows = [[r["protocol"], r["concurrency"], r["images_per_s"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
                 r["requests"], r["errors"], r.get("mean_batch"), _pct(r.get("padded_share")),
                 r["server_cores_used"]] for r in m["rows"]]  # fmt: skip
        parts.append(f"{MODEL_TITLES.get(name, name)} ({m['source']}; ready after {m['ready_s']:.1f} s):")
        parts.append(fmt_table(headers, rows))
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--concurrency", type=parse_ints, default=[1, 4, 16])
    parser.add_argument("--duration_s", type=float, default=10.0, help="timed seconds per cell, at least")
    parser.add_argument("--min_requests", type=int, default=3, help="timed requests per client, at least")
    parser.add_argument("--images_per_size", type=int, default=4, help="test JPEGs of each size")
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_wait_ms", type=float, default=2.0)
    parser.add_argument("--server_args", default="", help="more server flags, e.g. '--xla'")
    parser.add_argument("--startup_timeout_s", type=float, default=600.0)
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default OUT_DIR/served.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.out_dir / "served.json"
    jpegs = make_test_jpegs(args.images_per_size)
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy(), "models": {}}
    data["jpeg_bytes"] = [len(j) for j in jpegs]
    for name in args.models.split(","):
        data["models"][name] = bench_model(name, args, jpegs)
        write_json(out, data)
    print("\n" + markdown(data))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
