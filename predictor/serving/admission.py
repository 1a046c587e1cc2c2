"""Admission before reading: request bodies are bounded one by one and all together, before they are read.

KServe reads a REST body whole (``await request.body()``) and JSON-parses it (V2: into pydantic
objects) before the model sees anything, and gRPC parses each message before the servicer runs. So
every check the model does comes after the memory is spent. This module checks first:

- :class:`ByteBudget`: the bytes of request bodies in flight (admitted and not answered yet),
  shared by REST and gRPC. A request is admitted when its bytes fit, or when nothing else is in
  flight (so one request up to ``--max_request_bytes`` is always served).
- :class:`~predictor.serving.middleware.AdmissionMiddleware` (ASGI, REST; it lives with the other HTTP
  middlewares): a declared ``Content-Length`` over ``--max_request_bytes`` gets 413 and one over the
  budget 503 with ``Retry-After`` at once, before a byte of the body is read; so does any inference
  request while the model's image queue is full (``busy``). A chunked body is counted as it streams:
  past either bound the request gets the same 413 / 503. The reservation is held until the answer has
  been sent (the parsed body lives that long). uvicorn reads and discards the rest of a refused body, so
  the client gets its answer on an open connection. Every 503 (also those answered further in: image
  queue full, not ready, time limit) carries ``Retry-After``.
- :class:`GrpcAdmissionInterceptor`: the gRPC core already refuses messages over
  ``--grpc_max_receive_message_length`` (RESOURCE_EXHAUSTED); this counts each ``ModelInfer``
  message against the same budget before protobuf parses it, RESOURCE_EXHAUSTED when over (KServe's
  gRPC server gets it through :func:`predictor.serving.kserve_workarounds.admitting_grpc_server`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from predictor.serving import prometheus

log = logging.getLogger(__name__)

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
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def activity(self) -> tuple[bool, int]:
        """``(anything in flight, reservations granted so far)``: the heap trimmer's view of the load."""
        with self._lock:
            return self._used > 0, self._admitted

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` more bytes; False (nothing reserved) when they do not fit."""
        with self._lock:
            if self._used and self._used + n > self.limit:
                return False
            self._used += n
            self._admitted += 1
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
