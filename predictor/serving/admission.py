"""Admission before reading: request bodies are bounded one by one and all together, before they are read.

KServe reads a REST body whole (``await request.body()``) and JSON-parses it (V2: into pydantic
objects) before the model sees anything, and gRPC parses each message before the servicer runs. So
every check the model does comes after the memory is spent. This module checks first:

- :class:`ByteBudget`: the bytes of request bodies in flight (admitted and not answered yet),
  shared by REST and gRPC. A request is admitted when its bytes fit, or when nothing else is in
  flight (so one request up to ``--max_request_bytes`` is always served).
- :class:`AdmissionMiddleware` (ASGI, REST): a declared ``Content-Length`` over
  ``--max_request_bytes`` gets 413 and one over the budget 503 with ``Retry-After`` at once, before a
  byte of the body is read; so does any inference request while the model's image queue is full
  (``busy``). A chunked body is counted as it streams: past either bound the request gets the same
  413 / 503. The reservation is held until the answer has been sent (the parsed body lives that long).
  uvicorn reads and discards the rest of a refused body, so the client gets its answer on an open
  connection. Every 503 (also those answered further in: image queue full, not ready, time limit)
  carries ``Retry-After``.
- :class:`GrpcAdmissionInterceptor`: the gRPC core already refuses messages over
  ``--grpc_max_receive_message_length`` (RESOURCE_EXHAUSTED); this counts each ``ModelInfer``
  message against the same budget before protobuf parses it, RESOURCE_EXHAUSTED when over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from grpc import aio

from predictor.serving import prometheus

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait before retrying a 503 (``Retry-After``).
RETRY_AFTER_S = 1
#: gRPC methods whose messages are counted (the others are small).
GRPC_COUNTED_METHODS = ("/inference.GRPCInferenceService/ModelInfer",)


class ByteBudget:
    """Bytes of request bodies in flight, bounded by ``limit`` (thread-safe).

    A reservation that would exceed ``limit`` is refused unless nothing else is reserved.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"the in-flight bytes limit must be positive, got {limit}")
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` more bytes; False (nothing reserved) when they do not fit."""
        with self._lock:
            if self._used and self._used + n > self.limit:
                return False
            self._used += n
            prometheus.INFLIGHT_BYTES.set(self._used)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._used -= n
            prometheus.INFLIGHT_BYTES.set(self._used)

    def over_budget_reason(self, n: int) -> str:
        return (
            f"overloaded: {self._used} request bytes in flight, {n} more would pass the limit of "
            f"{self.limit} (--max_inflight_bytes); retry later"
        )


class _Rejected(Exception):
    """Raised from ``receive`` when a streamed body passes a bound (the middleware answers)."""


class AdmissionMiddleware:
    """ASGI middleware admitting REST requests before their bodies are read (see the module doc).

    Args:
      app: the ASGI app (KServe's FastAPI app).
      budget: the in-flight bytes budget, shared with gRPC.
      max_request_bytes: the largest body (413 above it).
      busy: for inference routes, a reason to refuse at once (503), or None; e.g. the image queue
        is full, so any request would be refused after its body was read and parsed.
    """

    def __init__(
        self,
        app: Any,
        budget: ByteBudget,
        max_request_bytes: int,
        busy: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.app = app
        self.budget = budget
        self.max_request_bytes = max_request_bytes
        self.busy = busy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_request_bytes:
            prometheus.REJECTED.labels("body_too_large").inc()
            await send_json(send, 413, f"request body is {declared} bytes, {self._limit()}")
            return
        if prometheus.rest_protocol(scope.get("path", "")) is not None:
            reason = self.busy()
            if reason is not None:
                prometheus.REJECTED.labels("queue_full").inc()
                await send_json(send, 503, reason, retry_after=True)
                return
        reserved = declared or 0
        if reserved and not self.budget.try_reserve(reserved):
            prometheus.REJECTED.labels("inflight_bytes").inc()
            await send_json(send, 503, self.budget.over_budget_reason(reserved), retry_after=True)
            return
        state: dict[str, Any] = {"received": 0, "reserved": reserved, "rejection": None, "started": False}
        try:
            await self._admitted(scope, receive, send, state)
        finally:
            self.budget.release(state["reserved"])

    async def _admitted(self, scope: dict, receive: Any, send: Any, state: dict[str, Any]) -> None:
        """Run the app, counting the body as it is read; answer 413/503 if it passes a bound."""

        async def counting_receive() -> dict:
            message = await receive()
            if message["type"] != "http.request" or state["rejection"] is not None:
                return message
            state["received"] += len(message.get("body", b""))
            received = state["received"]
            if received > self.max_request_bytes:
                error = f"request body is over {self.max_request_bytes} bytes, {self._limit()}"
                state["rejection"] = (413, error)
                prometheus.REJECTED.labels("body_too_large").inc()
                raise _Rejected()
            if received > state["reserved"]:  # chunked (or longer than declared: the server stops it)
                more = received - state["reserved"]
                if not self.budget.try_reserve(more):
                    state["rejection"] = (503, self.budget.over_budget_reason(more))
                    prometheus.REJECTED.labels("inflight_bytes").inc()
                    raise _Rejected()
                state["reserved"] += more
            return message

        async def guarded_send(message: dict) -> None:
            if state["rejection"] is not None:
                return  # the app's own answer to the failed read (FastAPI: 400) is replaced by ours
            if message["type"] == "http.response.start":
                state["started"] = True
                message = _with_retry_after(message)
            await send(message)

        with contextlib.suppress(_Rejected):  # raised by counting_receive; answered below
            await self.app(scope, counting_receive, guarded_send)
        if state["rejection"] is not None and not state["started"]:
            status, error = state["rejection"]
            await send_json(send, status, error, retry_after=status == 503)

    def _limit(self) -> str:
        return f"the limit is {self.max_request_bytes} (--max_request_bytes)"


def _with_retry_after(start: dict) -> dict:
    """A 503 from further in (KServe's answer to ``Overloaded``, not ready) gets ``Retry-After`` too."""
    headers = list(start.get("headers", []))
    if start.get("status") != 503 or any(k.lower() == b"retry-after" for k, _ in headers):
        return start
    return {**start, "headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}


def _content_length(scope: dict) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def send_json(send: Any, status: int, error: str, retry_after: bool = False) -> None:
    """Send a whole ``{"error": ...}`` JSON response."""
    body = orjson.dumps({"error": error})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- gRPC
class _Admitted:
    """A deserialized request that holds ``n`` bytes of the budget until released (or collected)."""

    def __init__(self, request: Any, budget: ByteBudget, n: int) -> None:
        self.request = request
        self._finalizer = weakref.finalize(self, budget.release, n)

    def release(self) -> None:
        self._finalizer()


class _Refused:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class GrpcAdmissionInterceptor(aio.ServerInterceptor):
    """Counts each ``ModelInfer`` message against the :class:`ByteBudget` before it is parsed.

    The message's bytes are reserved in its deserializer (the gRPC core has received it, protobuf has
    not parsed it yet) and released when the call ends; over the budget the call ends with
    RESOURCE_EXHAUSTED and the message is never parsed.
    """

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method not in GRPC_COUNTED_METHODS
            or handler.unary_unary is None
        ):
            return handler
        parse = handler.request_deserializer or (lambda raw: raw)
        behavior = handler.unary_unary
        budget = self.budget

        def deserialize(raw: bytes) -> _Admitted | _Refused:
            n = len(raw)
            if not budget.try_reserve(n):
                prometheus.REJECTED.labels("inflight_bytes").inc()
                return _Refused(budget.over_budget_reason(n))
            admitted = _Admitted(None, budget, n)
            try:
                admitted.request = parse(raw)
            except BaseException:
                admitted.release()
                raise
            return admitted

        async def admitted_behavior(request: _Admitted | _Refused, context: aio.ServicerContext) -> Any:
            if isinstance(request, _Refused):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, request.reason)
            try:
                return await behavior(request.request, context)
            finally:
                request.release()

        return grpc.unary_unary_rpc_method_handler(
            admitted_behavior,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )


def admitting_grpc_server(budget: ByteBudget) -> type:
    """KServe's ``GRPCServer`` with :class:`GrpcAdmissionInterceptor` in front of its interceptors.

    ``GRPCServer.start`` builds its ``grpc.aio`` server with a fixed interceptor tuple
    (kserve/python/kserve/kserve/protocol/grpc/server.py, KServe 0.21); this is that method with ours
    added first (outermost), everything else unchanged.
    """
    from concurrent import futures

    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

    class AdmittingGRPCServer(GRPCServer):
        async def start(self, max_workers: int) -> None:
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(
                    GrpcAdmissionInterceptor(budget),
                    LoggingInterceptor(),
                    ExceptionToStatusInterceptor(),
                ),
                options=[
                    ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                    ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length")),
                ],
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            listen_addr = f"[::]:{self._port}"
            self._server.add_insecure_port(listen_addr)
            log.info("gRPC server on %s, %d workers, admission by request bytes", listen_addr, max_workers)
            await self._server.start()
            await self._server.wait_for_termination()

    return AdmittingGRPCServer
