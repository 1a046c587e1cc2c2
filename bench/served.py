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
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import threads
from bench.common import (
    MODELS,
    OUT_DIR,
    Clients,
    fmt_table,
    machine_info,
    make_test_jpegs,
    model_dir,
    parse_ints,
    run_cell,
    start_bench_server,
    write_json,
)
from predictor.tools.localserver import LocalServer

PROTOCOLS = ("v1", "v2", "grpc")


async def run_protocols(server: LocalServer, args: argparse.Namespace, jpegs: list[bytes]) -> list[dict]:
    """Every (protocol, concurrency) cell against one running server."""
    clients = Clients(server, jpegs, max(args.concurrency))
    rows = []
    try:
        for protocol in args.protocols.split(","):
            send = clients.request_fn(protocol)
            for c in args.concurrency:
                pid = server.proc.pid
                threads0, machine0 = threads.thread_cpu(pid), threads.machine_cpu()
                cpu0, client0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
                row = {
                    "protocol": protocol,
                    **await run_cell(send, c, args.duration_s, args.min_requests, clients.batch_histogram),
                }
                wall = time.perf_counter() - wall0
                row["server_cores_used"] = (server.cpu_seconds() - cpu0) / wall
                row["client_cores_used"] = (time.process_time() - client0) / wall
                # Warm-up requests included (one per client): CPU per image over every request of the cell.
                row["threads"] = threads.profile_delta(
                    pid, threads0, threads.thread_cpu(pid), machine0, threads.machine_cpu(),
                    row["requests"] + row["errors"] + c,
                )  # fmt: skip
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
    print(f"\n== {name}: {source}; starting the server", flush=True)
    server = start_bench_server(path, args.out_dir / f"server_{name}.log", extra, args.startup_timeout_s)
    print(f"  command: {' '.join(server.cmd[1:])}", flush=True)
    print(f"  ready after {server.ready_s:.1f} s", flush=True)
    try:
        rows = asyncio.run(run_protocols(server, args, jpegs))
    finally:
        server.terminate()
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
    profile = threads_markdown(data)
    if profile:
        parts += ["Server CPU ms per image by thread (`bench/threads.py`) at the top concurrency, and the "
                  "share of the machine's cores left idle meanwhile:", profile]  # fmt: skip
    return "\n\n".join(parts)


def threads_markdown(data: dict) -> str:
    """Per-thread-group CPU ms per image and the idle share, for each model and protocol at the highest
    concurrency measured (rows without a thread profile are left out)."""
    rows = []
    for name, m in data["models"].items():
        top = max((r["concurrency"] for r in m["rows"]), default=None)
        for r in m["rows"]:
            t = r.get("threads")
            if r["concurrency"] != top or not t:
                continue
            ms = t["cpu_ms_per_image"]
            idle = t.get("machine_idle_share")
            rows.append([name, r["protocol"], r["concurrency"], *(ms[g] for g in threads.GROUPS),
                         sum(ms.values()), None if idle is None else 100 * idle])  # fmt: skip
    if not rows:
        return ""
    headers = ["model", "protocol", "concurrency", *threads.GROUPS, "total", "idle %"]
    return fmt_table(headers, rows)


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
