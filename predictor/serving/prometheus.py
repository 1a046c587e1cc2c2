"""Prometheus metrics of the predictor (served by KServe on ``/metrics``) and per-request error logs.

Registered once, at import, in ``prometheus_client``'s default registry (the one KServe exposes):

- ``ssd_requests_total{protocol, status}``: inference requests answered (protocol ``v1``/``v2``/``grpc``;
  status is the HTTP code; a gRPC error is counted under the HTTP code its class has in
  :data:`predictor.serving.errors.STATUSES`: INVALID_ARGUMENT 400, UNAVAILABLE 503 ...).
- ``ssd_request_errors_total{protocol, status}``: the subset with status >= 400.
- ``ssd_request_seconds{protocol}``: histogram of the time from a request's arrival to its answer
  (every answered request, errors included; the latency SLO of the chart's PrometheusRule counts the
  share above one bucket bound, :data:`REQUEST_SECONDS_BUCKETS`).
- ``ssd_images_total{protocol}``: images whose detections were returned.
- ``ssd_decode_seconds``: histogram of one image's decode and resize (decode thread).
- ``ssd_batch_size``: histogram of images per model call (before padding to a bucket).
- ``ssd_computed_images_total``: images the model computed, padding included
  (:meth:`predictor.ssd.Detector.rows_computed` per model call: each chunk's bucket when the server
  pads, ``--batch_padding``; the images themselves when it does not). One minus
  ``ssd_batch_size_sum`` over it is the share of the model's work spent on padding.
- ``ssd_batch_seconds``: histogram of model-call durations.
- ``ssd_queue_images``: images admitted and not finished yet (decoding, queued or in the model).
- ``ssd_offered_images_total{outcome}``: images offered to the model's admission
  (:meth:`~predictor.serving.batcher.DynamicBatcher.admit`): ``admitted``, or ``refused`` with 503 /
  UNAVAILABLE because the image queue was full or overloaded. A request refused before its images
  could be counted (REST: before its body was read, image queue full or past ``--max_inflight_bytes``;
  gRPC: RESOURCE_EXHAUSTED by the byte budget or the call limiter) counts as one refused image
  (:func:`refused_unread`). Their rate is the load offered to the replica, shed demand included: the
  chart's KEDA trigger divides it by ``ssd_capacity_images_per_second``. (413s and other client errors
  are not offered load.)
- ``ssd_capacity_images_per_second``: images per second the replica can take: the smaller of what the
  model does in calls of the efficient bucket, the size it runs under a standing queue (from the
  warm-up's timings; absent before them), and what the decode pool does (``--decode_threads`` / the
  moving average of one image's decode + resize), so a replica bound by decoding reads as full.
- ``ssd_inflight_request_bytes``: request-body bytes admitted and not answered yet (REST and gRPC).
- ``ssd_rejected_requests_total{reason}``: requests refused before their body was read or parsed
  (``body_too_large`` 413, ``inflight_bytes`` / ``queue_full`` 503, ``grpc_calls``: RESOURCE_EXHAUSTED by
  the gRPC call limiter, :class:`~predictor.serving.admission.CallLimiter`).
- ``ssd_grpc_waiting_calls``: ``ModelInfer`` calls waiting for a place to read their message.
- ``ssd_cancelled_images_total{stage}``: images whose work was skipped because their request's
  deadline had passed: ``decode`` (never decoded), ``queue`` (decoded, dropped from the batch queue).
- ``ssd_late_images_total``: images the model had already started on when their deadline passed
  (computed, then discarded).
- ``ssd_heap_trims_total`` / ``ssd_heap_trimmed_bytes_total``: idle-time ``malloc_trim`` calls and the
  resident bytes they gave back (:mod:`predictor.serving.heap`).
- ``ssd_traces_total``: ``tf.function`` traces of the served detector (flat after warm-up).
- ``ssd_model_ready``: 1 once the model is loaded and warmed up.
- ``ssd_model_info{model, version}``: always 1; ``version`` is the served model version (one series per
  server). Dashboards split any series by version with a join on the pod, which keeps the version
  label off the other metrics:
  ``sum by (version) (rate(ssd_requests_total[5m])``
  ``* on (namespace, pod) group_left (version) ssd_model_info)``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from predictor.serving import errors

access_log = logging.getLogger("predictor.access")

REQUESTS = Counter("ssd_requests", "Inference requests answered", ["protocol", "status"])
ERRORS = Counter("ssd_request_errors", "Inference requests answered with an error", ["protocol", "status"])
#: Bounds of ``ssd_request_seconds``; the chart's latency objective is one of them (values.schema.json).
REQUEST_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_SECONDS = Histogram(
    "ssd_request_seconds",
    "Time from an inference request's arrival to its answer",
    ["protocol"],
    buckets=REQUEST_SECONDS_BUCKETS,
)
DECODE_SECONDS = Histogram(
    "ssd_decode_seconds",
    "Decode and resize of one image",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
IMAGES = Counter("ssd_images", "Images whose detections were returned", ["protocol"])
BATCH_SIZE = Histogram("ssd_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
COMPUTED_IMAGES = Counter("ssd_computed_images", "Images the model computed, padding included")
BATCH_SECONDS = Histogram(
    "ssd_batch_seconds",
    "Duration of one model call",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_IMAGES = Gauge("ssd_queue_images", "Images admitted and not finished (decoding, queued, running)")
OFFERED = Counter(
    "ssd_offered_images", "Images offered to the model's admission: admitted or refused (503)", ["outcome"]
)
for _outcome in ("admitted", "refused"):  # both exported from the start: rate() sees the first refusal
    OFFERED.labels(_outcome)
GRPC_WAITING = Gauge(
    "ssd_grpc_waiting_calls", "gRPC ModelInfer calls waiting for a place to read their message"
)
INFLIGHT_BYTES = Gauge("ssd_inflight_request_bytes", "Request-body bytes admitted and not answered yet")
REJECTED = Counter(
    "ssd_rejected_requests", "Requests refused before their body was read or parsed", ["reason"]
)
CANCELLED = Counter(
    "ssd_cancelled_images", "Images whose work was skipped because their deadline had passed", ["stage"]
)
LATE = Counter("ssd_late_images", "Images computed by the model after their request's deadline had passed")

HEAP_TRIMS = Counter("ssd_heap_trims", "malloc_trim calls after the server went idle")
HEAP_TRIMMED_BYTES = Counter("ssd_heap_trimmed_bytes", "Resident bytes given back by idle malloc_trim calls")


def refused_unread() -> None:
    """A request refused before its images could be counted (its body unread or unparsed): one image
    offered and refused (``ssd_offered_images_total{outcome="refused"}``)."""
    OFFERED.labels("refused").inc()


class _ModelCollector(Collector):
    """Reads the served model's live values at scrape time."""

    def __init__(self) -> None:
        self.trace_count: Callable[[], int] = lambda: 0
        self.ready: Callable[[], bool] = lambda: False
        self.info: Callable[[], tuple[str, str] | None] = lambda: None
        self.capacity: Callable[[], float | None] = lambda: None

    def collect(self) -> Iterable[Any]:
        traces = CounterMetricFamily("ssd_traces", "tf.function traces of the served detector")
        traces.add_metric([], float(self.trace_count()))
        yield traces
        ready = GaugeMetricFamily("ssd_model_ready", "1 once the model is loaded and warmed up")
        ready.add_metric([], 1.0 if self.ready() else 0.0)
        yield ready
        info = self.info()
        if info is not None:
            family = GaugeMetricFamily(
                "ssd_model_info", "The served model: name and version (always 1)", labels=["model", "version"]
            )
            family.add_metric(list(info), 1.0)
            yield family
        capacity = self.capacity()
        if capacity:  # absent (not 0) before the warm-up: a query dividing by it then has no series
            family = GaugeMetricFamily(
                "ssd_capacity_images_per_second",
                "Images per second of model calls of the efficient bucket (warm-up timings)",
            )
            family.add_metric([], capacity)
            yield family


MODEL = _ModelCollector()
REGISTRY.register(MODEL)


#: Request ids come from a generator seeded once from the OS: ``uuid4()`` read ``os.urandom`` for each
#: request, a system call during which the event loop gives up the GIL and then waits to get it back
#: from the decode and model threads (seen in a hand-run py-spy profile of V1 at 16 clients).
#: Ids name log lines; they are not secrets.
#: Reseeded in a forked child (os.register_at_fork), so that processes forked from one parent do not
#: produce the same ids.
_IDS = random.Random(os.urandom(16))


def _reseed_ids() -> None:
    _IDS.seed(os.urandom(16))


os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """16 lowercase hex digits (64 random bits), for a request that came without ``x-request-id``."""
    return f"{_IDS.getrandbits(64):016x}"


def record(protocol: str, status: int, seconds: float) -> None:
    """Count one answered inference request that took ``seconds`` from arrival to answer."""
    REQUESTS.labels(protocol, str(status)).inc()
    REQUEST_SECONDS.labels(protocol).observe(seconds)
    if status >= 400:
        ERRORS.labels(protocol, str(status)).inc()


def log_error(protocol: str, status: int, request_id: str, error: str, **fields: Any) -> None:
    """One structured (JSON) log line for a 4xx/5xx answer."""
    line = {"event": "request_error", "request_id": request_id, "protocol": protocol, "status": status}
    line.update(fields)
    line["error"] = error[:500]
    level = logging.ERROR if status >= 500 and status != 503 else logging.WARNING
    access_log.log(level, orjson.dumps(line).decode())


class QuietClientErrors(logging.Filter):
    """Drops KServe's traceback-carrying log records for client errors and overload (4xx / 503).

    KServe logs every handled exception with its traceback; these answers already get one structured
    line from :func:`log_error`. Tracebacks of real failures (500) are kept. Which is which:
    :func:`predictor.serving.errors.is_expected`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not errors.is_expected(exc)
