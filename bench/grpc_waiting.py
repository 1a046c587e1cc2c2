"""What a gRPC call costs the server before it is given a place to read its message.

gRPC hands a handler a message only whole, so the predictor bounds the ``ModelInfer`` calls that read
theirs at once (:class:`~predictor.serving.admission.CallLimiter`); the others wait for a place or are
refused, their message never asked for. What the server holds of such a call is what the gRPC core
receives on its own: the HTTP/2 stream's flow-control window. This measures it.

A bare ``grpc.aio`` server runs in a child process (no model: the memory measured is the transport's),
with the predictor's :class:`~predictor.serving.admission.GrpcAdmissionInterceptor` and a limiter of one
place, and either the options the predictor's gRPC server adds
(:data:`~predictor.serving.kserve_workarounds.GRPC_SERVER_OPTIONS`: BDP probing off) or gRPC's defaults
(BDP probing on). One call takes the place and never sends its message; then ``--clients`` clients (one
channel each) send a ``--mib`` MiB ``ModelInfer`` at the same moment and

- ``waiting``: all of them wait for the place (``--clients`` waiting places);
- ``refused``: no waiting place: each is refused with RESOURCE_EXHAUSTED at once.

Reported per case: the server's RSS growth (peak over ``--hold_s`` seconds, 10 ms samples, against the
RSS before the clients), per call in KiB, and the answers.

``python -m bench.grpc_waiting [--clients 20] [--mib 40] [--hold_s 4] [--out bench/out/grpc_waiting.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, fmt_table, machine_info, write_json

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CASES = (("waiting", True), ("waiting", False), ("refused", True), ("refused", False))


def serve(port_file: Path, predictor_options: bool, waiting: int) -> None:
    """The child: one reading place, ``waiting`` waiting places; writes its port to ``port_file``."""
    import grpc

    from predictor.serving.admission import ByteBudget, CallLimiter, GrpcAdmissionInterceptor
    from predictor.serving.kserve_workarounds import GRPC_SERVER_OPTIONS

    async def main() -> None:
        async def answer(request: Any, context: Any) -> bytes:
            return b"ok"

        options = [("grpc.max_receive_message_length", 64 * 2**20)]
        options += list(GRPC_SERVER_OPTIONS) if predictor_options else []
        interceptor = GrpcAdmissionInterceptor(ByteBudget(128 * 2**20), CallLimiter(1, waiting))
        server = grpc.aio.server(interceptors=(interceptor,), options=options)
        handler = grpc.unary_unary_rpc_method_handler(answer)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def run_case(case: str, predictor_options: bool, clients: int, mib: int, hold_s: float) -> dict[str, Any]:
    import grpc

    port_file = OUT_DIR / f"grpc_waiting.{os.getpid()}.port"
    port_file.parent.mkdir(parents=True, exist_ok=True)
    port_file.unlink(missing_ok=True)
    waiting = clients if case == "waiting" else 0
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_waiting", "--serve", str(port_file), "--waiting", str(waiting)]
        + ([] if predictor_options else ["--grpc_defaults"])
    )
    release = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        target = f"127.0.0.1:{port_file.read_text()}"
        holder_channel = grpc.insecure_channel(target)

        def never() -> Any:
            release.wait(600)
            yield b"x"

        holder = holder_channel.stream_unary(METHOD).future(never(), timeout=600)
        time.sleep(0.5)
        before = rss_bytes(child.pid)
        payload = os.urandom(mib * 2**20)
        channels = [
            grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
            for _ in range(clients)
        ]
        calls = [ch.unary_unary(METHOD).future(payload, timeout=hold_s + 60) for ch in channels]
        peak = before
        end = time.monotonic() + hold_s
        while time.monotonic() < end:
            peak = max(peak, rss_bytes(child.pid))
            time.sleep(0.01)
        release.set()  # the holder sends its message: the waiting calls read theirs one by one
        answers = Counter()
        for call in calls:
            try:
                call.result()
                answers["OK"] += 1
            except grpc.RpcError as e:
                answers[e.code().name] += 1
        holder.result()
        for ch in [holder_channel, *channels]:
            ch.close()
    finally:
        release.set()
        child.kill()
        child.wait()
        port_file.unlink(missing_ok=True)
    growth = peak - before
    return {
        "case": case,
        "bdp_probe": "off (predictor)" if predictor_options else "on (gRPC default)",
        "clients": clients,
        "mib": mib,
        "rss_before_mib": before / 2**20,
        "rss_growth_mib": growth / 2**20,
        "per_call_kib": growth / clients / 1024,
        "answers": dict(answers),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    rows = [
        (
            r["case"],
            r["bdp_probe"],
            f"{r['clients']} x {r['mib']} MiB",
            f"{r['rss_growth_mib']:.1f}",
            f"{r['per_call_kib']:.0f}",
            " ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items())),
        )
        for r in results
    ]
    headers = ["calls", "BDP probing", "clients x message", "RSS growth (MiB)", "per call (KiB)", "answers"]
    return fmt_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--mib", type=int, default=40)
    parser.add_argument("--hold_s", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "grpc_waiting.json")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child server
    parser.add_argument("--waiting", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--grpc_defaults", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, not args.grpc_defaults, args.waiting)
        return 0
    results = [run_case(case, ours, args.clients, args.mib, args.hold_s) for case, ours in CASES]
    write_json(args.out, {"machine": machine_info(), "results": results})
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
