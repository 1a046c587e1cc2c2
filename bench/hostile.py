"""Hostile bodies: many clients send huge requests at once to a real server; what does its memory do?

Starts ``python -m predictor`` with default settings (the demo model unless ``--model_dir``) on
loopback, waits until it is ready, resets the kernel's peak-RSS mark of the process
(``/proc/PID/clear_refs`` = 5, see proc(5)), then ``--clients`` threads each send one
``--body_mib`` MiB request of ``--form`` at the same moment:

- ``v1-json``: a V1 JSON body (``{"instances": ["AAAA..."]}``: valid JSON whose instance is not an image);
- ``v2-uint8-json``: a V2 JSON body of one ``UINT8`` tensor ``[1, H, W, 3]`` as JSON numbers
  (``255,`` each: the form that costs most once parsed);
- ``grpc-bytes``: a gRPC ``ModelInfer`` whose BYTES element is random bytes (not an image).

Reported: every answer's status (or transport error), the peak RSS
growth over the RSS at ready (the kernel's ``VmHWM`` and a 5 ms sampler, the larger of both), and
whether a normal request is served afterwards.

Pass: every answer is 200, 4xx or 503, no transport error (dropped connection), the normal request
gets 200, and the peak RSS growth is at most ``--max_growth_mib`` (512).

``python -m bench.hostile [--model_dir DIR] [--form v1-json] [--clients 24] [--body_mib 40]
[--out bench/out/hostile.json]``
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    OUT_DIR,
    PeakSampler,
    encode_image,
    fmt_table,
    machine_info,
    process_rss,
    read_hwm,
    reset_hwm,
    start_cpu_server,
    write_json,
)
from predictor.protocol.wire import INPUT_NAME, MODEL_NAME

FORMS = ("v1-json", "v2-uint8-json", "grpc-bytes")


def hostile_body(mib: int) -> bytes:
    """``mib`` MiB of V1 JSON whose one instance is base64 text that does not decode to an image."""
    filler = b"A" * (mib * 2**20 - 20)
    return b'{"instances": ["' + filler + b'"]}'


def uint8_json_body(mib: int) -> bytes:
    """About ``mib`` MiB of V2 JSON: one UINT8 tensor ``[1, H, W, 3]`` of JSON numbers ``255``."""
    width = 2000
    height = max(1, mib * 2**20 // (4 * 3 * width))
    data = b"255," * (height * width * 3 - 1) + b"255"
    head = b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, %d, %d, 3], "data": [' % (
        height,
        width,
    )
    return head + data + b"]}]}"


def post_all(url: str, body: bytes, clients: int, timeout_s: float) -> list[dict[str, Any]]:
    """``clients`` threads POST ``body`` at the same moment; status or error of each, with seconds."""
    import httpx

    def send(client: httpx.Client) -> dict[str, Any]:
        r = client.post(url, content=body, headers={"content-type": "application/json"})
        return {"status": str(r.status_code), "error": r.text[:200]}

    return _at_once(clients, lambda: httpx.Client(timeout=timeout_s), send)


def grpc_all(target: str, mib: int, clients: int, timeout_s: float) -> list[dict[str, Any]]:
    """``clients`` threads (one channel each) send a ``mib`` MiB ``ModelInfer`` of random BYTES at the
    same moment; gRPC status code (``OK`` or e.g. ``RESOURCE_EXHAUSTED``) of each, with seconds."""
    import os

    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    tensor = pb.ModelInferRequest.InferInputTensor(
        name=INPUT_NAME,
        datatype="BYTES",
        shape=[1],
        contents=pb.InferTensorContents(bytes_contents=[os.urandom(mib * 2**20)]),
    )
    message = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor]).SerializeToString()

    def channel() -> Any:
        return grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])

    def send(ch: Any) -> dict[str, Any]:
        infer = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            infer(message, timeout=timeout_s)
            return {"status": "OK", "error": ""}
        except grpc.RpcError as e:
            return {"status": e.code().name, "error": (e.details() or "")[:200]}

    assert pb_grpc  # the service module registers the method names
    return _at_once(clients, channel, send)


def _at_once(clients: int, connect: Any, send: Any) -> list[dict[str, Any]]:
    """``clients`` threads, each with its own connection, call ``send`` at the same moment."""
    barrier = threading.Barrier(clients)
    results: list[dict[str, Any]] = [{} for _ in range(clients)]

    def one(i: int) -> None:
        with connect() as connection:
            barrier.wait(60)
            start = time.perf_counter()
            try:
                results[i] = send(connection)
            except Exception as exc:  # a dropped connection is a result here, not a crash
                results[i] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:200]}
            results[i]["seconds"] = time.perf_counter() - start

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def hostile(
    model_dir: Path,
    clients: int,
    body_mib: int,
    max_growth_mib: float,
    extra_args: list[str],
    log_path: Path,
    form: str = "v1-json",
) -> dict[str, Any]:
    import httpx
    import numpy as np

    body = uint8_json_body(body_mib) if form == "v2-uint8-json" else hostile_body(body_mib)
    server = start_cpu_server(model_dir, log_path, *extra_args)
    try:
        server.wait_ready()
        pid = server.proc.pid
        ready_rss = process_rss(pid)
        hwm_reset = reset_hwm(pid)
        sampler = PeakSampler(pid)
        sampler.start()
        t0 = time.perf_counter()
        if form == "grpc-bytes":
            results = grpc_all(server.grpc_target, body_mib, clients, timeout_s=300)
        else:
            route = "/v2/models/{}/infer" if form == "v2-uint8-json" else "/v1/models/{}:predict"
            results = post_all(server.url + route.format(MODEL_NAME), body, clients, timeout_s=300)
        wall_s = time.perf_counter() - t0
        time.sleep(0.5)  # let the sampler see the tail
        sampled_peak = sampler.stop()
        hwm_peak = read_hwm(pid) if hwm_reset else 0
        after_rss = process_rss(pid)
        image = encode_image(np.full((300, 300, 3), 128, np.uint8), "JPEG")
        normal = httpx.post(
            f"{server.url}/v1/models/{MODEL_NAME}:predict",
            content=image,
            headers={"content-type": "image/jpeg"},
            timeout=60,
        )
        inflight_metric = server.metric("ssd_inflight_request_bytes")
        budget_line = next((x for x in server.log().splitlines() if "resources:" in x), "")
        alive = server.proc.poll() is None
    finally:
        exit_code = server.terminate()

    peak = max(sampled_peak, hwm_peak)
    growth_mib = (peak - ready_rss) / 2**20
    statuses = Counter(r["status"] for r in results)
    ok_grpc = ("OK", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "UNAVAILABLE")
    bad = [
        s
        for s in statuses
        if not (s in ok_grpc or s in ("200", "503") or (s.isdigit() and 400 <= int(s) < 500))
    ]
    failures = []
    if bad:
        failures.append(f"answers other than 200/4xx/503: {bad}")
    if normal.status_code != 200:
        failures.append(f"a normal request afterwards got {normal.status_code}")
    if growth_mib > max_growth_mib:
        failures.append(f"peak RSS grew {growth_mib:.0f} MiB (> {max_growth_mib:g})")
    if not alive:
        failures.append("server died")
    return {
        "machine": machine_info(),
        "model_dir": str(model_dir),
        "form": form,
        "clients": clients,
        "body_mib": body_mib,
        "server_args": extra_args,
        "resources_log_line": budget_line.split("resources: ", 1)[-1],
        "statuses": dict(statuses),
        "examples": {r["status"]: r["error"] for r in results},
        "answer_seconds_max": max(r["seconds"] for r in results),
        "wall_s": wall_s,
        "rss_mib": {
            "ready": ready_rss / 2**20,
            "peak_sampled": sampled_peak / 2**20,
            "peak_vmhwm": hwm_peak / 2**20 if hwm_reset else None,
            "after": after_rss / 2**20,
        },
        "peak_rss_growth_mib": growth_mib,
        "max_growth_mib": max_growth_mib,
        "normal_request_after": normal.status_code,
        "inflight_bytes_after": inflight_metric,
        "server_exit_code": exit_code,
        "failures": failures,
        "passed": not failures,
    }


def markdown(r: dict[str, Any]) -> str:
    """The report as a metric | value table (also what ``bench/RESULTS.md`` shows)."""
    rss = r["rss_mib"]
    rows = [
        (
            "clients x body",
            f"{r['clients']} x {r['body_mib']} MiB" + (f" ({r['form']})" if "form" in r else ""),
        ),
        ("answers", " ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))),
        ("slowest answer (s)", f"{r['answer_seconds_max']:.1f}"),
        ("RSS ready / peak (VmHWM) / peak (sampled) / after (MiB)", _rss_row(rss)),
        ("peak RSS growth (MiB)", f"{r['peak_rss_growth_mib']:.0f} (limit {r['max_growth_mib']:g})"),
        ("normal request afterwards", r["normal_request_after"]),
        ("server resources line", r["resources_log_line"]),
        ("result", "PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"])),
    ]
    return fmt_table(["metric", "value"], rows)


def _rss_row(rss: dict[str, Any]) -> str:
    hwm = "-" if rss["peak_vmhwm"] is None else f"{rss['peak_vmhwm']:.0f}"
    return f"{rss['ready']:.0f} / {hwm} / {rss['peak_sampled']:.0f} / {rss['after']:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", type=Path, default=None, help="default: the shipped demo model")
    parser.add_argument("--form", choices=FORMS, default="v1-json", help="what each client sends")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--body_mib", type=int, default=40)
    parser.add_argument("--max_growth_mib", type=float, default=512.0)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "hostile.json")
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.model_dir is None:
        from predictor.models import DEMO_MODEL_DIR

        args.model_dir = DEMO_MODEL_DIR
    report = hostile(
        args.model_dir,
        args.clients,
        args.body_mib,
        args.max_growth_mib,
        args.server_args,
        args.out.with_name(args.out.stem + "_server.log"),
        args.form,
    )
    print(markdown(report))
    write_json(args.out, report)
    print(f"\nJSON: {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
