"""Soak test: a real ``python -m predictor`` server on loopback fed a few thousand mixed requests.

The mix (deterministic for a given ``--seed``): valid V1 requests (every instance form, raw bodies,
batches of 1-4 images, with and without ``parameters``), V2 REST and gRPC (``bytes_contents`` and
``raw_input_contents``), invalid requests (bad base64, non-image bytes, truncated JPEG, wrong JSON shape,
wrong V2 datatype, too many instances, bad parameters, gRPC garbage), large requests (a 1920x1080 JPEG, a
body over ``--max_request_bytes``) and concurrent bursts, sent by ``--concurrency`` client threads.

Reported: requests served, counts by HTTP status and gRPC code, 5xx (server errors; gRPC ``INTERNAL``,
``UNAVAILABLE`` ... count too), requests whose answer was not the expected one (valid -> 200 with
predictions/outputs, invalid -> 4xx), p50/p99 latency of the valid requests, and the server's RSS
(its process and children): when it became ready, after each tenth of the requests, at the last answer,
at the end (after ``--settle_s`` seconds with no request, the time an idle server has to give its heap
back: ``--malloc_trim_idle_s``, 2 s by default) and the peak of samples taken every 0.5 s while the
requests ran. Exit status 1 when there is any 5xx, transport error or unexpected answer, or when RSS
grew by more than ``--max_rss_growth_pct`` from ready to the end (the whole run counts: nothing is
excluded as warm-up; ready and end are both taken with the server idle).

``python -m bench.soak [--model_dir DIR] [--requests 3000] [--concurrency 8] [--max_seconds 600]
[--settle_s 5] [--out bench/out/soak.json]`` -> table + JSON. Loopback only; bounded in requests and time.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    OUT_DIR,
    PeakSampler,
    encode_image,
    fmt_table,
    machine_info,
    percentile,
    process_rss,
    start_cpu_server,
    write_json,
)
from predictor.protocol.base64text import encode_base64 as b64
from predictor.protocol.tensors import pack_bytes_elements
from predictor.protocol.wire import INPUT_NAME, MODEL_NAME

GRPC_SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"}
BURST_SIZE = 16
#: (kind, weight) of the schedule; "burst" expands into BURST_SIZE concurrent valid requests.
MIX: tuple[tuple[str, int], ...] = (
    ("v1_json", 28),
    ("v1_raw", 10),
    ("v2_rest", 14),
    ("grpc", 14),
    ("v1_large", 3),
    ("grpc_large", 1),
    ("bad_base64", 3),
    ("not_image", 3),
    ("truncated_jpeg", 3),
    ("wrong_json_shape", 3),
    ("v2_wrong_datatype", 3),
    ("too_many_instances", 2),
    ("bad_parameters", 2),
    ("grpc_not_image", 3),
    ("oversize_body", 1),
    ("burst", 1),
)
INVALID_KINDS = {
    "bad_base64",
    "not_image",
    "truncated_jpeg",
    "wrong_json_shape",
    "v2_wrong_datatype",
    "too_many_instances",
    "bad_parameters",
    "grpc_not_image",
    "oversize_body",
}


@dataclass
class Result:
    kind: str
    protocol: str  # v1 | v2 | grpc
    valid: bool
    status: str  # HTTP status ("200"), gRPC code name ("OK") or "error" (transport)
    latency_s: float
    ok: bool  # the answer is the expected one
    detail: str = ""


# ----------------------------------------------------------------------------- payloads
class Payloads:
    """Encoded test images, built once."""

    def __init__(self, seed: int, max_batch_size: int, max_request_bytes: int) -> None:
        from PIL import Image

        from predictor.datasets.shapes import EVAL_SEED, generate_sample

        samples = [generate_sample(EVAL_SEED, i).image for i in range(6)]
        self.jpegs = [encode_image(img, "JPEG", quality=90) for img in samples[:3]]
        self.pngs = [encode_image(img, "PNG") for img in samples[3:]]
        self.images = self.jpegs + self.pngs
        big = np.asarray(Image.fromarray(samples[0]).resize((1920, 1080), Image.BILINEAR))
        self.large_jpeg = encode_image(big, "JPEG", quality=90)
        self.truncated_jpeg = self.jpegs[0][: len(self.jpegs[0]) // 2]
        self.max_batch_size = max_batch_size
        self.oversize_body = b'{"instances": ["' + b"A" * (max_request_bytes + 1024) + b'"]}'
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def pick(self, n: int) -> list[bytes]:
        with self.lock:
            return [self.rng.choice(self.images) for _ in range(n)]

    def randint(self, a: int, b: int) -> int:
        with self.lock:
            return self.rng.randint(a, b)

    def v1_instance(self, data: bytes, form: int) -> Any:
        text = b64(data)
        if form == 0:
            return text
        if form == 1:
            return {"b64": text}
        if form == 2:
            return {"image": {"b64": text}}
        if form == 3:
            return {"image_bytes": {"b64": text}}
        if form == 4:
            return "data:image/jpeg;base64," + text
        return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")  # URL-safe, no padding


# ----------------------------------------------------------------------------- client
class Client:
    """Sends one request of a kind and checks the answer; thread-safe (one httpx client per thread)."""

    def __init__(self, url: str, grpc_target: str, payloads: Payloads, timeout_s: float) -> None:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        self.grpc, self.pb = grpc, pb
        self.url, self.p, self.timeout_s = url, payloads, timeout_s
        self.channel = grpc.insecure_channel(
            grpc_target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.local = threading.local()

    def close(self) -> None:
        self.channel.close()

    def _http(self):
        import httpx

        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(timeout=self.timeout_s)
        return self.local.client

    # --- request builders: (protocol, valid, sender) where sender() -> (status, ok, detail)
    def send(self, kind: str) -> Result:
        builder = getattr(self, "_" + kind)
        protocol, valid, sender = builder()
        start = time.perf_counter()
        try:
            status, ok, detail = sender()
        except Exception as exc:  # transport failure: reported, never fatal to the soak
            status, ok, detail = "error", False, f"{type(exc).__name__}: {exc}"[:300]
        return Result(kind, protocol, valid, status, time.perf_counter() - start, ok, detail)

    def _post(self, path: str, n_expected: int | None, key: str, **kwargs):
        def sender():
            r = self._http().post(self.url + path, **kwargs)
            status = str(r.status_code)
            if n_expected is None:  # invalid request: any 4xx
                return status, 400 <= r.status_code < 500, "" if r.status_code < 500 else r.text[:300]
            if r.status_code != 200:
                return status, False, r.text[:300]
            body = r.json()
            if key == "predictions":
                preds = body.get("predictions")
                ok = (
                    isinstance(preds, list)
                    and len(preds) == n_expected
                    and all(isinstance(p, list) for p in preds)
                )
            else:
                outs = {o["name"]: o for o in body.get("outputs", [])}
                ok = "num_detections" in outs and outs["num_detections"]["shape"] == [n_expected]
            return status, ok, "" if ok else json.dumps(body)[:300]

        return sender

    def _v1_json(self, images: list[bytes] | None = None):
        images = images or self.p.pick(self.p.randint(1, 4))
        body: dict[str, Any] = {"instances": [self.p.v1_instance(im, self.p.randint(0, 5)) for im in images]}
        if self.p.randint(0, 2) == 0:
            body["parameters"] = {"score_threshold": 0.3, "max_detections": 20}
        return (
            "v1",
            True,
            self._post(f"/v1/models/{MODEL_NAME}:predict", len(images), "predictions", json=body),
        )

    def _v1_raw(self):
        image = self.p.pick(1)[0]
        ctype = "image/jpeg" if image[:2] == b"\xff\xd8" else "image/png"
        return (
            "v1",
            True,
            self._post(
                f"/v1/models/{MODEL_NAME}:predict",
                1,
                "predictions",
                content=image,
                headers={"content-type": ctype},
            ),
        )

    def _v1_large(self):
        return self._v1_json([self.p.large_jpeg])

    def _v2_body(self, images: list[bytes], datatype: str = "BYTES") -> dict[str, Any]:
        return {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "datatype": datatype,
                    "shape": [len(images)],
                    "data": [b64(i) for i in images],
                }
            ]
        }

    def _v2_rest(self):
        images = self.p.pick(self.p.randint(1, 4))
        body = self._v2_body(images)
        if self.p.randint(0, 2) == 0:
            body["parameters"] = {"score_threshold": 0.3, "max_detections": 20}
        return "v2", True, self._post(f"/v2/models/{MODEL_NAME}/infer", len(images), "outputs", json=body)

    def _grpc_call(self, images: list[bytes], valid: bool, raw: bool = False):
        pb = self.pb
        if raw:
            tensor = pb.ModelInferRequest.InferInputTensor(
                name=INPUT_NAME, datatype="BYTES", shape=[len(images)]
            )
            raw_bytes = pack_bytes_elements(images)
            request = pb.ModelInferRequest(
                model_name=MODEL_NAME, inputs=[tensor], raw_input_contents=[raw_bytes]
            )
        else:
            tensor = pb.ModelInferRequest.InferInputTensor(
                name=INPUT_NAME,
                datatype="BYTES",
                shape=[len(images)],
                contents=pb.InferTensorContents(bytes_contents=images),
            )
            request = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])

        def sender():
            try:
                response = self.stub.ModelInfer(request, timeout=self.timeout_s)
            except self.grpc.RpcError as exc:
                code = exc.code().name
                return (
                    code,
                    (not valid and code == "INVALID_ARGUMENT"),
                    "" if not valid else str(exc.details())[:300],
                )
            if not valid:
                return "OK", False, "invalid request answered OK"
            names = {o.name: o for o in response.outputs}
            ok = "num_detections" in names and list(names["num_detections"].shape) == [len(images)]
            return "OK", ok, "" if ok else str(response)[:300]

        return "grpc", valid, sender

    def _grpc(self):
        return self._grpc_call(self.p.pick(self.p.randint(1, 4)), True, raw=self.p.randint(0, 1) == 1)

    def _grpc_large(self):
        return self._grpc_call([self.p.large_jpeg], True)

    def _grpc_not_image(self):
        return self._grpc_call([self.p.pick(1)[0], b"definitely not an image"], False)

    # --- invalid REST requests
    def _v1_invalid(self, **kwargs):
        return "v1", False, self._post(f"/v1/models/{MODEL_NAME}:predict", None, "", **kwargs)

    def _bad_base64(self):
        return self._v1_invalid(json={"instances": [b64(self.p.pick(1)[0]), "!!not*base64%%"]})

    def _not_image(self):
        return self._v1_invalid(json={"instances": [b64(b"hello, this is plain text and not an image" * 4)]})

    def _truncated_jpeg(self):
        return self._v1_invalid(json={"instances": [{"b64": b64(self.p.truncated_jpeg)}]})

    def _wrong_json_shape(self):
        shapes = [{"instances": {"b64": "AAAA"}}, {"inputs": "x"}, [1, 2, 3], {"instances": [[1, 2], 3]}]
        return self._v1_invalid(json=shapes[self.p.randint(0, len(shapes) - 1)])

    def _bad_parameters(self):
        body = {"instances": [b64(self.p.pick(1)[0])], "parameters": {"score_threshold": 2.5}}
        return self._v1_invalid(json=body)

    def _too_many_instances(self):
        small = self.p.pngs[0]
        return self._v1_invalid(json={"instances": [b64(small)] * (self.p.max_batch_size + 1)})

    def _oversize_body(self):
        return self._v1_invalid(content=self.p.oversize_body, headers={"content-type": "application/json"})

    def _v2_wrong_datatype(self):
        body = {"inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [2], "data": [0.5, 1.5]}]}
        return "v2", False, self._post(f"/v2/models/{MODEL_NAME}/infer", None, "", json=body)


# ----------------------------------------------------------------------------- soak
def build_schedule(n_requests: int, seed: int) -> list[str]:
    """Request kinds totalling ``n_requests`` requests (a burst counts BURST_SIZE)."""
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    schedule: list[str] = []
    total = 0
    while total < n_requests:
        kind = rng.choices(kinds, weights)[0]
        size = BURST_SIZE if kind == "burst" else 1
        if total + size > n_requests:
            kind, size = "v1_json", 1
        schedule.append(kind)
        total += size
    return schedule


def run_phase(client: Client, kinds: list[str], concurrency: int, deadline: float) -> list[Result]:
    """Send ``kinds`` with ``concurrency`` threads; bursts fire BURST_SIZE requests at once.

    Each burst gets its own BURST_SIZE threads: two client threads may start bursts at the same
    time, and a shared pool would leave both barriers short of threads.
    """

    def one(kind: str) -> list[Result]:
        if time.monotonic() > deadline:
            return []
        if kind == "burst":
            barrier = threading.Barrier(BURST_SIZE)

            def fire(_: int) -> Result:
                barrier.wait(60)
                result = client.send("v1_json")
                result.kind = "burst"
                return result

            with ThreadPoolExecutor(BURST_SIZE) as burst_pool:
                return list(burst_pool.map(fire, range(BURST_SIZE)))
        return [client.send(kind)]

    with ThreadPoolExecutor(concurrency) as pool:
        return [r for rs in pool.map(one, kinds) for r in rs]


def summarize(results: list[Result]) -> dict[str, Any]:
    http = Counter(r.status for r in results if r.protocol != "grpc")
    grpc_codes = Counter(r.status for r in results if r.protocol == "grpc")
    server_errors = sum(n for s, n in http.items() if s.isdigit() and int(s) >= 500) + sum(
        n for s, n in grpc_codes.items() if s in GRPC_SERVER_ERRORS
    )
    valid_lat = [r.latency_s * 1000 for r in results if r.valid and r.ok]
    by_kind: dict[str, dict[str, Any]] = {}
    for r in results:
        k = by_kind.setdefault(r.kind, {"count": 0, "statuses": Counter(), "unexpected": 0})
        k["count"] += 1
        k["statuses"][r.status] += 1
        k["unexpected"] += 0 if r.ok else 1
    return {
        "requests": len(results),
        "valid_requests": sum(r.valid for r in results),
        "invalid_requests": sum(not r.valid for r in results),
        "http_status_counts": dict(sorted(http.items())),
        "grpc_code_counts": dict(sorted(grpc_codes.items())),
        "server_errors_5xx": server_errors,
        "transport_errors": http.get("error", 0) + grpc_codes.get("error", 0),
        "unexpected": sum(not r.ok for r in results),
        "latency_valid_ms": {
            "p50": percentile(valid_lat, 50),
            "p99": percentile(valid_lat, 99),
            "max": max(valid_lat, default=float("nan")),
        },
        "by_kind": {k: {**v, "statuses": dict(v["statuses"])} for k, v in sorted(by_kind.items())},
        "unexpected_examples": [asdict(r) for r in results if not r.ok][:10],
    }


def soak(
    model_dir: Path,
    n_requests: int = 3000,
    concurrency: int = 8,
    max_seconds: float = 600.0,
    max_rss_growth_pct: float = 5.0,
    max_batch_size: int = 32,
    max_request_bytes: int = 8 * 1024 * 1024,
    seed: int = 0,
    log_path: Path | None = None,
    server_args: tuple[str, ...] = (),
    settle_s: float = 5.0,
) -> dict[str, Any]:
    """Start a server, run the soak, stop the server; the report (``report["passed"]``)."""
    log_path = log_path or OUT_DIR / "soak_server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    payloads = Payloads(seed, max_batch_size, max_request_bytes)
    schedule = build_schedule(n_requests, seed)
    t0 = time.monotonic()
    server = start_cpu_server(
        model_dir,
        log_path,
        "--max_batch_size",
        str(max_batch_size),
        "--max_request_bytes",
        str(max_request_bytes),
        *server_args,
    )
    try:
        server.wait_ready()
        startup_s = time.monotonic() - t0
        rss = {"ready": process_rss(server.proc.pid)}
        client = Client(server.url, server.grpc_target, payloads, timeout_s=60.0)
        # Ten phases cut at request counts; RSS after each ("mid" after half, "end" after all).
        cum, cum_at = 0, []
        for kind in schedule:
            cum += BURST_SIZE if kind == "burst" else 1
            cum_at.append(cum)
        fracs = [i / 10 for i in range(1, 11)]
        cuts = [next(i for i, c in enumerate(cum_at) if c >= n_requests * f - 1e-9) + 1 for f in fracs]
        results: list[Result] = []
        timeline: list[dict[str, Any]] = []
        t_run = time.monotonic()
        deadline = t0 + max_seconds
        sampler = PeakSampler(server.proc.pid, interval_s=0.5)
        try:
            prev = 0
            with sampler:
                for frac, cut in zip(fracs, cuts, strict=True):
                    results += run_phase(client, schedule[prev:cut], concurrency, deadline)
                    prev = cut
                    sample = process_rss(server.proc.pid)
                    timeline.append({"requests": len(results), "rss_mib": sample / 2**20})
                    if frac == 0.5:
                        rss["mid"] = sample
            rss["last_answer"] = sample
        finally:
            client.close()
        run_s = time.monotonic() - t_run
        time.sleep(settle_s)  # an idle server's heap trim (--malloc_trim_idle_s) happens in this
        rss["end"] = process_rss(server.proc.pid)
        alive = server.proc.poll() is None
    finally:
        exit_code = server.terminate()
    wall_s = time.monotonic() - t0

    report = summarize(results)
    growth = 100.0 * (rss["end"] - rss["ready"]) / rss["ready"]
    peak = max([rss["ready"], sampler.peak, *(t["rss_mib"] * 2**20 for t in timeline)])
    report.update(
        {
            "model_dir": str(model_dir),
            "requested": n_requests,
            "concurrency": concurrency,
            "stopped_by_max_seconds": len(results) < n_requests,
            "server_startup_s": startup_s,
            "run_s": run_s,
            "wall_s": wall_s,
            "requests_per_s": len(results) / run_s if run_s else float("nan"),
            "rss_mib": {k: v / 2**20 for k, v in rss.items()},
            "rss_growth_from_ready_pct": growth,
            "rss_growth_to_last_answer_pct": 100.0 * (rss["last_answer"] - rss["ready"]) / rss["ready"],
            "rss_peak_sampled_mib": peak / 2**20,
            "settle_s": settle_s,
            "rss_timeline": timeline,
            "max_rss_growth_pct": max_rss_growth_pct,
            "server_alive_at_end": alive,
            "server_exit_code": exit_code,
            "server_log": str(log_path),
        }
    )
    failures = []
    if report["server_errors_5xx"]:
        failures.append(f"{report['server_errors_5xx']} server errors (5xx)")
    if report["transport_errors"]:
        failures.append(f"{report['transport_errors']} transport errors")
    if report["unexpected"]:
        failures.append(f"{report['unexpected']} unexpected answers")
    if growth > max_rss_growth_pct:
        failures.append(f"RSS grew {growth:.1f}% from ready to the end (> {max_rss_growth_pct}%)")
    if not alive:
        failures.append("server died")
    report["failures"] = failures
    report["passed"] = not failures
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a metric | value table and a table by request kind (what ``bench/RESULTS.md`` shows)."""
    lat, rss = report["latency_valid_ms"], report["rss_mib"]
    rows = [
        ("requested / client threads", f"{report['requested']} / {report['concurrency']}"),
        ("requests served", report["requests"]),
        ("valid / invalid", f"{report['valid_requests']} / {report['invalid_requests']}"),
        ("HTTP status counts", json.dumps(report["http_status_counts"])),
        ("gRPC code counts", json.dumps(report["grpc_code_counts"])),
        ("5xx (server errors)", report["server_errors_5xx"]),
        ("transport errors", report["transport_errors"]),
        ("unexpected answers", report["unexpected"]),
        ("p50 / p99 latency, valid (ms)", f"{lat['p50']:.1f} / {lat['p99']:.1f}"),
        (
            f"RSS ready / mid / last answer / end, {report['settle_s']:g} s later (MiB)",
            f"{rss['ready']:.1f} / {rss['mid']:.1f} / {rss['last_answer']:.1f} / {rss['end']:.1f}",
        ),
        ("RSS peak while serving, sampled every 0.5 s (MiB)", f"{report['rss_peak_sampled_mib']:.1f}"),
        ("RSS growth from ready to the last answer", f"{report['rss_growth_to_last_answer_pct']:+.2f}%"),
        (
            "RSS growth from ready to end",
            f"{report['rss_growth_from_ready_pct']:+.2f}% (limit {report['max_rss_growth_pct']:g}%)",
        ),
        ("RSS timeline (MiB)", " ".join(f"{t['rss_mib']:.0f}" for t in report["rss_timeline"])),
        ("run / wall time (s)", f"{report['run_s']:.1f} / {report['wall_s']:.1f}"),
        ("requests/s", f"{report['requests_per_s']:.1f}"),
        ("result", "PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"])),
    ]
    kinds = [
        (k, v["count"], json.dumps(v["statuses"]), v["unexpected"]) for k, v in report["by_kind"].items()
    ]
    return (
        fmt_table(["metric", "value"], rows)
        + "\n\n"
        + fmt_table(["kind", "count", "statuses", "unexpected"], kinds)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", type=Path, default=None, help="default: the shipped demo model")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--max_seconds", type=float, default=600.0, help="stop sending after this (from start)"
    )
    parser.add_argument("--max_rss_growth_pct", type=float, default=5.0)
    parser.add_argument(
        "--settle_s",
        type=float,
        default=5.0,
        help="idle seconds between the last answer and the end sample (the server trims its heap after "
        "--malloc_trim_idle_s, 2 s by default)",
    )
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--max_request_bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "soak.json")
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    if args.model_dir is None:
        from predictor.models import DEMO_MODEL_DIR

        args.model_dir = DEMO_MODEL_DIR
    machine = machine_info()
    report = soak(
        args.model_dir,
        n_requests=args.requests,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
        max_rss_growth_pct=args.max_rss_growth_pct,
        max_batch_size=args.max_batch_size,
        max_request_bytes=args.max_request_bytes,
        seed=args.seed,
        log_path=args.out.with_name(args.out.stem + "_server.log"),
        server_args=tuple(args.server_args),
        settle_s=args.settle_s,
    )
    report = {"machine": machine, **report}
    print(markdown(report))
    write_json(args.out, report)
    print(f"\nJSON: {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
