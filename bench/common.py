"""Shared pieces of the CPU benchmarks: model directories, test JPEGs, timing, peak FLOP/s, JSON, the
local servers (through :mod:`predictor.tools.localserver`), their memory, and the V1/V2/gRPC request
loops of the served benchmarks. A bench script imports the package's public modules and this module
(and ``bench.loadgen``, the overload bench's load generator), never another bench script or tests/.

Every benchmark loads its model from a model directory, so the raw model, the ONNX Runtime peer and the
server all run the same weights: SSD300-VGG16 with seeded random weights (saved once under
``bench/out/models/ssd300``) and the shipped demo model (a seeded random ``ssd_tiny`` stand-in until it
is shipped).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predictor.protocol.wire import INPUT_NAME, MODEL_NAME
from predictor.tools.localserver import LocalServer, server_env, start_server

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
MODELS = ("ssd300", "demo")
#: (width, height) of the test JPEGs: a VOC-sized photo and a 720p frame.
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (1280, 720))
IMAGE_SEED = 20261125
#: The server's ``--compute_nice`` in the served benchmarks (``make bench``'s served stage,
#: ``bench.served_profile``, ``bench.served_vs_raw``): the raw stage's threads all run at the bench's own
#: priority; so do the server's compute threads here (the server's default puts them 10 nice levels below
#: the event loop), or on a machine shared with other jobs the served stage would get less of the CPU
#: than the raw stage it is divided by.
BENCH_COMPUTE_NICE = 0


def model_dir(name: str, out_dir: Path = OUT_DIR) -> tuple[Path, str]:
    """Model directory of benchmark model ``name`` (created on first use) and a one-line description."""
    if name == "demo":
        from predictor.models import DEMO_MODEL_DIR

        if (DEMO_MODEL_DIR / "model.yaml").is_file():
            return DEMO_MODEL_DIR, "shipped demo model (predictor/models/demo)"
        return _random_model_dir(
            "demo_standin", out_dir
        ), "random-weight ssd_tiny stand-in (demo not shipped yet)"
    if name == "ssd300":
        return _random_model_dir("ssd300", out_dir), "SSD300-VGG16, seeded random weights"
    raise ValueError(f"unknown benchmark model {name!r}; known: {MODELS}")


def _random_model_dir(name: str, out_dir: Path) -> Path:
    path = out_dir / "models" / name
    if (path / "model.yaml").is_file():
        return path
    import keras

    from predictor.datasets.shapes import CLASS_NAMES
    from predictor.ssd import build_network, save_model_dir, ssd300_vgg16, ssd_tiny

    config = ssd300_vgg16() if name == "ssd300" else ssd_tiny(CLASS_NAMES)
    keras.utils.set_random_seed(0)
    model = build_network(config)
    tmp = path.with_name(path.name + ".tmp")
    save_model_dir(model, config, tmp, note="benchmark model with seeded random weights")
    tmp.rename(path)
    return path


def make_test_jpegs(per_size: int = 4, quality: int = 90) -> list[bytes]:
    """Deterministic JPEGs: ``per_size`` shapes-dataset images resized to each of :data:`IMAGE_SIZES`."""
    from PIL import Image

    from predictor.datasets.shapes import generate_sample

    out = []
    for w, h in IMAGE_SIZES:
        for i in range(per_size):
            image = Image.fromarray(generate_sample(IMAGE_SEED, i).image).resize((w, h), Image.BILINEAR)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality)
            out.append(buf.getvalue())
    return out


def time_calls(
    fn: Callable[[], Any], min_time_s: float, min_iters: int, max_iters: int = 10_000
) -> list[float]:
    """Seconds of each call of ``fn()`` until both ``min_time_s`` and ``min_iters`` are reached."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_calls_cpu(
    fn: Callable[[], Any], min_time_s: float, min_iters: int
) -> tuple[list[float], dict[str, float]]:
    """:func:`time_calls` plus how busy the machine was: cores this process used on average (process
    CPU time / wall time) and the 1-minute load average after, to spot runs disturbed by other work."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    times = time_calls(fn, min_time_s, min_iters)
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return times, {"process_cores_used": cores, "load_average_1m": os.getloadavg()[0]}


def percentile(values: Sequence[float], q: float) -> float:
    """``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, np.float64), q))


def batch_stats(times: Sequence[float], batch: int, gflop_per_image: float, peak_gflops: float) -> dict:
    """Images/s, latency and achieved GFLOP/s of timed calls that each process ``batch`` images."""
    images_per_s = batch * len(times) / sum(times)
    gflops = images_per_s * gflop_per_image
    return {
        "batch": batch,
        "calls": len(times),
        "images_per_s": images_per_s,
        "latency_ms_median": 1e3 * statistics.median(times),
        "latency_ms_min": 1e3 * min(times),
        "gflops": gflops,
        "fraction_of_peak": gflops / peak_gflops if peak_gflops else None,
    }


def matmul_peak_gflops(n: int = 2048, min_time_s: float = 2.0) -> dict[str, float]:
    """This machine's float32 ``tf.matmul`` rate (``n x n`` by ``n x n``, all threads), best of the calls."""
    import tensorflow as tf

    a = tf.random.stateless_normal((n, n), seed=(1, 2))
    b = tf.random.stateless_normal((n, n), seed=(3, 4))
    fn = tf.function(lambda x, y: tf.matmul(x, y))
    fn(a, b).numpy()
    times = time_calls(lambda: fn(a, b).numpy(), min_time_s, 3)
    return {
        "n": n,
        "gflops_best": 2 * n**3 / min(times) / 1e9,
        "gflops_median": 2 * n**3 / statistics.median(times) / 1e9,
        "calls": len(times),
    }


def machine_info() -> dict[str, Any]:
    """CPU, thread and library facts recorded beside every result."""
    import tensorflow as tf

    from predictor.serving.resources import cpu_model_name

    return {
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": os.getloadavg(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),  # the bench's own (a quiet run: -15 beside niced jobs)
    }


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_ints(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]``."""
    return [int(t) for t in text.split(",") if t.strip()]


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (right-aligned numbers) as text."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
        return "-" if v is None else str(v)

    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))
    ]
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- images
def encode_image(image: np.ndarray, fmt: str = "PNG", **save_args: Any) -> bytes:
    """An ``[H, W, 3]`` uint8 array -> encoded image bytes (Pillow's ``fmt``: PNG, JPEG ...)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **save_args)
    return buf.getvalue()


def upscaled_jpeg(image: np.ndarray, short_side: int, quality: int = 90) -> tuple[bytes, float]:
    """Bicubic upscale so the shorter side is ``short_side``; JPEG bytes and the scale factor."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    big = Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), scale


# ----------------------------------------------------------------------------- servers
def start_cpu_server(model_dir: Path | str | None, log_path: Path, *args: str) -> LocalServer:
    """``python -m predictor`` on loopback as the soak, hostile and overload benches run it: CPU only, no
    ``SSD_*`` environment, two decode threads, ``args`` after (not waiting for readiness)."""
    return start_server(
        model_dir, log_path, "--decode_threads", "2", *args, env=server_env(cpu_only=True), cwd=REPO
    )


def start_bench_server(
    model_dir: Path | str, log_path: Path, args: Sequence[str], timeout_s: float
) -> LocalServer:
    """``python -m predictor`` on loopback in a process group of its own (the served, pipeline and
    client-downscale benches), ready: its ``ready_s`` is the seconds from spawn to ready. Its session's
    scheduling group gets the bench's own (:func:`share_autogroup`) before it warms up."""
    server = start_server(model_dir, log_path, *args, own_session=True)
    try:
        share_autogroup(server.proc.pid)
        server.wait_ready(timeout_s, 0.5)
    except BaseException:
        server.terminate()
        raise
    return server


def share_autogroup(pid: int) -> int | None:
    """Give process ``pid``'s session the nice value of this process's own session group (Linux
    autogroup, on when ``/proc/sys/kernel/sched_autogroup_enabled`` is 1: nice values rank threads only
    within a session, so a bench run at ``nice -15`` in a group at -15 would otherwise see its server,
    in a session of its own, compete at 0). Returns the value set, or None (no autogroup, or 0)."""
    try:
        nice = int(Path("/proc/self/autogroup").read_text().split()[-1])  # "/autogroup-12 nice -15"
        if nice:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            return nice
    except (OSError, ValueError, IndexError):
        pass
    return None


# ----------------------------------------------------------------------------- server memory
def process_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and all its children."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a child that just exited
            total += child.memory_info().rss
    return total


def read_hwm(pid: int) -> int:
    """Peak RSS (bytes) of ``pid`` since start or since :func:`reset_hwm` (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakSampler(threading.Thread):
    """Samples the RSS of a process tree (:func:`process_rss`) every ``interval_s`` and keeps the peak;
    :meth:`start` / :meth:`stop`, or a ``with`` block."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.peak = max(self.peak, process_rss(self.pid))
            except Exception:  # the process is gone
                return
            self.stop_event.wait(self.interval_s)

    def stop(self) -> int:
        self.stop_event.set()
        self.join(10)
        return self.peak

    def __enter__(self) -> PeakSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- served requests
GRPC_MAX_MESSAGE = 64 * 1024 * 1024


_BUCKET = re.compile(r'^ssd_batch_size_bucket\{.*le="([^"]+)".*\}\s+(\S+)$')


def parse_batch_histogram(text: str) -> dict[str, Any]:
    """``ssd_batch_size`` (images per model call, before padding) from Prometheus text: cumulative
    bucket counts by upper bound, sum and count; and ``computed``, the ``ssd_computed_images_total``
    counter (images the model computed, padding included), None where the server does not export it
    (a server older than the counter)."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    computed: float | None = None
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m:
            buckets[float(m.group(1))] = float(m.group(2))
        elif line.startswith("ssd_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("ssd_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("ssd_computed_images_total"):
            computed = float(line.split()[-1])
    return {"buckets": buckets, "sum": total, "count": count, "computed": computed}


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Model calls, mean batch and padding between two scrapes (:func:`parse_batch_histogram`).

    ``padded_share`` is ``1 - images / computed``. ``computed`` comes from the server's
    ``ssd_computed_images_total`` counter when both scrapes have it (what the model really ran: 0 %
    on a server that runs calls at their exact size, ``--batch_padding exact``); without it (an older
    server) it is inferred from the histogram, whose bounds are the detector's bucket sizes (1, 2, 4,
    ... 32), assuming every call was padded: a call counted in ``(lo, hi]`` ran ``hi`` images.
    ``padded_source`` says which (``counter`` or ``histogram``).
    """
    calls = after["count"] - before["count"]
    images = after["sum"] - before["sum"]
    if calls <= 0 or not after["buckets"]:
        return {"model_calls": calls, "mean_batch": None, "padded_share": None}
    bounds = sorted(b for b in after["buckets"] if b != float("inf"))
    inferred, previous, per_bucket = 0.0, 0.0, {}
    for hi in bounds:
        cumulative = after["buckets"][hi] - before["buckets"].get(hi, 0.0)
        n = cumulative - previous
        previous = cumulative
        if n:
            per_bucket[int(hi)] = int(n)
            inferred += n * hi
    counted = before.get("computed") is not None and after.get("computed") is not None
    computed = after["computed"] - before["computed"] if counted else inferred
    return {
        "model_calls": int(calls),
        "mean_batch": images / calls,
        "calls_by_bucket": per_bucket,
        "padded_share": 1 - images / computed if computed else None,
        "padded_source": "counter" if counted else "histogram",
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

    def __init__(self, server: LocalServer, jpegs: list[bytes], concurrency: int) -> None:
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
            return {"buckets": {}, "sum": 0.0, "count": 0.0, "computed": None}
        return (
            parse_batch_histogram(r.text)
            if r.status_code == 200
            else {"buckets": {}, "sum": 0.0, "count": 0.0, "computed": None}
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
