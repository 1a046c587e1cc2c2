"""OpenTelemetry tracing of the request path (optional: ``pip install 'ssd-predictor[tracing]'``).

Off by default; ``--tracing`` (env ``SSD_TRACING=true``) turns it on. Each inference request is one
``ssd.infer`` server span, the child of the caller's span when the request carries a W3C ``traceparent``
header (REST) or metadata entry (gRPC), with one child span per stage:

- ``ssd.decode``: base64 + image decoding and resizing of the request's images (decode threads);
- ``ssd.queue_wait``: waiting in the dynamic batcher for a model call;
- ``ssd.batch``: assembling the batch (hand-off to the model thread, joining the per-image parameters);
- ``ssd.model``: ``Detector.run_batch``: stacking the images into the bucket's buffer, the compiled
  network and in-graph post-processing (shared by the batch's requests: attribute ``ssd.batch_images``);
- ``ssd.postprocess``: the request's rows of the output and the detection telemetry;
- ``ssd.encode``: the V1 JSON / V2 response.

Export is configured by the standard OpenTelemetry variables: ``OTEL_TRACES_EXPORTER`` (``otlp``,
the default, over HTTP/protobuf; ``console``; ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` and ``OTEL_PROPAGATORS`` (default
``tracecontext,baggage``). When tracing is off none of this is imported and every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

_tracer: Any = None


def enabled() -> bool:
    """Whether spans are recorded."""
    return _tracer is not None


def configure(provider: Any = None) -> None:
    """Turn tracing on.

    Args:
      provider: a ``TracerProvider`` to use (tests: one with an in-memory exporter); None builds one
        from the ``OTEL_*`` environment and installs it as the global provider.
    Raises:
      SystemExit: the OpenTelemetry SDK (or the OTLP exporter asked for) is not installed.
    """
    global _tracer
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise SystemExit(
            f"--tracing needs the OpenTelemetry SDK: pip install 'ssd-predictor[tracing]' ({e})"
        ) from e
    if provider is None:
        provider = TracerProvider()  # resource and sampler from OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER ...
        exporter = _exporter_from_env()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("predictor")
    log.info("tracing on (exporter %s)", os.environ.get("OTEL_TRACES_EXPORTER", "otlp"))


def disable() -> None:
    """Turn tracing off again (tests)."""
    global _tracer
    _tracer = None


def _exporter_from_env() -> Any:
    name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise SystemExit(
                f"OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: "
                f"pip install 'ssd-predictor[tracing]' ({e})"
            ) from e
        return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_* variables
    raise SystemExit(f"OTEL_TRACES_EXPORTER={name!r} is not supported here (otlp, console or none)")


@contextlib.contextmanager
def request_span(headers: Mapping[str, str] | None, **attributes: Any) -> Iterator[Any]:
    """The request's server span, continuing the W3C trace context of ``headers`` (lower-case keys, as
    KServe passes REST headers and gRPC metadata). Yields the span, or None when tracing is off.

    An exception leaving the block is recorded on the span; the status is ERROR only for statuses
    >= 500 (a client's 400 is not a server error), given by ``attributes["status_of"]``.
    """
    if _tracer is None:
        yield None
        return
    from opentelemetry import propagate, trace

    status_of = attributes.pop("status_of", None)
    carrier = {str(k).lower(): v for k, v in (headers or {}).items() if isinstance(v, str)}
    context = propagate.extract(carrier)
    with _tracer.start_as_current_span(
        "ssd.infer",
        context=context,
        kind=trace.SpanKind.SERVER,
        attributes=_clean(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as e:
            status = status_of(e) if status_of is not None else 500
            span.set_attribute("ssd.status", status)
            span.record_exception(e)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(e).__name__}: {e}"[:200]))
            raise
        span.set_attribute("ssd.status", 200)


@contextlib.contextmanager
def stage(name: str, **attributes: Any) -> Iterator[None]:
    """A child span of the current one for a request stage (no-op when tracing is off)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)):
        yield


def batcher_timing() -> dict[str, int] | None:
    """A dict for :meth:`.batcher.DynamicBatcher.run` to fill, or None when tracing is off."""
    return {} if _tracer is not None else None


def record_batch(timing: Mapping[str, int] | None) -> None:
    """The batcher's stages of one request (``ssd.queue_wait``, ``ssd.batch``, ``ssd.model``) as child
    spans of the current one, from the ``time.time_ns()`` stamps the batcher wrote."""
    if _tracer is None or not timing or "model_end" not in timing:
        return
    images = {"ssd.batch_images": int(timing.get("batch_images", 0))}
    stages = (
        ("ssd.queue_wait", "enqueued", "batch_start", {}),
        ("ssd.batch", "batch_start", "model_start", images),
        ("ssd.model", "model_start", "model_end", images),
    )
    for name, start, end, attributes in stages:
        span = _tracer.start_span(name, start_time=int(timing[start]), attributes=attributes)
        span.end(end_time=int(timing[end]))


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attribute values must be str, bool, int or float (None dropped)."""
    out = {}
    for key, value in attributes.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out
