"""Prometheus metrics of the predictor (served by KServe on ``/metrics``) and per-request error logs.

Registered once, at import, in ``prometheus_client``'s default registry (the one KServe exposes):

- ``ssd_requests_total{protocol, status}``: inference requests answered (protocol ``v1``/``v2``/``grpc``;
  status is the HTTP code, gRPC codes mapped to theirs: INVALID_ARGUMENT 400, UNAVAILABLE 503 ...).
- ``ssd_request_errors_total{protocol, status}``: the subset with status >= 400.
- ``ssd_images_total{protocol}``: images whose detections were returned.
- ``ssd_batch_size``: histogram of images per model call (before padding to a bucket).
- ``ssd_batch_seconds``: histogram of model-call durations.
- ``ssd_queue_images``: images admitted and not finished yet (decoding, queued or in the model).
- ``ssd_inflight_request_bytes``: request-body bytes admitted and not answered yet (REST and gRPC).
- ``ssd_rejected_requests_total{reason}``: requests refused before their body was read or parsed
  (``body_too_large`` 413, ``inflight_bytes`` / ``queue_full`` 503).
- ``ssd_cancelled_images_total{stage}``: images whose work was skipped because their request's
  deadline had passed: ``decode`` (never decoded), ``queue`` (decoded, dropped from the batch queue).
- ``ssd_late_images_total``: images the model had already started on when their deadline passed
  (computed, then discarded).
- ``ssd_traces_total``: ``tf.function`` traces of the served detector (flat after warm-up).
- ``ssd_model_ready``: 1 once the model is loaded and warmed up.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

access_log = logging.getLogger("predictor.access")

REQUESTS = Counter("ssd_requests", "Inference requests answered", ["protocol", "status"])
ERRORS = Counter("ssd_request_errors", "Inference requests answered with an error", ["protocol", "status"])
IMAGES = Counter("ssd_images", "Images whose detections were returned", ["protocol"])
BATCH_SIZE = Histogram("ssd_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_SECONDS = Histogram(
    "ssd_batch_seconds",
    "Duration of one model call",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_IMAGES = Gauge("ssd_queue_images", "Images admitted and not finished (decoding, queued, running)")
INFLIGHT_BYTES = Gauge("ssd_inflight_request_bytes", "Request-body bytes admitted and not answered yet")
REJECTED = Counter(
    "ssd_rejected_requests", "Requests refused before their body was read or parsed", ["reason"]
)
CANCELLED = Counter(
    "ssd_cancelled_images", "Images whose work was skipped because their deadline had passed", ["stage"]
)
LATE = Counter("ssd_late_images", "Images computed by the model after their request's deadline had passed")

GRPC_TO_HTTP = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 503,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
}


class _ModelCollector(Collector):
    """Reads the served model's live values at scrape time."""

    def __init__(self) -> None:
        self.trace_count: Callable[[], int] = lambda: 0
        self.ready: Callable[[], bool] = lambda: False

    def collect(self) -> Iterable[Any]:
        traces = CounterMetricFamily("ssd_traces", "tf.function traces of the served detector")
        traces.add_metric([], float(self.trace_count()))
        yield traces
        ready = GaugeMetricFamily("ssd_model_ready", "1 once the model is loaded and warmed up")
        ready.add_metric([], 1.0 if self.ready() else 0.0)
        yield ready


MODEL = _ModelCollector()
REGISTRY.register(MODEL)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def record(protocol: str, status: int) -> None:
    """Count one answered inference request."""
    REQUESTS.labels(protocol, str(status)).inc()
    if status >= 400:
        ERRORS.labels(protocol, str(status)).inc()


def log_error(protocol: str, status: int, request_id: str, error: str, **fields: Any) -> None:
    """One structured (JSON) log line for a 4xx/5xx answer."""
    line = {"event": "request_error", "request_id": request_id, "protocol": protocol, "status": status}
    line.update(fields)
    line["error"] = error[:500]
    level = logging.ERROR if status >= 500 and status != 503 else logging.WARNING
    access_log.log(level, orjson.dumps(line).decode())


def rest_protocol(path: str) -> str | None:
    """``v1`` / ``v2`` for the REST inference routes, else None."""
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


class RestMetricsMiddleware:
    """ASGI middleware on KServe's FastAPI app.

    Gives every HTTP request, on every route, an ``x-request-id`` (kept when the client sent one; echoed
    in the response). For the inference routes (V1 ``:predict``, V2 ``/infer``) it also
    counts the answer by protocol and status (including FastAPI's 422 and KServe's 404/503, raised
    before the model is called) and logs one JSON line, with the error message, for every 4xx/5xx.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id")
        if request_id is None:
            request_id = new_request_id()
            scope = {**scope, "headers": [*scope["headers"], (b"x-request-id", request_id.encode())]}
        protocol = rest_protocol(scope.get("path", ""))
        if protocol is None:  # health, metadata, /metrics: the id only
            await self.app(scope, receive, _with_request_id(send, request_id))
            return
        state: dict[str, Any] = {"status": 500, "body": b"", "done": False}
        start = time.perf_counter()

        def finish() -> None:  # once per request, before the last byte of the answer leaves
            if state["done"]:
                return
            state["done"] = True
            status = int(state["status"])
            record(protocol, status)
            if status >= 400:
                ms = round((time.perf_counter() - start) * 1000, 1)
                path = scope.get("path", "")
                log_error(protocol, status, request_id, _error_text(state["body"]), path=path, ms=ms)

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = _add_request_id(message, request_id)
            elif message["type"] == "http.response.body":
                if state["status"] >= 400 and len(state["body"]) < 2048:
                    state["body"] += message.get("body", b"")[:2048]
                if not message.get("more_body", False):
                    finish()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as e:
            if not state["done"]:
                state["status"], state["body"] = 500, f"{type(e).__name__}: {e}".encode()
            raise
        finally:
            finish()


def _add_request_id(start: dict, request_id: str) -> dict:
    """An ``http.response.start`` message with ``x-request-id`` (unless the app set one)."""
    headers = list(start.get("headers", []))
    if not any(k.lower() == b"x-request-id" for k, _ in headers):
        headers.append((b"x-request-id", request_id.encode()))
    return {**start, "headers": headers}


def _with_request_id(send: Callable, request_id: str) -> Callable:
    async def send_with_id(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = _add_request_id(message, request_id)
        await send(message)

    return send_with_id


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")[:128]
    return None


def _error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    if isinstance(data, dict) and "detail" in data:
        return orjson.dumps(data["detail"]).decode()
    return body.decode("utf-8", "replace")


class QuietClientErrors(logging.Filter):
    """Drops KServe's traceback-carrying log records for client errors and overload (400 / 503).

    KServe logs every handled exception with its traceback; these answers already get one structured
    line from :func:`log_error`. Tracebacks of real failures (500) are kept.
    """

    def __init__(self, quiet_types: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.quiet_types = quiet_types

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, self.quiet_types)
