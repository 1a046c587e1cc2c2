"""Header hygiene: the caller's ``x-request-id`` and W3C trace headers, made safe before any code reads them.

KServe's code logs the request id it finds (``kserve.trace``: ``requestId: ...`` per request), our
metrics middleware echoes it and logs it with every error, and the tracing propagator parses
``traceparent`` / ``tracestate`` / ``baggage``. A client controls all of them, up to the HTTP server's header
size limit (gRPC: about 8 KiB of metadata by default), so one request could put kilobytes of its own
text into each log line. Before KServe's app or servicer sees a request:

- ``x-request-id``: the first one only; cut to :data:`REQUEST_ID_MAX` characters; replaced by a fresh id
  when it is empty or holds anything but visible ASCII (control characters, spaces, non-ASCII bytes).
- ``traceparent``: kept only when it is the one such header and valid W3C Trace Context (lower-case hex,
  neither id all zeros, version not ``ff``; version 00 exactly 55 characters, a later version cut to its
  first 55); otherwise it is dropped and the request starts a new trace, as OpenTelemetry does for a
  header it cannot parse.
- ``tracestate``: kept only with a valid ``traceparent`` and at most :data:`TRACESTATE_MAX` characters
  (W3C Trace Context, section 3.3.1.5); ``baggage``: at most :data:`BAGGAGE_MAX` (W3C Baggage limit).

:class:`HeaderHygieneMiddleware` does this to the ASGI scope (it is the outermost middleware:
:func:`predictor.serving.kserve_workarounds.rest_server_with_error_table`), and
:class:`GrpcMetadataHygiene` to the gRPC invocation metadata (the outermost interceptor), so handlers,
KServe's included, read the cleaned values. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio

#: Longest ``x-request-id`` kept (longer ones are cut).
REQUEST_ID_MAX = 128
#: Longest ``tracestate`` kept (W3C Trace Context: vendors may drop longer ones).
TRACESTATE_MAX = 512
#: Longest ``baggage`` kept (W3C Baggage: 8192 bytes in total).
BAGGAGE_MAX = 8192

REQUEST_ID = "x-request-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
_GUARDED = (REQUEST_ID, TRACEPARENT, TRACESTATE, BAGGAGE)
_GUARDED_BYTES = frozenset(name.encode() for name in _GUARDED)

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def clean_request_id(value: str, new_id: Callable[[], str]) -> str:
    """The request id to use for a client's ``x-request-id``: cut to :data:`REQUEST_ID_MAX`, or
    ``new_id()`` when the (cut) value is empty or not all visible ASCII."""
    cut = value[:REQUEST_ID_MAX]
    return cut if _VISIBLE_ASCII.fullmatch(cut) else new_id()


def clean_traceparent(value: str) -> str | None:
    """The ``traceparent`` to keep, or None to drop it (W3C Trace Context, section 3.2: lower-case hex,
    version ``ff`` invalid, trace and parent ids not all zeros; version 00 is exactly 55 characters, a
    later version is read from its first 55 characters when the next one is ``-``, and cut to them)."""
    m = _TRACEPARENT.fullmatch(value[:55])
    if m is None or m[1] == "ff" or m[2] == "0" * 32 or m[3] == "0" * 16:
        return None
    if len(value) > 55 and (m[1] == "00" or value[55] != "-"):
        return None
    return value[:55]


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is kept unchanged as a ``traceparent``."""
    return clean_traceparent(value) == value


def clean_pairs(pairs: Sequence[tuple[str, str]], new_id: Callable[[], str]) -> list[tuple[str, str]] | None:
    """``pairs`` (lower-case names, as ASGI and gRPC give them) with the guarded headers cleaned as the
    module docstring says, other pairs unchanged and in order; None when nothing needed changing."""
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name in _GUARDED and name not in seen:
            seen[name] = value
    kept: dict[str, str | None] = {}
    if REQUEST_ID in seen:
        kept[REQUEST_ID] = clean_request_id(seen[REQUEST_ID], new_id)
    parent = seen.get(TRACEPARENT)
    duplicate_parent = sum(1 for name, _ in pairs if name == TRACEPARENT) > 1
    parent = None if parent is None or duplicate_parent else clean_traceparent(parent)
    parent_ok = parent is not None
    kept[TRACEPARENT] = parent
    state = seen.get(TRACESTATE)
    kept[TRACESTATE] = state if parent_ok and state is not None and len(state) <= TRACESTATE_MAX else None
    baggage = seen.get(BAGGAGE)
    kept[BAGGAGE] = baggage if baggage is not None and len(baggage) <= BAGGAGE_MAX else None

    out: list[tuple[str, str]] = []
    written: set[str] = set()
    for name, value in pairs:
        if name not in _GUARDED:
            out.append((name, value))
        elif name not in written and kept.get(name) is not None:
            written.add(name)
            out.append((name, kept[name]))
    return None if out == list(pairs) else out


# ----------------------------------------------------------------------------- REST (ASGI)
class HeaderHygieneMiddleware:
    """Pure ASGI middleware: rewrites the scope's headers with :func:`clean_pairs` before the app
    (and every middleware inside it) sees them. Header bytes are read as latin-1, as ASGI servers do."""

    def __init__(self, app: Any, new_id: Callable[[], str] | None = None) -> None:
        from predictor.serving import prometheus

        self.app = app
        self.new_id = new_id or prometheus.new_request_id

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        raw = (scope.get("headers") or []) if scope["type"] == "http" else []
        if any(k.lower() in _GUARDED_BYTES for k, _ in raw):  # most requests carry none of them
            pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
            cleaned = clean_pairs(pairs, self.new_id)
            if cleaned is not None:
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in cleaned]
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- gRPC
#: One metadata entry as handlers read it (``.key`` / ``.value``, or unpacked as a pair).
Metadatum = namedtuple("Metadatum", ["key", "value"])


def _call_details(method: str, metadata: tuple) -> grpc.HandlerCallDetails:
    """Call details for the interceptors after ours. grpc.aio's interceptor chain accepts only its own
    Cython type (a subclass of grpc.HandlerCallDetails is refused with a TypeError: grpcio 1.7x,
    ``_find_method_handler`` in ``grpc/_cython/_cygrpc/aio/server.pyx.pxi``)."""
    from grpc._cython import cygrpc

    return cygrpc._HandlerCallDetails(method, metadata)


class _CleanedContext:
    """A servicer context whose ``invocation_metadata()`` is the cleaned metadata; the rest delegates."""

    def __init__(self, context: Any, metadata: tuple) -> None:
        self._context = context
        self._metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def clean_metadata(metadata: Sequence[Any], new_id: Callable[[], str]) -> tuple | None:
    """gRPC invocation metadata with :func:`clean_pairs` applied (binary ``-bin`` entries untouched);
    None when nothing changed."""
    pairs = [(str(k), v) for k, v in metadata]
    text = [(k, v) for k, v in pairs if isinstance(v, str)]
    cleaned = clean_pairs(text, new_id)
    if cleaned is None:
        return None
    binary = [(k, v) for k, v in pairs if not isinstance(v, str)]
    return tuple(Metadatum(k, v) for k, v in [*cleaned, *binary])


def with_context(handler: grpc.RpcMethodHandler, wrap: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    """``handler`` whose behaviour is called with ``wrap(context)`` instead of the context (any kind)."""
    for kind, factory in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return factory(
                _wrapped(behavior, wrap, streaming_response=kind.endswith("stream")),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _wrapped(behavior: Callable, wrap: Callable[[Any], Any], streaming_response: bool) -> Callable:
    if streaming_response:

        async def stream(request: Any, context: Any) -> Any:
            async for item in behavior(request, wrap(context)):
                yield item

        return stream

    async def unary(request: Any, context: Any) -> Any:
        return await behavior(request, wrap(context))

    return unary


class GrpcMetadataHygiene(aio.ServerInterceptor):
    """Outermost gRPC interceptor: the interceptors after it get the cleaned metadata in their call
    details, the servicer gets it from ``context.invocation_metadata()``."""

    def __init__(self, new_id: Callable[[], str] | None = None) -> None:
        from predictor.serving import prometheus

        self.new_id = new_id or prometheus.new_request_id

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        cleaned = clean_metadata(handler_call_details.invocation_metadata or (), self.new_id)
        if cleaned is None:
            return await continuation(handler_call_details)
        handler = await continuation(_call_details(handler_call_details.method, cleaned))
        if handler is None:
            return handler
        return with_context(handler, lambda context: _CleanedContext(context, cleaned))
